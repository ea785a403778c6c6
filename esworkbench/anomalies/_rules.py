"""What a rule is: a name, a kind, a severity, an explanation, and a way to find events.

Three ways to find them, one per base class, all returning the same small frame (``event_id``,
and optionally ``kind``, ``message``, ``evidence`` as JSON text, ``error``):

- `SqlRule`: a query over the lake's tables and typed views (set-based, in DuckDB);
- `TimelineRule`: a Polars expression over the replay timeline (the aggregate's state after
  every event), for rules about state;
- `FunctionRule`: any function of the `CheckContext`, for what neither says well.

`ReplayRule` brings replay's own findings (business rules the aggregate enforces, undecodable
events, version gaps) into the same list. Users name their own rules by import path, as they
name aggregates: ``mypkg.rules:LargeCashWithdrawal`` (a class, an instance, or a list of them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl

from esworkbench.errors import ConfigError
from esworkbench.findings import FINDING_ENVELOPE, Severity
from esworkbench.fold import AggregateSpec, Replay, replay_frame, resolve_aggregate, with_rejected
from esworkbench.imports import import_object

if TYPE_CHECKING:
    from esworkbench.aggregates import AggregateRoot
    from esworkbench.filters import FilterOptions
    from esworkbench.lake import Lake

__all__ = [
    "ENVELOPE",
    "FOUND_COLUMNS",
    "CheckContext",
    "FunctionRule",
    "ReplayRule",
    "Rule",
    "RuleSpec",
    "SqlRule",
    "TimelineRule",
    "resolve_rules",
]

# Who a finding's event is: the columns the check takes from the event.
ENVELOPE = FINDING_ENVELOPE
# What a rule's find() returns: event_id is required, the rest optional.
FOUND_COLUMNS = ("event_id", "kind", "message", "evidence", "error")


@dataclasses.dataclass
class CheckContext:
    """What rules look at: the lake, the scope, and what is computed once and shared.

    Attributes:
        lake: the open lake.
        filters: the scope (`EventFilter` keywords) every rule's findings are held to.
        aggregate: the production aggregate, when the check replays (for state rules and the
            registry of known event types).
    """

    lake: Lake
    filters: FilterOptions
    aggregate: type[AggregateRoot] | None = None

    @cached_property
    def events(self) -> pl.DataFrame:
        """The events in scope, with the rejected ones (`rejected` = the lake's reason)."""
        return with_rejected(self.lake, self.lake.read_events(**self.filters), **self.filters)

    @cached_property
    def envelope(self) -> pl.DataFrame:
        """Who each event in scope is (kept or rejected): ENVELOPE columns, no payloads."""
        kept = self.lake.scan_events(**self.filters).select(ENVELOPE).collect()
        rejected = self.lake.read_rejected(**self.filters)
        if rejected.height:
            kept = pl.concat(
                [kept, rejected.select(ENVELOPE).cast(kept.schema)], how="vertical"
            ).unique("event_id", keep="first", maintain_order=True)
        return kept

    @cached_property
    def replay(self) -> Replay:
        """The replay of the aggregate's streams in scope (computed once, on first use)."""
        if self.aggregate is None:
            raise ConfigError(
                "this rule needs a replay: pass aggregate='package.module:Class' to check()"
            )
        cls = self.aggregate
        events = self.events.filter(
            (pl.col("stream_name") == cls.stream_prefix)
            | pl.col("stream_name").str.starts_with(f"{cls.stream_prefix}-")
        )
        return replay_frame(events, cls)


class Rule:
    """A rule: subclass one of SqlRule, TimelineRule, FunctionRule (or override `find`).

    Class attributes (or instance attributes, for rules with parameters):

    Attributes:
        name: the rule's stable name (findings' ``rule`` column).
        kind: the finding kind it reports (a row may name another in its ``kind`` column).
        severity: how serious; None takes the kind's default (`esworkbench.findings`).
        description: one or two plain sentences for the report: what it checks and why.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    severity: Severity | None = None
    description: ClassVar[str] = ""

    def find(self, ctx: CheckContext) -> pl.DataFrame:
        """The events that break the rule (see FOUND_COLUMNS)."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement find()")

    def parameters(self) -> dict[str, Any]:
        """The rule's parameters, for the report's explanation (dataclass fields by default)."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {}


class SqlRule(Rule):
    """A rule written as one query over the lake (tables `events`, `_rejected`, typed views).

    The query returns ``event_id`` and any of the optional columns of FOUND_COLUMNS. When it
    reads typed views, list their event types in `needs_types`: without such events in the
    lake there is nothing to check, and the rule finds nothing.
    """

    needs_types: ClassVar[tuple[str, ...]] = ()

    def sql(self) -> str:
        """The query."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement sql()")

    def find(self, ctx: CheckContext) -> pl.DataFrame:
        """Run the query in the lake."""
        if not set(self.needs_types) <= set(ctx.lake.typed_event_types()):
            return pl.DataFrame({"event_id": []}, schema={"event_id": pl.String})
        return ctx.lake.read_sql(self.sql())


class TimelineRule(Rule):
    """A rule about state: a Polars filter over the replay timeline.

    `where()` selects the rows (events) that break the rule; `message()` and `evidence()`
    (expressions) describe each. Needs check(..., aggregate=...).
    """

    def where(self) -> pl.Expr:
        """The rows of the timeline that break the rule."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement where()")

    def message(self) -> pl.Expr:
        """A message per row (default: the rule's description)."""
        return pl.lit(self.description)

    def evidence(self) -> Sequence[str]:
        """Timeline columns to record as evidence."""
        return ()

    def find(self, ctx: CheckContext) -> pl.DataFrame:
        """Filter the replay timeline."""
        timeline = ctx.replay.timeline
        columns = [c for c in self.evidence() if c in timeline.columns]
        evidence = (
            pl.struct([pl.col(c).cast(pl.String) for c in columns]).struct.json_encode()
            if columns
            else pl.lit(None, pl.String)
        )
        return timeline.filter(self.where()).select(
            "event_id", self.message().alias("message"), evidence.alias("evidence")
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class FunctionRule(Rule):
    """A rule given as a function of the context returning the found frame.

    Example:
        >>> rule = FunctionRule(
        ...     name="none", kind="nothing", fn=lambda ctx: pl.DataFrame({"event_id": []})
        ... )
        >>> rule.name, rule.kind
        ('none', 'nothing')
    """

    name: str  # type: ignore[misc]
    kind: str  # type: ignore[misc]
    fn: Callable[[CheckContext], pl.DataFrame]
    description: str = ""  # type: ignore[misc]
    severity: Severity | None = None

    def find(self, ctx: CheckContext) -> pl.DataFrame:
        """Call the function."""
        return self.fn(ctx)

    def parameters(self) -> dict[str, Any]:
        """No parameters beyond the function itself."""
        return {}


@dataclasses.dataclass(frozen=True)
class ReplayRule(Rule):
    """Replay's findings as a rule: what the production aggregate itself rejects.

    Each business-rule error keeps its own kind (``ledger_drift``, ``overdraft``, ...), as do
    undecodable events, unknown types and version gaps.
    """

    aggregate: AggregateSpec
    name: ClassVar[str] = "replay"
    kind: ClassVar[str] = "rule_violation"
    description: ClassVar[str] = (
        "Every event replayed through the production aggregate, unchanged: history that "
        "today's business rules reject, events that do not decode, and gaps in a stream."
    )

    def find(self, ctx: CheckContext) -> pl.DataFrame:
        """The replay's findings."""
        return ctx.replay.findings.select("event_id", "kind", "message", "evidence", "error")

    def parameters(self) -> dict[str, Any]:
        """The aggregate replayed."""
        cls = resolve_aggregate(self.aggregate)
        return {"aggregate": f"{cls.__module__}:{cls.__qualname__}"}


RuleSpec = Rule | type[Rule] | str | Iterable["RuleSpec"]


def resolve_rules(spec: RuleSpec) -> list[Rule]:
    """Rules from instances, classes, lists of them, or import paths ``pkg.mod:Name``.

    Example:
        >>> [r.name for r in resolve_rules("esworkbench.anomalies:GENERIC_RULES")][:2]
        ['revision_order', 'duplicate_payload']
    """
    if isinstance(spec, Rule):
        return [spec]
    if isinstance(spec, type) and issubclass(spec, Rule):
        return [spec()]
    if isinstance(spec, str):
        return resolve_rules(_import(spec))
    if isinstance(spec, Iterable):
        return [rule for item in spec for rule in resolve_rules(item)]
    raise ConfigError(
        f"{spec!r} is not a rule: give a Rule (or its class), a list of rules, or an import "
        "path 'package.module:Name'"
    )


def _import(path: str) -> Any:
    return import_object(path, what="rule", example="esworkbench.examples.bank.rules:RULES")
