"""Replay lake events through production aggregates: state timelines, states as of, findings.

Each stream is folded in revision order through a fresh instance of the aggregate class that
production uses, unchanged: payloads are decoded (and upcast) by the class's own ``registry``,
each event goes through ``load_from_history`` (so ``check_next`` guards the contract), and the
public ``state()`` is recorded after every event.

History that today's code rejects is a *finding*, never a crash: an ``AggregateError`` (a
business rule, a foreign event, a version gap) or an event the registry cannot decode (unknown
type, bad payload, or rejected by the lake at ingest) becomes a row of ``Replay.findings``,
pinned to the event. One event can carry several findings (an aggregate raises a
``DomainRuleErrors`` group when one event breaks several rules). ``on_error`` says what
happens next:

- ``"skip"`` (default): the replay goes on, and every event read has a timeline row. An event
  the aggregate refused leaves the aggregate in the state it put itself in: unchanged for one
  that checks before it mutates, the amounts applied for the bank (which applies first and
  objects after, so one bad event is one finding, not a cascade). An undecodable event changes
  nothing. After a version gap, the replay resumes at the event that is there. Balances after a
  finding follow the amounts.
- ``"stop"``: that stream's replay ends there, as production's own load would; its timeline
  holds the events before the finding (so its last state is not the stream's).

Timeline columns: ``stream_name`` (String), ``stream_revision`` (UInt64), ``commit_position``
(UInt64), ``created`` and ``occurred_at`` (Datetime[us, UTC]), ``event_type``, ``event_id``
(String), then one column per public state field (Decimal money as an exact
``Decimal(38, scale)``), then ``changed`` (List[String]: the state fields the event changed).
A state field named like an envelope column is prefixed ``state_``.

Findings columns: those of ``esworkbench.findings.FINDINGS_SCHEMA`` (``rule`` is ``replay``).
Kinds: each DomainRuleError's own ``kind`` (the bank's ``ledger_drift``, ``overdraft``,
``activity_after_close``, ...; ``rule_violation`` for a rule that names none), ``version_gap``,
``version_out_of_order``, ``foreign_event`` (HistoryError), ``aggregate_error`` (any other
AggregateError), ``unknown_event_type``, and ``decode_error`` (a payload that does not decode,
or an event the lake rejected at ingest, with the lake's reason).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
import pyarrow as pa

from esworkbench.aggregates import AggregateRoot
from esworkbench.errors import ConfigError, FoldError
from esworkbench.filters import EventFilter
from esworkbench.findings import FINDINGS_SCHEMA
from esworkbench.fold import _engine as core
from esworkbench.fold.batches import Job, plan_batches, run_batches
from esworkbench.lake import opened

if TYPE_CHECKING:
    from distributed import Client
    from typing_extensions import Unpack

    from esworkbench.filters import FilterOptions
    from esworkbench.lake import Lake

OnError = Literal["stop", "skip"]
Engine = Literal["local", "dask"]
AggregateSpec = type[AggregateRoot] | str

FINDINGS_COLUMNS = tuple(FINDINGS_SCHEMA.names)
_DEFAULT_BATCH = 50_000


class Replay:
    """The result of a replay: the state timeline and the findings.

    A replay on Dask leaves its results in Parquet files: ``timeline`` and ``findings`` are
    then read from them on first use, and ``scan_timeline()`` / ``scan_findings()`` query them
    lazily without loading them whole (for results larger than memory).

    Attributes:
        timeline: one row per event replayed (see on_error), ordered by commit_position.
        findings: one row per problem met, pinned to its event, same order.
        aggregate: the aggregate class the events went through.
        events_read: events read from the lake (applied, refused, or left after a stop).

    Example:
        >>> result = replay("data/lake/workbench.duckdb", "esworkbench.examples.bank:User")
        ... # doctest: +SKIP
        >>> result.states().select("stream_name", "balance")  # doctest: +SKIP
    """

    __slots__ = ("_findings", "_timeline", "aggregate", "events_read")

    def __init__(
        self,
        timeline: pl.DataFrame | pl.LazyFrame,
        findings: pl.DataFrame | pl.LazyFrame,
        aggregate: type[AggregateRoot],
        events_read: int,
    ) -> None:
        self._timeline = timeline
        self._findings = findings
        self.aggregate = aggregate
        self.events_read = events_read

    def __repr__(self) -> str:
        return f"Replay(aggregate={self.aggregate.__qualname__}, events_read={self.events_read:,})"

    @property
    def timeline(self) -> pl.DataFrame:
        """One row per event replayed, ordered by commit_position (see the module docstring)."""
        if isinstance(self._timeline, pl.LazyFrame):
            self._timeline = self._timeline.collect()
        return self._timeline

    @property
    def findings(self) -> pl.DataFrame:
        """One row per problem met, pinned to its event, ordered by commit_position."""
        if isinstance(self._findings, pl.LazyFrame):
            self._findings = self._findings.collect()
        return self._findings

    def scan_timeline(self) -> pl.LazyFrame:
        """The timeline as a LazyFrame (over the result files of a replay on Dask)."""
        return self._timeline.lazy()

    def scan_findings(self) -> pl.LazyFrame:
        """The findings as a LazyFrame (over the result files of a replay on Dask)."""
        return self._findings.lazy()

    def states(self) -> pl.DataFrame:
        """One row per stream: its state after its last applied event, and its finding count.

        A stream whose every event was refused still gets a row (null state), so nothing the
        replay read disappears from view.

        Example:
            >>> result.states()  # doctest: +SKIP
        """
        last = self.timeline.drop(core.CHANGED).group_by("stream_name", maintain_order=True).last()
        counts = self.findings.group_by("stream_name").agg(
            pl.len().cast(pl.UInt32).alias("findings")
        )
        return (
            last.join(counts, on="stream_name", how="full", coalesce=True)
            .with_columns(pl.col("findings").fill_null(0))
            .sort("stream_name")
        )


def resolve_aggregate(aggregate: AggregateSpec) -> type[AggregateRoot]:
    """The aggregate class named by `aggregate` (a class, or an import path "module:Class").

    Example:
        >>> resolve_aggregate("esworkbench.examples.bank:User").stream_prefix
        'user'
    """
    if isinstance(aggregate, str):
        module_name, sep, qualname = aggregate.partition(":")
        if not sep or not module_name or not qualname:
            raise ConfigError(
                f"aggregate {aggregate!r} is not an import path; write 'package.module:Class', "
                "e.g. 'esworkbench.examples.bank:User'"
            )
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(
                f"cannot import module {module_name!r} for aggregate "
                f"{aggregate!r}: {e}; is it installed or on sys.path?"
            ) from e
        for part in qualname.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise ConfigError(
                    f"module {module_name!r} has no {qualname!r} (for aggregate {aggregate!r})"
                ) from None
        cls = target
    else:
        cls = aggregate
    if not (isinstance(cls, type) and issubclass(cls, AggregateRoot)):
        raise ConfigError(
            f"{aggregate!r} is not an AggregateRoot subclass; replay needs a "
            "production aggregate class (esworkbench.aggregates.AggregateRoot)"
        )
    for attr in ("stream_prefix", "registry"):
        if not hasattr(cls, attr):
            raise ConfigError(
                f"aggregate {cls.__qualname__} has no class attribute {attr!r}; "
                "the aggregate contract needs stream_prefix and registry"
            )
    return cls


def replay(
    lake: Lake | str | Path,
    aggregate: AggregateSpec,
    *,
    streams: Iterable[str] | None = None,
    stream_prefix: str | None = None,
    as_of: int | datetime | None = None,
    workers: int = 1,
    on_error: OnError = "skip",
    progress: bool = False,
    batch_size: int = _DEFAULT_BATCH,
    engine: Engine = "local",
    scheduler: str | Client | None = None,
    partitions: int = 16,
    workdir: str | Path | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Replay:
    """Replay the lake's events through `aggregate`, one fresh instance per stream.

    Args:
        lake: an open ``Lake`` or the path of a lake file (opened read-only).
        aggregate: the aggregate class, or its import path ``"package.module:Class"``.
        streams: only these streams (default: the aggregate's category, its stream_prefix).
        stream_prefix: only streams whose name starts with this.
        as_of: a commit position (int: events at or before it) or a business time (datetime,
            naive = UTC: each stream up to its last event with ``occurred_at`` at or before it;
            an earlier event stamped later is still folded, in stream order).
        workers: processes to fold in, streams partitioned between them (fork; Linux and
            macOS). On 1M bank events 2 workers gave 1.7x on two idle cores but lost to one
            when other work held the cores (bench/fold.py), hence the default of 1.
            ``engine="local"`` only: on Dask the cluster's workers fold.
        on_error: after a finding, "skip" the event and go on (default), or "stop" that
            stream there.
        progress: show a tqdm progress bar (terminal or notebook).
        batch_size: events per batch of whole streams; bounds the Python objects alive.
        engine: "local" (this machine) or "dask": the lake is exported as `partitions` hash
            partitions of whole streams into `workdir`, one Dask task folds each with the same
            engine and writes its results as Parquet, and the result reads those files lazily
            (needs ``pip install 'esworkbench[dask]'``).
        scheduler: with engine="dask": a scheduler address ("tcp://host:8786"), a
            ``distributed.Client``, or None for a LocalCluster on this machine for the call.
        partitions: with engine="dask": the number of hash partitions (tasks).
        workdir: with engine="dask": a directory or fsspec URL that the workers can reach
            (default: ``<lake file>.dask/`` beside the lake); partitions go in
            ``partitions/``, results in ``replays/<run>/``.
        storage_options: with engine="dask": fsspec options for `workdir` (credentials).

    Returns:
        The timeline and the findings (see the module docstring for their columns).

    Example:
        >>> result = replay("data/lake/workbench.duckdb", "esworkbench.examples.bank:User",
        ...                 on_error="skip")  # doctest: +SKIP
        >>> result.timeline.filter(pl.col("stream_name") == "user-1")  # doctest: +SKIP
    """
    cls = resolve_aggregate(aggregate)
    _check_options(workers=workers, on_error=on_error, batch_size=batch_size)
    if engine == "dask":
        if workers != 1:
            raise ConfigError(
                f"workers={workers} is for engine='local'; on Dask the cluster's workers fold "
                "(start the cluster with the workers you want)"
            )
        from esworkbench.fold import _dask

        return _dask.replay_on_dask(
            lake,
            cls,
            scope=_scope(cls, streams=streams, stream_prefix=stream_prefix),
            as_of=as_of,
            on_error=on_error,
            progress=progress,
            batch_size=batch_size,
            scheduler=scheduler,
            partitions=partitions,
            workdir=workdir,
            storage_options=storage_options,
        )
    if engine != "local":
        raise ConfigError(f"engine={engine!r}; valid: ['dask', 'local']")
    cut = _cut(as_of)
    with opened(lake) as lake_:
        read = _read(lake_, _scope(cls, streams=streams, stream_prefix=stream_prefix))
    events = read if cut is None else read.filter(cut)
    return replay_frame(
        events, cls, workers=workers, on_error=on_error, progress=progress, batch_size=batch_size
    )


def replay_frame(
    events: pl.DataFrame | pa.Table,
    aggregate: AggregateSpec,
    *,
    workers: int = 1,
    on_error: OnError = "skip",
    progress: bool = False,
    batch_size: int = _DEFAULT_BATCH,
) -> Replay:
    """Replay events already in a frame (the lake's envelope columns) through `aggregate`.

    ``replay`` reads the lake and calls this; call it directly for events you selected
    yourself (``lake.read_events(...)``). Streams are replayed whole from what the frame holds:
    a stream missing its first events reports a version gap.

    Example:
        >>> events = lake.read_events(streams=["user-1"])  # doctest: +SKIP
        >>> replay_frame(events, "esworkbench.examples.bank:User").timeline  # doctest: +SKIP
    """
    cls = resolve_aggregate(aggregate)
    _check_options(workers=workers, on_error=on_error, batch_size=batch_size)
    frame = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
    if not isinstance(frame, pl.DataFrame):
        raise FoldError("events must be a table, not a single column")
    with _progress(progress, frame.height, cls) as bar:
        timeline, findings = fold_frame(
            frame,
            cls,
            workers=workers,
            on_error=on_error,
            batch_size=batch_size,
            advance=bar.update,
        )
    return Replay(timeline=timeline, findings=findings, aggregate=cls, events_read=frame.height)


def fold_frame(
    frame: pl.DataFrame,
    cls: type[AggregateRoot],
    *,
    workers: int,
    on_error: OnError,
    batch_size: int,
    advance: Callable[[int], None],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The timeline and findings of the events in `frame`: the fold every engine runs.

    A Dask task calls this on its partition, so a distributed replay folds each stream exactly
    as this process would. `advance` gets each finished batch's event count.
    """
    missing = [c for c in core.INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise FoldError(
            f"events frame lacks column(s) {missing}; pass the lake's envelope "
            "columns (lake.read_events() returns them)"
        )
    columns = [*core.INPUT_COLUMNS, *([core.REJECTED] if core.REJECTED in frame else [])]
    frame = frame.select(columns).with_columns(
        pl.col("stream_revision", "commit_position").cast(pl.UInt64)
    )
    keys = ("stream_name", "stream_revision", "commit_position")
    sizes = frame.group_by("stream_name").len().sort("stream_name")["len"].to_list()
    job = Job(
        table=frame.to_arrow(),
        order=frame.select(pl.arg_sort_by(keys)).to_series().to_arrow(),
        batches=plan_batches(sizes, batch_size),
        work=functools.partial(core.fold_batch, cls=cls, on_error=on_error),
    )
    results = [
        core.BatchResult(*tables) for tables in run_batches(job, workers=workers, advance=advance)
    ]
    return _timeline(results, cls), _findings(results)


def state_as_of(
    lake: Lake | str | Path,
    aggregate: AggregateSpec,
    *,
    at_position: int | None = None,
    at_time: datetime | None = None,
    streams: Iterable[str] | None = None,
    stream_prefix: str | None = None,
    workers: int = 1,
    on_error: OnError = "skip",
    progress: bool = False,
) -> pl.DataFrame:
    """Each stream's state after its last event at or before a position or a business time.

    Give exactly one of `at_position` (commit_position <= P) or `at_time` (occurred_at <= T,
    naive = UTC). The columns are the timeline's without ``changed``, plus ``findings`` (UInt32:
    findings in that stream up to the cut; non-zero means the state may be partial). One row
    per stream that has an event by then, ordered by stream_name.

    Example:
        >>> state_as_of(lake, "esworkbench.examples.bank:User",
        ...             at_time=datetime(2024, 3, 1, tzinfo=UTC))  # doctest: +SKIP
    """
    cut: int | datetime
    if at_position is not None and at_time is None:
        cut = at_position
    elif at_time is not None and at_position is None:
        cut = at_time
    else:
        raise ConfigError(
            "state_as_of needs exactly one of at_position= (a commit position) "
            "or at_time= (a datetime)"
        )
    result = replay(
        lake,
        aggregate,
        streams=streams,
        stream_prefix=stream_prefix,
        as_of=cut,
        workers=workers,
        on_error=on_error,
        progress=progress,
    )
    return result.states()


# --- reading -------------------------------------------------------------------------------


def _scope(
    cls: type[AggregateRoot], *, streams: Iterable[str] | None, stream_prefix: str | None
) -> EventFilter:
    """The events a replay reads: the given streams or prefix, else the aggregate's category."""
    if streams is None and stream_prefix is None:
        return EventFilter.of(category=cls.stream_prefix)
    return EventFilter.of(
        streams=None if streams is None else list(streams), stream_prefix=stream_prefix
    )


def _read(lake: Lake, scope: EventFilter) -> pl.DataFrame:
    """The events in scope, plus the rejected ones (``rejected`` = the lake's reason)."""
    options = _options(scope)
    events = lake.scan_events(**options).select(core.INPUT_COLUMNS).collect()
    return with_rejected(lake, events, **options)


def _options(scope: EventFilter) -> FilterOptions:
    options: FilterOptions = {}
    if scope.category is not None:
        options["category"] = scope.category
    if scope.streams is not None:
        options["streams"] = list(scope.streams)
    if scope.stream_prefix is not None:
        options["stream_prefix"] = scope.stream_prefix
    return options


def with_rejected(
    lake: Lake, events: pl.DataFrame, **filters: Unpack[FilterOptions]
) -> pl.DataFrame:
    """`events` (read with `filters`) plus the events the lake rejected in the same scope.

    Events the lake rejected at ingest (not JSON, binary) still happened in their stream: they
    come along as rows (column ``rejected`` = the lake's reason) that replay reports as
    ``decode_error``, instead of leaving a silent gap that would read as a version gap.

    Example:
        >>> events = lake.read_events(category="user")                    # doctest: +SKIP
        >>> both = with_rejected(lake, events, category="user")          # doctest: +SKIP
    """
    # The lake's own filtering picks the rejected events in scope, as it picks the events.
    return merge_rejected(events, lake.read_rejected(**filters))


def merge_rejected(events: pl.DataFrame, rejected: pl.DataFrame) -> pl.DataFrame:
    """`events` plus `rejected` (``Lake.read_rejected`` rows, in its order) as fold input rows.

    The rows get ``rejected`` = the lake's reason and no payload; a rejected copy of a
    revision `events` holds is dropped, and of several rejected copies the first is kept.
    """
    if rejected.height == 0:
        return events
    rejected = (
        rejected.select(
            [
                pl.col(c).cast(events.schema[c])
                for c in ("commit_position", "stream_name", "stream_revision", "event_id")
            ]
            + [
                pl.col("event_type").cast(pl.String),
                pl.col("created").cast(events.schema["created"]),
                # Business time from the metadata where it still reads (see read_rejected).
                pl.col("occurred_at").cast(events.schema["occurred_at"]),
                pl.lit(None, pl.String).alias("data"),
                pl.lit(None, pl.String).alias("metadata"),
                pl.col("reason").cast(pl.String).alias(core.REJECTED),
            ]
        )
        # A rejected copy of a revision the lake does hold (a duplicate id) is not history.
        .join(
            events.select("stream_name", "stream_revision"),
            on=["stream_name", "stream_revision"],
            how="anti",
        )
        .unique(["stream_name", "stream_revision"], keep="first", maintain_order=True)
    )
    if rejected.height == 0:
        return events
    events = events.with_columns(pl.lit(None, pl.String).alias(core.REJECTED))
    rejected = rejected.select(
        [pl.col(c) if c in rejected.columns else pl.lit(None).alias(c) for c in events.columns]
    )
    return pl.concat([events, rejected.cast(events.schema)], how="vertical")


def _cut(as_of: int | datetime | None) -> pl.Expr | None:
    """The rows of a replay as of a commit position or a business time (None: all)."""
    if as_of is None:
        return None
    if isinstance(as_of, datetime):
        moment = as_of.replace(tzinfo=UTC) if as_of.tzinfo is None else as_of.astimezone(UTC)
        # Cut each stream after its last event that had happened by then, not at its first
        # event stamped later: the state "after event k" includes every event before k.
        last = pl.col("stream_revision").filter(pl.col("occurred_at") <= moment).max()
        return pl.col("stream_revision") <= last.over("stream_name")
    if isinstance(as_of, bool) or not isinstance(as_of, int):
        raise ConfigError(f"as_of={as_of!r}: give a commit position (int) or a datetime")
    return pl.col("commit_position") <= as_of


def _check_options(*, workers: int, on_error: str, batch_size: int) -> None:
    if on_error not in ("stop", "skip"):
        raise ConfigError(f"on_error={on_error!r}; valid: ['skip', 'stop']")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}; give a positive integer (1 = this process)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}; give a positive integer")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(enabled: bool, total: int, cls: type[AggregateRoot]) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, desc=f"replay {cls.__qualname__}")


# --- assembling ----------------------------------------------------------------------------


def _timeline(results: list[core.BatchResult], cls: type[AggregateRoot]) -> pl.DataFrame:
    # A batch without rows has no state columns to offer; a fresh aggregate names them.
    tables = [r.timeline for r in results if r.timeline.num_rows]
    if not tables:
        tables = [_empty_timeline(cls)]
    frame = pl.from_arrow(core.unify(tables))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("commit_position", maintain_order=True)


def _empty_timeline(cls: type[AggregateRoot]) -> pa.Table:
    envelope = pa.schema(
        [
            ("stream_name", pa.string()),
            ("stream_revision", pa.uint64()),
            ("commit_position", pa.uint64()),
            ("created", pa.timestamp("us", tz="UTC")),
            ("occurred_at", pa.timestamp("us", tz="UTC")),
            ("event_type", pa.string()),
            ("event_id", pa.string()),
        ]
    )
    try:
        fields = list(cls(cls.aggregate_id_of(f"{cls.stream_prefix}-")).state())
    except Exception:
        # A fresh aggregate is only a hint for the column names of an empty result.
        fields = []
    for name in fields:
        envelope = envelope.append(pa.field(core.state_column_name(name), pa.null()))
    return envelope.append(pa.field(core.CHANGED, pa.list_(pa.string()))).empty_table()


def _findings(results: list[core.BatchResult]) -> pl.DataFrame:
    table = pa.concat_tables([r.findings for r in results] or [FINDINGS_SCHEMA.empty_table()])
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("commit_position", maintain_order=True)
