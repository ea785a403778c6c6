"""Batches of whole streams, folded in this process or in forked workers.

Replay (and any stage that folds streams, such as projection rebuilds) plans its input as
ranges of about ``batch_size`` rows that never split a stream, then hands each range to a
``work`` function that turns a table of rows sorted by (stream, revision) into result tables.

Workers inherit the input table, its stream order and the work function through fork
(nothing is pickled on the way in), run their share, and send each result back as Arrow IPC
bytes. Work functions must not call Polars, whose thread pool is not fork-safe; pyarrow
re-creates its own after a fork.

``run_stream`` does the same for batches that arrive one at a time (read from the lake as the
work goes on): each is sent to a worker as Arrow IPC bytes, and no more than two per worker are
in flight, so memory follows the batch size, not the input.

Example:
    >>> plan_batches([3, 4, 2, 5], batch_size=5)
    [(0, 7), (7, 14)]
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.pool import AsyncResult
from typing import NamedTuple

import pyarrow as pa

from esworkbench.errors import ConfigError

__all__ = ["Job", "Work", "gc_paused", "plan_batches", "run_batches", "run_stream"]

# Folds one batch (rows sorted by stream, revision) into result tables.
Work = Callable[[pa.Table], Sequence[pa.Table]]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a batch builds its objects (refcounting still frees them)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def plan_batches(stream_sizes: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """Ranges of about `batch_size` rows over streams of these sizes, never splitting one."""
    batches: list[tuple[int, int]] = []
    start = end = 0
    for size in stream_sizes:
        end += size
        if end - start >= batch_size:
            batches.append((start, end))
            start = end
    if end > start:
        batches.append((start, end))
    return batches


class Job(NamedTuple):
    """The rows, their stream order, the batches over that order, and the work per batch.

    `order` lists row indices of `table` sorted by (stream, revision); a batch is a range of it,
    taken when worked on, so no sorted copy of the whole input is ever made.
    """

    table: pa.Table
    order: pa.Array
    batches: list[tuple[int, int]]
    work: Work

    def run(self, index: int) -> tuple[pa.Table, ...]:
        """The result tables of batch `index`."""
        start, end = self.batches[index]
        rows = self.table.take(self.order.slice(start, end - start))
        return tuple(self.work(rows))


# The forked workers' view of the job: set in the parent just before the fork, inherited.
_SHARED: Job | None = None


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _worker(index: int) -> tuple[int, list[bytes]]:
    assert _SHARED is not None, "batch worker started without a job"
    return index, [_ipc(table) for table in _SHARED.run(index)]


def run_batches(
    job: Job, *, workers: int, advance: Callable[[int], None]
) -> list[tuple[pa.Table, ...]]:
    """Run every batch, in this process or in `workers` forked processes; results in order.

    `advance` is called with each finished batch's row count (for a progress bar).
    """
    count = len(job.batches)
    if workers <= 1 or count <= 1:
        results = []
        for index, (start, end) in enumerate(job.batches):
            results.append(job.run(index))
            advance(end - start)
        return results
    context = _fork_context(workers)
    global _SHARED
    _SHARED = job
    # Objects frozen before the fork are never visited by a collection in the children, so their
    # pages stay shared instead of being copied on first write of a GC header.
    gc.freeze()
    try:
        done: dict[int, tuple[pa.Table, ...]] = {}
        with context.Pool(processes=min(workers, count)) as pool:
            for index, blobs in pool.imap_unordered(_worker, range(count)):
                done[index] = tuple(_from_ipc(blob) for blob in blobs)
                start, end = job.batches[index]
                advance(end - start)
        return [done[i] for i in range(count)]
    finally:
        _SHARED = None
        gc.unfreeze()


# The forked workers' work function for `run_stream`: set in the parent before the fork.
_STREAM_WORK: Work | None = None


def _stream_worker(table: bytes) -> list[bytes]:
    assert _STREAM_WORK is not None, "stream worker started without its work"
    return [_ipc(result) for result in _STREAM_WORK(_from_ipc(table))]


def run_stream(
    tables: Iterable[pa.Table], work: Work, *, workers: int, advance: Callable[[int], None]
) -> Iterator[tuple[int, tuple[pa.Table, ...]]]:
    """(rows in, results of `work`) for each table, in order, as the tables arrive.

    With `workers` > 1 the tables go to that many forked processes, at most two per worker in
    flight. `advance` is called with each finished table's row count.
    """
    if workers <= 1:
        for table in tables:
            result = tuple(work(table))
            advance(table.num_rows)
            yield table.num_rows, result
        return
    context = _fork_context(workers)
    global _STREAM_WORK
    _STREAM_WORK = work
    gc.freeze()
    try:
        with context.Pool(processes=workers) as pool:
            in_flight: deque[tuple[int, AsyncResult[list[bytes]]]] = deque()
            for table in tables:
                in_flight.append((table.num_rows, pool.apply_async(_stream_worker, (_ipc(table),))))
                if len(in_flight) >= 2 * workers:
                    yield _collect(*in_flight.popleft(), advance)
            while in_flight:
                yield _collect(*in_flight.popleft(), advance)
    finally:
        _STREAM_WORK = None
        gc.unfreeze()


def _collect(
    rows: int, pending: AsyncResult[list[bytes]], advance: Callable[[int], None]
) -> tuple[int, tuple[pa.Table, ...]]:
    result = tuple(_from_ipc(blob) for blob in pending.get())
    advance(rows)
    return rows, result


def _fork_context(workers: int) -> multiprocessing.context.BaseContext:
    try:
        return multiprocessing.get_context("fork")
    except ValueError as e:
        raise ConfigError(
            f"workers={workers} needs the 'fork' start method, which this platform lacks; "
            "use workers=1"
        ) from e
