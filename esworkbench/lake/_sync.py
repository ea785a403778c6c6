"""Exactly-once incremental sync from a source into the lake, with progress (private).

A producer thread pulls batches from the source (for EventStoreDB: gRPC decode in Python) while
the calling thread commits them (DuckDB work, which releases the GIL), so decoding and inserting
overlap. The queue between them holds at most two batches: memory is set by the batch size.
Each batch and the source's checkpoint commit in one transaction (a batch that crosses a row
group commits in parts, the checkpoint with the last: see `LakeWriter.ingest`); whatever stops a
sync (Ctrl-C, kill -9, the server going away, a stop request) leaves the lake at a transaction
boundary, and the next sync resumes after the checkpoint, skipping what it already holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from esworkbench.errors import SourceError
from esworkbench.sources import (
    EventSource,
    PrefersBatchSize,
    SourceBatch,
    SupportsCancel,
    SupportsHead,
    SupportsVerify,
)

if TYPE_CHECKING:
    from esworkbench.lake._lake import Lake
    from esworkbench.lake._timings import Timings
    from esworkbench.lake._writer import LakeWriter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "SyncInterrupted",
    "SyncProgress",
    "SyncResult",
    "TqdmProgress",
    "sync",
]

Outcome = Literal["ok", "stopped", "interrupted", "failed"]

# Events per batch (and per transaction). Each batch carries ~10 ms of fixed DuckDB work; at
# 25,000 that is well amortized while a batch still takes only ~25 MB in flight.
DEFAULT_BATCH_SIZE = 25_000


@dataclasses.dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync did.

    Attributes:
        run_id: the row in `_sync_runs`.
        source: the source's description (credentials masked).
        source_key: the source's checkpoint key.
        from_position: the checkpoint the sync resumed after (None = from the start).
        to_position: the checkpoint when it ended.
        events: events added to `events`.
        rejected: events added to `_rejected`.
        duplicates: events skipped because the lake already had them.
        batches: batches committed.
        seconds: wall time.
        outcome: "ok" (source exhausted), "stopped" (stop requested or batch limit),
            "interrupted" (Ctrl-C) or "failed" (see `error`).
        error: the error message when failed.
        timings: CPU seconds per phase (see `esworkbench.lake._timings.PHASES`): "read" is
            the reader thread's receiving and decoding, the others the committing thread's
            work on the lake.
    """

    run_id: int
    source: str
    source_key: str
    from_position: int | None
    to_position: int | None
    events: int
    rejected: int
    duplicates: int
    batches: int
    seconds: float
    outcome: Outcome
    error: str | None = None
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        """Events read from the source (added, rejected or already present) per second."""
        total = self.events + self.rejected + self.duplicates
        return total / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        r"""One line for the terminal.

        Example:
            >>> r = SyncResult(1, "jsonl x.jsonl", "file:x", None, 42, 10, 1, 0, 1, 0.5, "ok")
            >>> print(r.summary().replace("; ", ";\n"))
            sync ok: 10 events added, 1 rejected, 0 already in the lake;
            checkpoint start -> 42;
            0.5 s (22 events/s) from jsonl x.jsonl
        """
        start = "start" if self.from_position is None else str(self.from_position)
        end = "start" if self.to_position is None else str(self.to_position)
        line = (
            f"sync {self.outcome}: {self.events:,} events added, {self.rejected:,} rejected, "
            f"{self.duplicates:,} already in the lake; checkpoint {start} -> {end}; "
            f"{self.seconds:.1f} s ({self.events_per_second:,.0f} events/s) from {self.source}"
        )
        if self.error:
            line += f"; error: {self.error}"
        return line


class SyncInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sync; the lake is consistent and `result` says how far it got.

    It is a KeyboardInterrupt, so code that does not catch it stops as usual.
    """

    def __init__(self, result: SyncResult) -> None:
        super().__init__(result.summary())
        self.result = result


class SyncProgress(Protocol):
    """Receives progress from `sync` (TqdmProgress draws it; tests can record it)."""

    def start(self, *, source: str, from_position: int | None, head: int | None) -> None: ...

    def advance(
        self, *, events: int, rejected: int, duplicates: int, position: int | None
    ) -> None: ...

    def close(self) -> None: ...


class TqdmProgress:
    """A tqdm bar (terminal or notebook).

    It shows events, events/s, the current position, and an ETA from the head position read
    when the sync started.

    Example:
        >>> p = TqdmProgress(disable=True)
        >>> p.start(source="demo", from_position=None, head=100)
        >>> p.advance(events=10, rejected=0, duplicates=0, position=50)
        >>> p.close()
    """

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self._kwargs = tqdm_kwargs
        self._bar: Any = None
        self._events = 0
        self._base = 0
        self._t0 = 0.0

    def start(self, *, source: str, from_position: int | None, head: int | None) -> None:
        from tqdm.auto import tqdm

        self._base = from_position or 0
        self._t0 = time.monotonic()
        total = head - self._base if head is not None and head > self._base else None
        fmt = (
            "{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]"
            if total
            else "{desc}: {postfix} [{elapsed}]"
        )
        self._bar = tqdm(total=total, desc="sync", bar_format=fmt, **self._kwargs)
        self._bar.set_postfix_str(f"0 events, position {self._base}", refresh=False)

    def advance(self, *, events: int, rejected: int, duplicates: int, position: int | None) -> None:
        if self._bar is None:
            return
        self._events += events + rejected + duplicates
        rate = self._events / max(time.monotonic() - self._t0, 1e-9)
        if position is not None:
            n = position - self._base
            if self._bar.total is not None:
                n = min(n, self._bar.total)
            self._bar.update(max(n - self._bar.n, 0))
        shown = position if position is not None else self._base
        self._bar.set_postfix_str(
            f"{self._events:,} events, {rate:,.0f} events/s, position {shown}", refresh=True
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


_END = object()


@dataclasses.dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException


def _produce(
    source: EventSource,
    after: int | None,
    batch_size: int,
    out: queue.Queue[Any],
    halt: threading.Event,
    timings: Timings,
) -> None:
    def put(item: object) -> bool:
        while not halt.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    batches: Iterator[SourceBatch] | None = None
    try:
        batches = source.read_batches(after, batch_size=batch_size)
        while True:
            started = time.thread_time()
            batch = next(batches, None)
            timings.add("read", time.thread_time() - started)
            if batch is None:
                break
            if not put(batch):
                return
        put(_END)
    except BaseException as e:  # handed to the committing thread, which re-raises it
        put(_Failure(e))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            # closing a failed read must not hide the original error
            with contextlib.suppress(Exception):
                close()


def sync(
    source: EventSource,
    lake: Lake,
    *,
    batch_size: int | None = None,
    progress: SyncProgress | bool = False,
    stop_after_batches: int | None = None,
    stop: threading.Event | None = None,
) -> SyncResult:
    """Copy the source's new events into the lake, resuming after the lake's checkpoint.

    Exactly once: each batch and the new checkpoint commit together, and event ids make a
    re-delivered event harmless. Undecodable events go to `_rejected`. A follow-mode source
    keeps this running until `stop` is set or Ctrl-C.

    Args:
        source: where the events come from (`EventSource`).
        lake: an open, writable `Lake`.
        batch_size: events per batch and transaction; peak memory is proportional to it.
            None: the source's `preferred_batch_size` if it has one (archives), else
            `DEFAULT_BATCH_SIZE`.
        progress: True for a tqdm bar, or any `SyncProgress`.
        stop_after_batches: commit at most this many batches, then stop ("stopped").
        stop: set it (from another thread) to stop after the current batch ("stopped").

    Returns:
        The `SyncResult` (also recorded in `_sync_runs`).

    Raises:
        SyncInterrupted: on Ctrl-C (a KeyboardInterrupt carrying the result).
        SourceError: the source failed (e.g. the server went away); the error has the
            partial result as `sync_result` and a note on how to resume.

    Example:
        >>> from esworkbench.lake import Lake
        >>> from esworkbench.sources.files import open_archive
        >>> with Lake("data/lake/demo.duckdb") as lake:          # doctest: +SKIP
        ...     print(sync(open_archive("data/sample/ledger.jsonl.gz"), lake).summary())
    """
    if batch_size is None:
        batch_size = (
            source.preferred_batch_size
            if isinstance(source, PrefersBatchSize)
            else DEFAULT_BATCH_SIZE
        )
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    reporter: SyncProgress | None = TqdmProgress() if progress is True else (progress or None)
    key = source.key
    description = source.describe()
    # Ctrl-C asks for a stop at the next batch boundary, so it never lands inside the
    # bookkeeping; a second Ctrl-C interrupts at once.
    ctrl_c = threading.Event()
    with _ctrl_c_sets(ctrl_c):
        writer = lake.writer(batch_size=batch_size)
        start = writer.checkpoint(key)
        run_id = writer.begin_run(key, description, start)
        try:
            _check_same_source(source, writer.anchor(key), description, lake)
        except SourceError as e:
            writer.finish_run(run_id, "failed", str(e))
            raise
        t0 = time.monotonic()
        totals = {"events": 0, "rejected": 0, "duplicates": 0, "batches": 0}

        head: int | None = None
        if reporter is not None:
            if isinstance(source, SupportsHead):
                try:
                    head = source.head_position()
                except Exception:
                    head = None  # an ETA is a nicety; the read itself reports real trouble
            reporter.start(source=description, from_position=start, head=head)

        batches: queue.Queue[Any] = queue.Queue(maxsize=2)
        halt = threading.Event()
        producer = threading.Thread(
            target=_produce,
            name="esworkbench-sync-reader",
            args=(source, start, batch_size, batches, halt, writer.timings),
            daemon=True,
        )
        producer.start()
        outcome, error = _loop(
            writer,
            batches,
            key=key,
            run_id=run_id,
            totals=totals,
            reporter=reporter,
            stop=stop,
            ctrl_c=ctrl_c,
            stop_after_batches=stop_after_batches,
            position=start,
        )
        halt.set()
        if isinstance(source, SupportsCancel):
            # best effort: the reader thread is a daemon either way
            with contextlib.suppress(Exception):
                source.cancel()
        producer.join(timeout=5)
        if reporter is not None:
            reporter.close()
        result = _finish(writer, run_id, key, description, start, totals, t0, outcome, error)
    if isinstance(error, KeyboardInterrupt):
        raise SyncInterrupted(result) from error
    if error is not None:
        where = "the start" if result.to_position is None else f"position {result.to_position}"
        error.add_note(f"The lake is consistent up to {where}; run the sync again to resume.")
        error.sync_result = result  # type: ignore[attr-defined]
        raise error
    return result


def _check_same_source(
    source: EventSource, anchor: tuple[int, str] | None, description: str, lake: Lake
) -> None:
    """Refuse to resume when the source no longer holds the event the checkpoint follows.

    A commit position names a place in one store's log; a store reset or replaced at the same
    address (an in-memory server restarted and reseeded) reuses the positions for other events,
    and resuming there would skip events and mix two stores in one lake.
    """
    if anchor is None or not isinstance(source, SupportsVerify):
        return
    position, expected = anchor
    found = source.event_id_at(position)
    if found == expected:
        return
    now = f"holds event {found}" if found is not None else "holds no event"
    raise SourceError(
        f"the source changed: {description} now {now} at commit position {position}, where "
        f"the lake {lake.path} last read event {expected}. The store was reset or replaced "
        "(an in-memory server restarted?), and resuming would skip events and mix two stores. "
        "Sync it into a new lake (esworkbench sync --lake NEW.duckdb ...), or delete "
        f"{lake.path} to start this one over."
    )


@contextlib.contextmanager
def _ctrl_c_sets(flag: threading.Event) -> Iterator[None]:
    """While inside, the first Ctrl-C (SIGINT) sets `flag` instead of raising.

    A second one raises KeyboardInterrupt as usual. Only the main thread can own signal
    handlers, and a handler someone else installed is left alone.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _loop(
    writer: LakeWriter,
    batches: queue.Queue[Any],
    *,
    key: str,
    run_id: int,
    totals: dict[str, int],
    reporter: SyncProgress | None,
    stop: threading.Event | None,
    ctrl_c: threading.Event,
    stop_after_batches: int | None,
    position: int | None,
) -> tuple[Outcome, BaseException | None]:
    """Commit batches until the source ends, a stop is asked for, or something fails."""
    with writer:
        try:
            while True:
                if ctrl_c.is_set():
                    return "interrupted", KeyboardInterrupt()
                if stop is not None and stop.is_set():
                    return "stopped", None
                try:
                    item = batches.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is _END:
                    return "ok", None
                if isinstance(item, _Failure):
                    raise item.error
                counts = writer.ingest(item, source_key=key, run_id=run_id)
                totals["events"] += counts.events
                totals["rejected"] += counts.rejected
                totals["duplicates"] += counts.duplicates
                totals["batches"] += 1
                if item.checkpoint is not None:
                    position = max(position or 0, item.checkpoint)
                if reporter is not None:
                    reporter.advance(
                        events=counts.events,
                        rejected=counts.rejected,
                        duplicates=counts.duplicates,
                        position=position,
                    )
                if stop_after_batches is not None and totals["batches"] >= stop_after_batches:
                    return "stopped", None
        except KeyboardInterrupt as e:
            return "interrupted", e
        except BaseException as e:
            return "failed", e


def _finish(
    writer: LakeWriter,
    run_id: int,
    key: str,
    description: str,
    start: int | None,
    totals: dict[str, int],
    t0: float,
    outcome: Outcome,
    error: BaseException | None,
) -> SyncResult:
    """Record how the sync ended in `_sync_runs`, and say it."""
    message = (
        None if error is None or outcome == "interrupted" else (str(error) or type(error).__name__)
    )
    result = SyncResult(
        run_id=run_id,
        source=description,
        source_key=key,
        from_position=start,
        to_position=writer.checkpoint(key),
        events=totals["events"],
        rejected=totals["rejected"],
        duplicates=totals["duplicates"],
        batches=totals["batches"],
        seconds=time.monotonic() - t0,
        outcome=outcome,
        error=message,
        timings=dict(writer.timings.seconds),
    )
    writer.finish_run(run_id, outcome, message)
    return result
