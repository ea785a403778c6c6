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
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
import pyarrow as pa

from esworkbench.aggregates import AggregateRoot
from esworkbench.errors import ConfigError, FoldError
from esworkbench.filters import EventFilter
from esworkbench.findings import FINDINGS_SCHEMA
from esworkbench.fold import _engine as core
from esworkbench.fold import _frames as frames
from esworkbench.fold._frames import Replay
from esworkbench.fold.batches import run_stream
from esworkbench.imports import import_object
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


def resolve_aggregate(aggregate: AggregateSpec) -> type[AggregateRoot]:
    """The aggregate class named by `aggregate` (a class, or an import path "module:Class").

    Example:
        >>> resolve_aggregate("esworkbench.examples.bank:User").stream_prefix
        'user'
    """
    cls = (
        import_object(aggregate, what="aggregate", example="package.module:Class")
        if isinstance(aggregate, str)
        else aggregate
    )
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
    out: str | Path | None = None,
) -> Replay:
    """Replay the lake's events through `aggregate`, one fresh instance per stream.

    The lake is read a batch of whole streams at a time (sorted by DuckDB within a memory
    limit), each batch is folded as it arrives, and with `out` its results go straight to
    Parquet files: memory then follows `batch_size`, not the lake.

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
        out: a directory to write the results into as they come (``timeline/part-*.parquet``
            and ``findings/part-*.parquet``, rows in stream order); the result then reads
            them lazily (``scan_timeline()``). Default: results held in memory.

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
    cut = frames.cut(as_of)
    options = _options(_scope(cls, streams=streams, stream_prefix=stream_prefix))
    sink = frames.PartsSink(Path(out), cls) if out is not None else frames.MemorySink(cls)
    work = functools.partial(core.fold_batch, cls=cls, on_error=on_error)
    with opened(lake) as lake_:
        batches = lake_.iter_streams(batch_size=batch_size, **options)
        tables = iter(batches) if cut is None else _cut_each(batches, cut)
        total = batches.rows if progress and cut is None else None
        with _progress(progress, total, cls) as bar:
            for events, result in run_stream(tables, work, workers=workers, advance=bar.update):
                sink.add(core.BatchResult(*result), events=events)
    return sink.replay()


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
        timeline, findings = frames.fold_frame(
            frame,
            cls,
            workers=workers,
            on_error=on_error,
            batch_size=batch_size,
            advance=bar.update,
        )
    return Replay(timeline=timeline, findings=findings, aggregate=cls, events_read=frame.height)


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


def _cut_each(tables: Iterable[pa.Table], cut: pl.Expr) -> Iterator[pa.Table]:
    """Each batch's rows as of the cut (a batch holds whole streams, as the cut needs)."""
    for table in tables:
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        kept = frame.filter(cut)
        if kept.height:
            yield kept.to_arrow()


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
    return frames.merge_rejected(events, lake.read_rejected(**filters))


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


def _progress(enabled: bool, total: int | None, cls: type[AggregateRoot]) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, desc=f"replay {cls.__qualname__}")
