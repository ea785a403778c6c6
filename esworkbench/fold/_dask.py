"""Replay on a Dask cluster: one task per hash partition of whole streams, results as Parquet.

The driver (this process) exports the lake as hash partitions of whole streams
(``Lake.export_partitions``; incremental, so a second run after a sync rewrites only the
partitions that changed), then submits one task per partition. A task reads its partition
file, keeps the events in the replay's scope, folds them with ``fold_frame`` (the very code a
single-process replay runs) and writes its timeline and findings as Parquet beside the
partitions. The driver only gets small summaries back, and the `Replay` it returns scans the
result files lazily, sorted as a single-process replay sorts.

What moves over the wire: to each task, its partition's path and the replay's options (the
aggregate class by reference, pickled); back, a few numbers and paths; progress, one small
event per folded batch. The events and the results go through the shared storage (`workdir`),
never through the scheduler.

A worker lost mid-task (killed, out of memory) is replaced by its nanny and the scheduler runs
the task again elsewhere; a task that raises is retried ``retries`` times. Results are written
beside their names and moved into place, and their names depend only on the partition, so a
retry overwrites a half-done attempt and the result stays exact.

Dask is imported only here, inside functions: ``import esworkbench`` stays light, and a missing
``distributed`` names the extra to install.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import polars as pl

from esworkbench.aggregates import AggregateRoot
from esworkbench.errors import ConfigError
from esworkbench.filters import EventFilter
from esworkbench.fold import _engine as core
from esworkbench.fold import _frames as frames
from esworkbench.lake import (
    Lake,
    PartitionManifest,
    opened,
    read_partition,
    write_parquet,
)

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "DEFAULT_RETRIES",
    "PartResult",
    "dask_client",
    "export_for_dask",
    "fold_partition",
    "replay_on_dask",
    "reporter",
    "require_distributed",
    "run_tasks",
    "scoped_events",
    "workdir_of",
]

# Task retries after an exception (a lost worker is rescheduled by Dask on its own).
DEFAULT_RETRIES = 2
_EXTRA = "pip install 'esworkbench[dask]'"


def require_distributed() -> Any:
    """The ``distributed`` module, or a ConfigError that names the extra to install."""
    try:
        import distributed
    except ImportError as e:
        raise ConfigError(
            f"engine='dask' needs Dask distributed, which is not installed: {_EXTRA}"
        ) from e
    return distributed


@contextlib.contextmanager
def dask_client(scheduler: str | Client | None) -> Iterator[Client]:
    """A client for `scheduler`: a ``Client`` as it is, an address, or None (a LocalCluster).

    A client made here is closed afterwards; one passed in is left open for its owner.
    """
    distributed = require_distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if scheduler is None:
        # One thread per worker process: folding is pure Python, threads would share one GIL.
        with (
            distributed.LocalCluster(processes=True, threads_per_worker=1) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
        return
    if not isinstance(scheduler, str):
        raise ConfigError(
            f"scheduler={scheduler!r}; give an address ('tcp://host:8786'), a "
            "distributed.Client, or None for a LocalCluster on this machine"
        )
    try:
        client = distributed.Client(scheduler, timeout="30s")
    except (OSError, TimeoutError) as e:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {scheduler!r}: {e}. Is it running "
            "('dask scheduler' prints its address) and reachable from here?"
        ) from e
    with client:
        yield client


def workdir_of(lake: Lake, workdir: str | Path | None) -> str:
    """Where partitions and results go: `workdir`, else ``<lake file>.dask`` beside the lake."""
    if workdir is not None:
        return str(workdir)
    return str(lake.path.with_name(lake.path.name + ".dask"))


def export_for_dask(
    lake: Lake, workdir: str, *, partitions: int, storage_options: dict[str, Any] | None
) -> PartitionManifest:
    """The lake's hash partitions in ``<workdir>/partitions`` (only changed ones rewritten)."""
    return lake.export_partitions(
        f"{workdir.rstrip('/')}/partitions", buckets=partitions, storage_options=storage_options
    )


class PartResult(NamedTuple):
    """What a task sends back: counts and the result files it wrote (None: no rows)."""

    bucket: int
    events: int
    files: dict[str, str | None]
    extra: Any = None


def run_tasks(
    client: Client,
    fn: Callable[..., PartResult],
    manifest: PartitionManifest,
    *,
    name: str,
    options: dict[str, Any],
    retries: int,
    progress: bool,
    desc: str,
) -> list[PartResult]:
    """Run ``fn(path, bucket, topic, **options)`` once per partition; results by bucket.

    One progress bar follows the events of every task as workers fold them: each task logs
    an event per batch on the run's topic, and the bar shows the sum of the latest counts (a
    retried task's progress starts again from its last count, so the bar never goes back).
    """
    distributed = require_distributed()
    run = f"{name}-{uuid.uuid4().hex[:12]}"
    topic = f"esworkbench-progress-{run}"
    sizes = {p.bucket: p.events for p in manifest.partitions}
    done = dict.fromkeys(sizes, 0)
    lock = threading.Lock()
    bar = _bar(progress, manifest.events, desc)

    def advance(bucket: int, count: int) -> None:
        with lock:
            count = min(count, sizes[bucket])
            if count > done[bucket]:
                bar.update(count - done[bucket])
                done[bucket] = count

    def on_event(event: tuple[float, Any]) -> None:
        _, (bucket, count) = event
        advance(int(bucket), int(count))

    if progress:
        client.subscribe_topic(topic, on_event)
    try:
        futures = [
            client.submit(
                fn,
                path,
                entry.bucket,
                topic if progress else None,
                **options,
                key=f"{run}-{entry.bucket:05d}",
                retries=retries,
                pure=False,
            )
            for entry, path in zip(manifest.partitions, manifest.paths(), strict=True)
        ]
        results: dict[int, PartResult] = {}
        for future in distributed.as_completed(futures):
            result: PartResult = future.result()
            results[result.bucket] = result
            advance(result.bucket, sizes[result.bucket])
        return [results[b] for b in sorted(results)]
    finally:
        if progress:
            client.unsubscribe_topic(topic)
        bar.close()


def reporter(topic: str | None, bucket: int) -> Callable[[int], None]:
    """In a task: a callback that logs the task's folded-event count on the run's topic."""
    if topic is None:
        return lambda n: None
    from distributed import get_worker

    worker = get_worker()
    done = 0

    def report(n: int) -> None:
        nonlocal done
        done += n
        worker.log_event(topic, (bucket, done))

    return report


# --- replay --------------------------------------------------------------------------------


def replay_on_dask(
    lake: Lake | str | Path,
    cls: type[AggregateRoot],
    *,
    scope: EventFilter,
    as_of: int | datetime | None,
    on_error: core.OnError,
    progress: bool,
    batch_size: int,
    scheduler: str | Client | None,
    partitions: int,
    workdir: str | Path | None,
    storage_options: dict[str, Any] | None,
    retries: int = DEFAULT_RETRIES,
) -> frames.Replay:
    """Replay on Dask (see the module docstring); the same rows as a single-process replay."""
    require_distributed()
    frames.cut(as_of)  # a bad as_of fails here, before any work is sent out
    with opened(lake) as lake_:
        root = workdir_of(lake_, workdir)
        manifest = export_for_dask(
            lake_, root, partitions=partitions, storage_options=storage_options
        )
    out = f"{root.rstrip('/')}/replays/{_slug(cls.__qualname__)}-{uuid.uuid4().hex[:12]}"
    with dask_client(scheduler) as client:
        results = run_tasks(
            client,
            fold_partition,
            manifest,
            name="replay",
            options={
                "out": out,
                "cls": cls,
                "scope": scope,
                "as_of": as_of,
                "on_error": on_error,
                "batch_size": batch_size,
                "storage_options": storage_options,
            },
            retries=retries,
            progress=progress,
            desc=f"replay {cls.__qualname__} on dask",
        )
    timelines = [r.files["timeline"] for r in results if r.files["timeline"] is not None]
    findings = [r.files["findings"] for r in results if r.files["findings"] is not None]
    # Within a partition rows are in a single-process replay's order; across partitions, its
    # order is commit position, then stream (batches run in stream order).
    timeline, found = frames.scan_results(timelines, findings, cls, storage_options)
    return frames.Replay(timeline, found, cls, sum(r.events for r in results))


def fold_partition(
    path: str,
    bucket: int,
    topic: str | None,
    *,
    out: str,
    cls: type[AggregateRoot],
    scope: EventFilter,
    as_of: int | datetime | None,
    on_error: core.OnError,
    batch_size: int,
    storage_options: dict[str, Any] | None,
) -> PartResult:
    """The Dask task: fold one partition's streams in scope, write timeline and findings."""
    events = scoped_events(path, scope, storage_options)
    cut = frames.cut(as_of)
    if cut is not None:
        events = events.filter(cut)
    timeline, findings = frames.fold_frame(
        events,
        cls,
        workers=1,
        on_error=on_error,
        batch_size=batch_size,
        advance=reporter(topic, bucket),
    )
    files: dict[str, str | None] = {"timeline": None, "findings": None}
    for name, frame in (("timeline", timeline), ("findings", findings)):
        if frame.height:
            url = f"{out}/{name}/part-{bucket:05d}.parquet"
            write_parquet(frame.to_arrow(), url, storage_options=storage_options)
            files[name] = url
    return PartResult(bucket, events.height, files)


def scoped_events(
    path: str, scope: EventFilter, storage_options: dict[str, Any] | None
) -> pl.DataFrame:
    """A partition's events in `scope`, with its rejected events merged as a replay reads them."""
    table = read_partition(path, storage_options=storage_options)
    mask = scope.mask(table)
    if mask is not None:
        table = table.filter(mask)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    rejected = pl.col(core.REJECTED)
    events = frame.filter(rejected.is_null()).select(core.INPUT_COLUMNS)
    refused = frame.filter(rejected.is_not_null()).rename({core.REJECTED: "reason"})
    # The lake lists rejected events by (position, id); merge_rejected keeps its first copy.
    refused = refused.sort("commit_position", "event_id", maintain_order=True)
    return frames.merge_rejected(events, refused)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "aggregate"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, desc=desc)
