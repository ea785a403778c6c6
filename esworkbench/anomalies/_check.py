"""Run rules over a lake and gather one findings frame; compare it with an earlier run."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from esworkbench.anomalies._generic import GENERIC_RULES
from esworkbench.anomalies._rules import (
    FOUND_COLUMNS,
    CheckContext,
    ReplayRule,
    Rule,
    RuleSpec,
    resolve_rules,
)
from esworkbench.errors import ConfigError
from esworkbench.findings import (
    FINDINGS_SCHEMA,
    SEVERITIES,
    SEVERITY_BY_KIND,
    Severity,
    severity_of,
)
from esworkbench.fold import AggregateSpec, Replay, resolve_aggregate
from esworkbench.lake import opened

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from esworkbench.filters import FilterOptions
    from esworkbench.lake import Lake

__all__ = ["Findings", "check"]

_KEY = ("rule", "kind", "event_id")


@dataclasses.dataclass(frozen=True)
class Findings:
    """The findings of a check: one row per rule broken at an event (FINDINGS_SCHEMA).

    Attributes:
        frame: the findings, ordered by commit position, then rule.
        rules: the rules that ran, in order (for the report's explanations).
        events_checked: events (kept or rejected) in the scope checked.
        seconds: wall time per rule.
        replay: the replay the rules shared, when one ran (its timeline has the state after
            every event, for drilling into a finding).
    """

    frame: pl.DataFrame
    rules: tuple[Rule, ...]
    events_checked: int
    seconds: dict[str, float]
    replay: Replay | None = None

    def counts(self) -> pl.DataFrame:
        """Findings per kind and severity (most first)."""
        return (
            self.frame.group_by("kind", "severity")
            .agg(pl.len().alias("findings"), pl.col("stream_name").n_unique().alias("streams"))
            .sort("findings", "kind", descending=[True, False])
        )

    def first_per_stream(self) -> pl.DataFrame:
        """For each rule and kind, the first event in each stream that breaks it."""
        return (
            self.frame.sort("commit_position")
            .group_by("rule", "kind", "stream_name", maintain_order=True)
            .first()
            .sort("commit_position", "rule")
        )

    def at_or_above(self, severity: Severity) -> pl.DataFrame:
        """The findings of this severity or worse."""
        if severity not in SEVERITIES:
            raise ConfigError(f"severity {severity!r}; valid: {list(SEVERITIES)}")
        worse = list(SEVERITIES[SEVERITIES.index(severity) :])
        return self.frame.filter(pl.col("severity").is_in(worse))

    def since(self, previous: pl.DataFrame | Findings | str | os.PathLike[str]) -> pl.DataFrame:
        """Each finding of this run or `previous` marked ``new``, ``persisting`` or ``gone``.

        `previous` is an earlier run's findings (a Findings, a frame, or its Parquet file).
        A finding is the same when rule, kind and event id are: a weekly report shows what
        appeared since last week, and what was fixed or no longer in scope.
        """
        before = _frame_of(previous)
        seen = before.select(_KEY).unique().with_columns(pl.lit(True).alias("_seen"))
        now = (
            self.frame.join(seen, on=list(_KEY), how="left")
            .with_columns(
                pl.when(pl.col("_seen"))
                .then(pl.lit("persisting"))
                .otherwise(pl.lit("new"))
                .alias("status")
            )
            .drop("_seen")
        )
        gone = before.join(self.frame.select(_KEY), on=list(_KEY), how="anti").with_columns(
            pl.lit("gone").alias("status")
        )
        return pl.concat([now, gone.select(now.columns).cast(now.schema)], how="vertical").sort(
            "commit_position", "rule"
        )

    def write_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write the findings as Parquet (what `since` reads back); returns the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.frame.write_parquet(out)
        return out


def check(
    lake: Lake | str | os.PathLike[str],
    rules: RuleSpec | None = None,
    *,
    aggregate: AggregateSpec | None = None,
    **filters: Unpack[FilterOptions],
) -> Findings:
    """Run rules over the lake's events in scope: one findings frame in the shared vocabulary.

    Args:
        lake: an open Lake, or its path (opened read-only for the call).
        rules: rules, rule classes, lists of them, or import paths (``pkg.mod:Name``); default:
            the generic rules (`GENERIC_RULES`), plus replay when `aggregate` is given.
        aggregate: the production aggregate (or its import path) for replay findings, state
            rules and the registry of known event types.
        **filters: the scope, as for `Lake.read_events`; findings outside it are dropped.

    Returns:
        The findings. The same kind at the same event found by two rules is one finding (the
        first rule's): replay and the generic rules both see undecodable events.

    Example:
        >>> found = check("data/lake/demo.duckdb", "esworkbench.examples.bank.rules:RULES",
        ...               aggregate="esworkbench.examples.bank:User")  # doctest: +SKIP
        >>> found.counts()  # doctest: +SKIP
    """
    cls = None if aggregate is None else resolve_aggregate(aggregate)
    if rules is None:
        chosen = [*GENERIC_RULES, *([ReplayRule(cls)] if cls is not None else [])]
    else:
        chosen = resolve_rules(rules)
    replays = [r for r in chosen if isinstance(r, ReplayRule)]
    if cls is None and replays:
        # The rules name the aggregate: replay it, and use its registry and state.
        cls = resolve_aggregate(replays[0].aggregate)
    names = [r.name for r in chosen]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"rules need distinct, non-empty names; got {names}")
    with opened(lake) as lake_:
        ctx = CheckContext(lake_, filters, cls)
        envelope = ctx.envelope
        found: list[pl.DataFrame] = []
        seconds: dict[str, float] = {}
        for rule in chosen:
            t0 = time.perf_counter()
            found.append(_tidy(rule, rule.find(ctx)))
            seconds[rule.name] = time.perf_counter() - t0
    frame = (
        pl.concat(found, how="vertical")
        .join(envelope, on="event_id", how="inner")  # the scope
        .unique(["kind", "event_id"], keep="first", maintain_order=True)
        .select(FINDINGS_SCHEMA.names)
        .sort("commit_position", maintain_order=True)
    )
    frame = frame.cast(dict(zip(frame.columns, _polars_types(), strict=True)))
    # The replay is computed only when a rule asked for it (a cached property of the context).
    shared = ctx.__dict__.get("replay")
    return Findings(frame, tuple(chosen), envelope.height, seconds, shared)


def _tidy(rule: Rule, found: pl.DataFrame) -> pl.DataFrame:
    """A rule's found rows with every findings column but the envelope, defaults filled."""
    if "event_id" not in found.columns:
        raise ConfigError(f"rule {rule.name!r} returned no event_id column: {found.columns}")
    kind = pl.col("kind") if "kind" in found.columns else pl.lit(rule.kind)
    present = {c: pl.col(c).cast(pl.String) for c in FOUND_COLUMNS if c in found.columns}
    out = found.select(
        pl.col("event_id").cast(pl.String),
        kind.cast(pl.String).alias("kind"),
        present.get("message", pl.lit(rule.description)).alias("message"),
        present.get("evidence", pl.lit(None, pl.String)).alias("evidence"),
        present.get("error", pl.lit(None, pl.String)).alias("error"),
    )
    severity = (
        pl.lit(rule.severity)
        if rule.severity is not None
        else pl.col("kind").replace_strict(
            dict(SEVERITY_BY_KIND), default=severity_of(""), return_dtype=pl.String
        )
    )
    return out.with_columns(pl.lit(rule.name).alias("rule"), severity.alias("severity"))


def _polars_types() -> list[pl.DataType]:
    empty = pl.from_arrow(FINDINGS_SCHEMA.empty_table())
    assert isinstance(empty, pl.DataFrame)
    return list(empty.schema.values())


def _frame_of(previous: pl.DataFrame | Findings | str | os.PathLike[str]) -> pl.DataFrame:
    if isinstance(previous, Findings):
        return previous.frame
    if isinstance(previous, pl.DataFrame):
        return previous
    path = Path(previous)
    if not path.exists():
        raise ConfigError(f"no earlier findings at {path}: pass the Parquet file a check wrote")
    return pl.read_parquet(path)
