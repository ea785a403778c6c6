"""Rebuild a read model from the lake: in chunks, resumable, parallel by stream, timed.

A rebuild pins a window of commit positions ([first, last]; default: the whole lake as it is
now) and builds the projection's rows into schema ``rm_<name>_v<version>`` of the lake.

Python projections read the window in chunks of ``chunk_size`` events in commit-position order.
Each chunk is applied to the rows in memory (for ``partition="stream"`` projections and
``workers > 1``, as batches of whole streams in forked workers, through
``esworkbench.fold.batches``), then the rows it touched and the chunk's last position are
committed in one transaction. An interrupted rebuild (Ctrl-C, kill, a crash) resumes after its
last committed position with the rows committed with it, so interrupted-and-resumed equals one
clean rebuild. SQL projections run as one statement, atomically.

``estimate_rebuild`` predicts the time of a rebuild from a sampled prefix of the window: it
rebuilds the prefix into a scratch schema, then scales the time per event type by the
window's mix of event types (the start of a ledger is not its middle: more accounts opened,
older payload shapes to upcast), and the rest (reading, writing) by the event count.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from esworkbench.errors import ConfigError, LakeError
from esworkbench.findings import FINDINGS_SCHEMA
from esworkbench.fold.batches import Job, plan_batches, run_batches
from esworkbench.lake import Lake, ReadModelStore
from esworkbench.projections import _engine as engine
from esworkbench.projections._definition import (
    Projection,
    ProjectionLike,
    ProjectionSpec,
    Row,
    resolve_projection,
)
from esworkbench.projections._result import Estimate, RebuildResult, findings_frame, per_type

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["DEFAULT_CHUNK_SIZE", "Estimate", "RebuildResult", "estimate_rebuild", "rebuild"]

DEFAULT_CHUNK_SIZE = 100_000
_SAMPLE_EVENTS = 50_000
_SAMPLE_FRACTION = 0.05


def rebuild(
    lake: Lake | str | Path,
    projection: ProjectionLike,
    *,
    first_position: int | None = None,
    last_position: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int = 1,
    resume: bool = True,
    estimate: bool = False,
    progress: bool = False,
    engine: Literal["local", "dask"] = "local",
    scheduler: str | Client | None = None,
    partitions: int = 16,
    workdir: str | Path | None = None,
    storage_options: dict[str, Any] | None = None,
) -> RebuildResult:
    """Rebuild a projection's read model from the lake into ``rm_<name>_v<version>``.

    Args:
        lake: an open, writable ``Lake`` or the path of a lake file.
        projection: the projection class or its import path ``"package.module:Class"``.
        first_position: the window's first commit position (default: the lake's first).
        last_position: the window's last commit position (default: the lake's head now).
        chunk_size: events per transaction (Python projections).
        workers: processes applying whole streams in parallel (``partition="stream"``
            projections; fork; pays only for heavy handlers on idle cores, as for the fold).
        resume: carry on after the checkpoint of an interrupted rebuild of the same window
            (False: start again).
        estimate: estimate the time first from a sampled prefix (shown on the progress bar,
            kept in the result).
        progress: show a tqdm progress bar with an ETA (terminal or notebook).
        engine: "local" (this machine) or "dask": for Python projections keyed by stream, one
            Dask task per hash partition of whole streams builds its keys' rows, and the rows
            and checkpoint are committed together (from scratch; `resume` does not apply).
            Needs ``pip install 'esworkbench[dask]'``; see ``replay`` for the rest.
        scheduler: with engine="dask": a scheduler address, a ``distributed.Client``, or None
            for a LocalCluster on this machine for the call.
        partitions: with engine="dask": the number of hash partitions (tasks).
        workdir: with engine="dask": a directory or fsspec URL the workers reach (default:
            ``<lake file>.dask/`` beside the lake).
        storage_options: with engine="dask": fsspec options for `workdir` (credentials).

    Returns:
        Timings, rows and findings (see `RebuildResult`).

    Example:
        >>> result = rebuild("data/lake/demo.duckdb",
        ...                  "esworkbench.examples.bank.projections:AccountSummaryV1",
        ...                  progress=True)  # doctest: +SKIP
        >>> print(result)  # doctest: +SKIP
    """
    spec = resolve_projection(projection)
    _check(chunk_size=chunk_size, workers=workers)
    if engine not in ("local", "dask"):
        raise ConfigError(f"engine={engine!r}; valid: ['dask', 'local']")
    if engine == "dask" and workers != 1:
        raise ConfigError(
            f"workers={workers} is for engine='local'; on Dask the cluster's workers rebuild"
        )
    with _writable(lake) as lake_:
        first, last = pin_window(lake_, first_position, last_position)
        guess = (
            estimate_rebuild(lake_, spec, first_position=first, last_position=last)
            if estimate
            else None
        )
        if engine == "dask":
            from esworkbench.projections import _dask

            return _dask.rebuild_on_dask(
                lake_,
                spec,
                first,
                last,
                scheduler=scheduler,
                partitions=partitions,
                workdir=workdir,
                storage_options=storage_options,
                progress=progress,
                guess=guess,
            )
        if spec.kind == "sql":
            return _rebuild_sql(lake_, spec, first, last, guess)
        return _rebuild_python(
            lake_,
            spec,
            first,
            last,
            chunk_size=chunk_size,
            workers=workers,
            resume=resume,
            progress=progress,
            guess=guess,
        )


def pin_window(lake: Lake, first: int | None, last: int | None) -> tuple[int, int]:
    """The window [first, last] with defaults filled in from the lake (its first and head).

    Example:
        >>> pin_window(lake, None, None)  # doctest: +SKIP
        (0, 1234567)
    """
    head = lake.head_position()
    if head is None:
        raise LakeError(f"the lake {lake.path} has no events; sync some first")
    if first is None:
        found = lake.scan_events().select("commit_position").head(1).collect()
        first = int(found.item()) if found.height else 0
    last = head if last is None else last
    for name, value in (("first_position", first), ("last_position", last)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be a commit position (an integer >= 0), got {value!r}")
    if first > last:
        raise ConfigError(f"first_position ({first}) is after last_position ({last})")
    return first, last


def type_counts(lake: Lake, event_types: tuple[str, ...], first: int, last: int) -> dict[str, int]:
    """Events per type in the window, for the given types."""
    counts = (
        lake.scan_events(event_types=list(event_types), from_position=first, to_position=last)
        .group_by("event_type")
        .len()
        .collect()
    )
    return {str(t): int(n) for t, n in counts.iter_rows()}


def estimate_rebuild(
    lake: Lake | str | Path,
    projection: ProjectionLike,
    *,
    first_position: int | None = None,
    last_position: int | None = None,
    sample: int | None = None,
) -> Estimate:
    """Predict how long a rebuild of the window takes, from a rebuild of a prefix of it.

    The prefix (``sample`` events; default 5% of the window, at most 50,000) is rebuilt into
    a scratch schema, timed, and dropped. Python projections: the time per event type is scaled
    by the window's count of that type, and the rest (reading, writing) along a line through
    the prefix and half of it (a fixed cost and a cost per event). SQL projections: a prefix of
    at least a fifth of the window, scaled by events.

    Example:
        >>> print(estimate_rebuild("data/lake/demo.duckdb",
        ...       "esworkbench.examples.bank.projections:AccountSummaryV1"))  # doctest: +SKIP
    """
    spec = resolve_projection(projection)
    with _writable(lake) as lake_:
        first, last = pin_window(lake_, first_position, last_position)
        counts = type_counts(lake_, spec.event_types(), first, last)
        total = sum(counts.values())
        n = sample if sample is not None else min(_SAMPLE_EVENTS, int(total * _SAMPLE_FRACTION))
        n = max(1, min(n, total))
        if total == 0:
            return Estimate(0.0, 0, 0, 0.0)
        scratch = dataclasses.replace(spec, cls=_scratch(spec))
        try:
            if spec.kind == "sql":
                # A query is cheap: a larger prefix (a fifth) keeps its fixed cost from
                # dominating the line.
                return _estimate_sql(lake_, scratch, first, total, max(n, total // 5))
            return _estimate_python(lake_, scratch, first, last, counts, n)
        finally:
            lake_.read_model(scratch.name, scratch.version).drop()


def _estimate_python(
    lake: Lake, scratch: ProjectionSpec, first: int, last: int, counts: dict[str, int], n: int
) -> Estimate:
    """Handler time per type x the window's mix, plus a line (fixed + per event) for the rest.

    The rest (reading, building rows, committing) is measured on the prefix and on half of it,
    so the fixed cost of a run is not scaled up with the events.
    """
    runs = []
    for size in (max(1, n // 2), n):
        end = _nth_position(lake, scratch, first, last, size)
        runs.append(
            _rebuild_python(
                lake,
                scratch,
                first,
                end,
                chunk_size=DEFAULT_CHUNK_SIZE,
                workers=1,
                resume=False,
                progress=False,
                guess=None,
            )
        )
    run = runs[-1]
    per_type = {t: (e, s) for t, e, s, _ in run.per_type.iter_rows()}
    handled = sum(s for _, s in per_type.values())
    mean = handled / max(1, sum(e for e, _ in per_type.values()))
    predicted = sum(
        count * (per_type[t][1] / per_type[t][0] if t in per_type else mean)
        for t, count in counts.items()
    )
    rests = [(r.events, r.seconds - float(r.per_type["seconds"].sum())) for r in runs]
    predicted += _line(rests, sum(counts.values()))
    return Estimate(predicted, sum(counts.values()), run.events, run.seconds)


def _line(points: list[tuple[int, float]], at: int) -> float:
    """The line through two (events, seconds) points, at `at` events.

    Noise in small samples can make the second point cheaper than the first: the cost then
    counts as fixed.
    """
    (n1, t1), (n2, t2) = points
    if n2 <= n1 or t2 <= t1:
        return max(t1, t2)
    slope = (t2 - t1) / (n2 - n1)
    return max(0.0, t2 - slope * n2) + slope * at


# --- Python projections ----------------------------------------------------------------------


def _rebuild_python(
    lake: Lake,
    spec: ProjectionSpec,
    first: int,
    last: int,
    *,
    chunk_size: int,
    workers: int,
    resume: bool,
    progress: bool,
    guess: Estimate | None,
) -> RebuildResult:
    started = time.perf_counter()
    projection = spec.python()
    store = lake.read_model(spec.name, spec.version)
    state, resumed_from = _start(store, spec, first, last, resume=resume)
    start = first if resumed_from is None else resumed_from + 1
    types = spec.event_types()
    todo = sum(type_counts(lake, types, start, last).values()) if start <= last else 0
    timings: dict[str, list[float]] = {}
    findings: list[pa.Table] = []
    events = rows_written = chunks = 0
    parallel = workers > 1 and spec.partition == "stream"
    with _progress(progress, todo, spec, guess) as bar:
        batches = (
            lake.iter_batches(
                batch_size=chunk_size,
                event_types=list(types),
                from_position=start,
                to_position=last,
            )
            if start <= last
            else iter(())
        )
        for batch in batches:
            table = pa.Table.from_batches([batch]).select(list(engine.INPUT_COLUMNS))
            if parallel:
                changed, chunk_timings, chunk_findings = _apply_parallel(
                    projection, table, state, workers
                )
            else:
                applied = engine.apply_events(projection, table, state)
                changed = engine.rows_table(projection, state, applied.touched)
                chunk_timings = applied.timings
                chunk_findings = pa.Table.from_pylist(applied.findings, schema=FINDINGS_SCHEMA)
            position = int(table.column("commit_position")[-1].as_py())
            store.commit(changed, position=position, events=table.num_rows)
            events += table.num_rows
            rows_written += changed.num_rows
            chunks += 1
            for event_type, (n, seconds) in chunk_timings.items():
                slot = timings.setdefault(event_type, [0, 0.0])
                slot[0] += n
                slot[1] += seconds
            findings.append(chunk_findings)
            bar.update(table.num_rows)
        # The window's end, past the last event of the projection's types: complete.
        checkpoint = store.checkpoint()
        if checkpoint is not None and not checkpoint.complete:
            store.commit(pa.table({}), position=last, events=0)
            chunks += 1
    return RebuildResult(
        projection=spec.path,
        schema=spec.schema_name,
        kind="python",
        first_position=first,
        last_position=last,
        events=events,
        rows=len(state),
        rows_written=rows_written,
        seconds=time.perf_counter() - started,
        per_type=per_type(timings),
        findings=findings_frame(findings),
        resumed_from=resumed_from,
        chunks=chunks,
        workers=workers if parallel else 1,
        estimate=guess,
    )


def _start(
    store: ReadModelStore, spec: ProjectionSpec, first: int, last: int, *, resume: bool
) -> tuple[dict[str, Row], int | None]:
    """The rows to start from and the position to resume after (None: from scratch)."""
    checkpoint = store.checkpoint()
    same_window = checkpoint is not None and (
        checkpoint.first_position,
        checkpoint.last_position,
    ) == (first, last)
    if not resume or checkpoint is None or not same_window or checkpoint.position is None:
        cls = spec.cls
        assert issubclass(cls, Projection)
        store.create(cls.columns, key=cls.key, first=first, last=last)
        return {}, None
    rows = store.read().to_arrow().to_pylist()
    return {row[spec.key]: row for row in rows}, checkpoint.position


def _apply_parallel(
    projection: Projection, table: pa.Table, state: dict[str, Row], workers: int
) -> tuple[pa.Table, dict[str, list[float]], pa.Table]:
    order, sizes = engine.stream_order(table)
    job = Job(
        table=table,
        order=order,
        batches=plan_batches(sizes, max(1, table.num_rows // (workers * 4))),
        work=functools.partial(engine.work, projection=projection, state=state, watch=None),
    )
    results = run_batches(job, workers=workers, advance=lambda n: None)
    changed = pa.concat_tables([r[0] for r in results])
    for row in changed.to_pylist():
        state[row[projection.key]] = row
    timings: dict[str, list[float]] = {}
    for event_type, n, seconds in _timing_rows(results):
        slot = timings.setdefault(event_type, [0, 0.0])
        slot[0] += n
        slot[1] += seconds
    return changed, timings, pa.concat_tables([r[2] for r in results])


def _timing_rows(results: list[tuple[pa.Table, ...]]) -> list[tuple[str, int, float]]:
    table = pa.concat_tables([r[1] for r in results])
    return list(
        zip(
            table.column("event_type").to_pylist(),
            table.column("events").to_pylist(),
            table.column("seconds").to_pylist(),
            strict=True,
        )
    )


# --- SQL projections -------------------------------------------------------------------------


def _rebuild_sql(
    lake: Lake, spec: ProjectionSpec, first: int, last: int, guess: Estimate | None
) -> RebuildResult:
    store = lake.read_model(spec.name, spec.version)
    started = time.perf_counter()
    sql = getattr(spec.cls, "sql")  # noqa: B009 (a SqlProjection's query)
    rows = store.materialize(sql, key=spec.key, first=first, last=last)
    seconds = time.perf_counter() - started
    counts = type_counts(lake, spec.event_types(), first, last)
    return RebuildResult(
        projection=spec.path,
        schema=spec.schema_name,
        kind="sql",
        first_position=first,
        last_position=last,
        events=sum(counts.values()),
        rows=rows,
        rows_written=rows,
        seconds=seconds,
        # One statement: DuckDB does not split its time by event type.
        per_type=per_type({t: [n, float("nan")] for t, n in counts.items()}),
        findings=findings_frame([]),
        resumed_from=None,
        chunks=1,
        workers=1,
        estimate=guess,
    )


def _estimate_sql(lake: Lake, scratch: ProjectionSpec, first: int, total: int, n: int) -> Estimate:
    """The prefix's time scaled by events.

    Measured on 1M bank events, DuckDB's time per event grows with the window (bigger hash
    tables), which a line through two prefixes misses (-25%); plain scaling of a prefix of a
    fifth lands within +20% (bench/rebuild.py).
    """
    end = _nth_position(lake, scratch, first, None, n)
    # Best of three: one statement is short, and the first run warms DuckDB's caches.
    best = min(_rebuild_sql(lake, scratch, first, end, None).seconds for _ in range(3))
    return Estimate(best * total / max(1, n), total, n, best)


# --- helpers -------------------------------------------------------------------------------


def _nth_position(lake: Lake, spec: ProjectionSpec, first: int, last: int | None, n: int) -> int:
    """The commit position of the n-th event of the projection's types from `first`."""
    found = (
        lake.scan_events(
            event_types=list(spec.event_types()), from_position=first, to_position=last
        )
        .select("commit_position")
        .head(n)
        .collect()
    )
    return int(found["commit_position"][-1]) if found.height else first


def _scratch(spec: ProjectionSpec) -> type[Any]:
    """A subclass of the projection that rebuilds into its own scratch schema."""
    return type(spec.cls.__name__, (spec.cls,), {"name": f"{spec.name}_estimate"})


def _check(*, chunk_size: int, workers: int) -> None:
    for name, value in (("chunk_size", chunk_size), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}; give a positive integer")


def _writable(lake: Lake | str | Path) -> AbstractContextManager[Lake]:
    """The lake open for writing: read models are written into the lake file."""
    if isinstance(lake, Lake):
        if lake.read_only:
            raise LakeError(
                f"the lake {lake.path} is open read-only; a rebuild writes its read model into "
                "the lake: open it with read_only=False"
            )
        return nullcontext(lake)
    return Lake(lake)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


@contextmanager
def _progress(
    enabled: bool, total: int, spec: ProjectionSpec, guess: Estimate | None
) -> Iterator[Any]:
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="ev", unit_scale=True, desc=f"rebuild {spec.schema_name}") as bar:
        if guess is not None:
            bar.set_postfix_str(f"estimate {guess.seconds:.1f}s")
        yield bar
