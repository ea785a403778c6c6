"""Decoding EventStoreDB read responses into columns (private to sources.esdb).

Works on what the readers hand it: protobuf `ReadResp` messages (fast reader) or esdbclient's
`RecordedEvent`s (plain reader). It imports neither grpc nor esdbclient; `sources.esdb` owns
the connection.

A reader yields (columns, checkpoint, final): columns of up to batch_size events, the position
read through so far (None: not known yet), and whether the catch-up (or the read) is complete.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from esworkbench.errors import SourceError
from esworkbench.events import RAW_SCHEMA

__all__ = [
    "Columns",
    "created_from_datetimes",
    "created_from_tick_strings",
    "direct_fast",
    "direct_plain",
    "fast_handler",
    "plain_handler",
    "pump",
    "window",
]

# Live events are committed at least this often in follow mode.
_FLUSH_SECONDS = 0.25
# The fast reader naps when taking a message blocked: waited on the network, far longer than
# taking a buffered one (~3 us on a quiet machine, tens of us on a busy or slow one). At 15 us a
# slow machine's buffered takes counted as blocked, and napping after every few of them cut a
# full sync from the dev server to a fourteenth of its speed (1.1k against 15.8k events/s).
_BLOCKED_SECONDS = 0.0002
_NAP_SECONDS = 0.005


class Columns:
    """Column lists for one batch; `batch()` turns them into a RAW_SCHEMA record batch."""

    __slots__ = (
        "commit",
        "content_type",
        "created",
        "data",
        "ids",
        "metadata",
        "prepare",
        "revision",
        "stream",
        "types",
    )

    def __init__(self) -> None:
        self.commit: list[int] = []
        self.prepare: list[int] = []
        self.stream: list[Any] = []  # bytes (fast reader) or str (plain reader)
        self.revision: list[int] = []
        self.ids: list[str] = []
        self.types: list[str] = []
        self.created: list[Any] = []  # tick strings (fast) or datetimes (plain)
        self.content_type: list[str] = []
        self.data: list[bytes] = []
        self.metadata: list[bytes] = []

    def __len__(self) -> int:
        return len(self.commit)

    def batch(self, created: Callable[[list[Any]], pa.Array]) -> pa.RecordBatch:
        stream = pa.array(self.stream)
        if stream.type == pa.binary():
            stream = stream.cast(pa.string())  # validates UTF-8
        return pa.RecordBatch.from_arrays(
            [
                pa.array(self.commit, pa.uint64()),
                pa.array(self.prepare, pa.uint64()),
                stream if len(stream) else pa.array([], pa.string()),
                pa.array(self.revision, pa.uint64()),
                pa.array(self.ids, pa.string()),
                pa.array(self.types, pa.string()),
                created(self.created),
                pa.array(self.content_type, pa.string()),
                pa.array(self.data, pa.binary()),
                pa.array(self.metadata, pa.binary()),
            ],
            schema=RAW_SCHEMA,
        )


def created_from_tick_strings(ticks: list[str]) -> pa.Array:
    """EventStoreDB `created` tick strings (100 ns since the epoch) as UTC microseconds.

    Rounded exactly as esdbclient does (`fromtimestamp(ticks / 1e7)`: float seconds, then
    round-half-even to the microsecond), so the fast and the plain reader agree to the bit.

    Example:
        >>> created_from_tick_strings(["17000000000000005"]).to_pylist()[0].microsecond
        0
    """
    if not ticks:
        return pa.array([], RAW_SCHEMA.field("created").type)
    seconds = pa.array(ticks, pa.string()).cast(pa.int64()).to_numpy().astype(np.float64) / 1e7
    frac, whole = np.modf(seconds)
    micros = whole.astype(np.int64) * 1_000_000 + np.rint(frac * 1e6).astype(np.int64)
    return pa.array(micros, pa.int64()).cast(RAW_SCHEMA.field("created").type)


def created_from_datetimes(values: list[Any]) -> pa.Array:
    return pa.array(values, RAW_SCHEMA.field("created").type)


# A reader yields (columns, checkpoint, final): columns of up to batch_size events, the position
# read through so far (None: not known yet), and whether the catch-up (or the read) is complete.
Message = tuple[Columns, int | None, bool]
MessageIter = Iterator[Message]
Messages = Iterator[Message]


def window(batch_size: int) -> tuple[int, int]:
    # Filtered subscriptions checkpoint every `max * multiplier` events considered: about once
    # per batch, so a filter that matches little still moves the cursor a batch at a time.
    window = max(1, min(batch_size, 500))
    return window, max(1, batch_size // window)


def direct_fast(call: Iterator[Any], batch_size: int, subscribe: bool) -> MessageIter:
    """Read the call's messages into batches of columns (see _fill_fast)."""
    next_message = iter(call).__next__
    checkpoint: int | None = None
    napped = [False]
    while True:
        cols = Columns()
        status, position = _fill_fast(next_message, cols, batch_size, napped)
        if position is not None and (checkpoint is None or position > checkpoint):
            checkpoint = position
        if status == "end":
            if subscribe:
                raise SourceError(
                    "the subscription ended before catching up (the server closed it)"
                )
            yield cols, checkpoint, True
            return
        yield cols, checkpoint, status == "caught_up"
        if status == "caught_up":
            return


def _fill_fast(
    next_message: Callable[[], Any], cols: Columns, batch_size: int, napped: list[bool]
) -> tuple[str, int | None]:
    """The hot loop.

    Protobuf fields straight into lists, no objects per event. Returns why it stopped ("full",
    "checkpoint", "caught_up" or "end") and the last position seen.

    When the server sends slower than this loop reads, each message costs a wake-up (poll,
    read, signal) dearer than decoding it. So when taking a message had to wait, the loop naps
    briefly and lets messages queue up, then takes them from gRPC's buffer in one go. The
    first take after a nap reads the whole backlog and is slow by nature, so it never triggers
    another nap. A take counts as waiting only well past what a buffered one costs on a busy
    machine (`_BLOCKED_SECONDS`): a nap where messages were already there throttles the read.
    """
    commit, prepare, stream = cols.commit.append, cols.prepare.append, cols.stream.append
    revision, ids, types = cols.revision.append, cols.ids.append, cols.types.append
    created, ctype = cols.created.append, cols.content_type.append
    data, meta = cols.data.append, cols.metadata.append
    clock, nap, fresh = time.perf_counter, time.sleep, not napped[0]
    position: int | None = None
    n = 0
    try:
        while True:
            started = clock()
            try:
                resp = next_message()
            except StopIteration:
                return "end", position
            if fresh and clock() - started > _BLOCKED_SECONDS:
                nap(_NAP_SECONDS)
                fresh = False
            else:
                fresh = True
            kind = resp.WhichOneof("content")
            if kind == "event":
                e = resp.event.event
                md = e.metadata
                position = e.commit_position
                commit(position)
                prepare(e.prepare_position)
                stream(e.stream_identifier.stream_name)
                revision(e.stream_revision)
                ids(e.id.string)
                types(md["type"])
                ctype(md["content-type"])
                created(md["created"])
                data(e.data)
                meta(e.custom_metadata)
                n += 1
                if n >= batch_size:
                    return "full", position
            elif kind == "checkpoint":
                return "checkpoint", resp.checkpoint.commit_position
            elif kind == "caught_up":
                return "caught_up", position
    finally:
        napped[0] = not fresh


def fast_handler(resp: Any, cols: Columns) -> tuple[int | None, bool]:
    kind = resp.WhichOneof("content")
    if kind == "event":
        e = resp.event.event
        md = e.metadata
        cols.commit.append(e.commit_position)
        cols.prepare.append(e.prepare_position)
        cols.stream.append(e.stream_identifier.stream_name)
        cols.revision.append(e.stream_revision)
        cols.ids.append(e.id.string)
        cols.types.append(md["type"])
        cols.content_type.append(md["content-type"])
        cols.created.append(md["created"])
        cols.data.append(e.data)
        cols.metadata.append(e.custom_metadata)
        return e.commit_position, False
    if kind == "checkpoint":
        return resp.checkpoint.commit_position, False
    return None, kind == "caught_up"


def _plain_add(ev: Any, cols: Columns) -> None:
    cols.commit.append(ev.commit_position)
    cols.prepare.append(ev.prepare_position)
    cols.stream.append(ev.stream_name)
    cols.revision.append(ev.stream_position)
    cols.ids.append(str(ev.id))
    cols.types.append(ev.type)
    cols.created.append(ev.recorded_at)
    cols.content_type.append(ev.content_type)
    cols.data.append(ev.data)
    cols.metadata.append(ev.metadata)


def plain_handler(ev: Any, cols: Columns) -> tuple[int | None, bool]:
    if ev.is_checkpoint:
        return ev.commit_position, False
    if ev.is_caught_up:
        return None, True
    _plain_add(ev, cols)
    return ev.commit_position, False


def direct_plain(events: Iterator[Any], batch_size: int) -> MessageIter:
    cols = Columns()
    checkpoint: int | None = None
    for ev in events:
        position, caught_up = plain_handler(ev, cols)
        if position is not None and (checkpoint is None or position > checkpoint):
            checkpoint = position
        if caught_up:
            yield cols, checkpoint, True
            return
        if len(cols) >= batch_size or ev.is_checkpoint:
            yield cols, checkpoint, False
            cols = Columns()
    yield cols, checkpoint, True


def pump(
    messages: Iterator[Any],
    handle: Callable[[Any, Columns], tuple[int | None, bool]],
    batch_size: int,
) -> MessageIter:
    """Follow mode.

    A thread reads the live subscription into shared columns; this generator hands them out when a
    batch is full, at checkpoints, or at least every _FLUSH_SECONDS, so a lone live event is
    committed promptly and a burst still comes in full batches.
    """
    cond = threading.Condition()
    state: dict[str, Any] = {
        "cols": Columns(),
        "checkpoint": None,
        "caught_up": False,
        "done": False,
        "error": None,
        "signal": False,
    }

    def run() -> None:
        try:
            for message in messages:
                with cond:
                    position, caught_up = handle(message, state["cols"])
                    if position is not None and (
                        state["checkpoint"] is None or position > state["checkpoint"]
                    ):
                        state["checkpoint"] = position
                    if caught_up:
                        state["caught_up"] = True
                    if caught_up or len(state["cols"]) >= batch_size or state["caught_up"]:
                        state["signal"] = True
                        cond.notify()
        except BaseException as e:  # handed to the consumer below
            with cond:
                state["error"] = e
        finally:
            with cond:
                state["done"] = True
                cond.notify()

    thread = threading.Thread(target=run, name="esworkbench-follow", daemon=True)
    thread.start()
    while True:
        with cond:
            cond.wait_for(lambda: state["signal"] or state["done"], timeout=_FLUSH_SECONDS)
            state["signal"] = False
            cols, state["cols"] = state["cols"], Columns()
            checkpoint, done, error = state["checkpoint"], state["done"], state["error"]
            caught_up = state["caught_up"]
        if error is not None:
            raise error
        if len(cols) or caught_up:
            yield cols, checkpoint, caught_up
        if done:
            return
