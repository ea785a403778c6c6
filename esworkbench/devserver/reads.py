"""Reading the store: stream reads, ``$all`` reads and catch-up subscriptions.

Every function here is a generator of serialized ``ReadResp`` messages. Events go out as the
bytes stored with them at write time, so the per-event work in these loops is an attribute
read, an optional filter lookup (cached per distinct key) and a ``yield``. Subscriptions yield
each event as soon as it is scanned, so a client with a short deadline still gets the first
one, and wait on the store's condition variable once they have caught up.

Semantics: ``shared/esdb-devserver-spec.md`` §b.6 (streams), §b.7 (``$all``), §b.10
(subscriptions) and §b.11 (links).
"""

from __future__ import annotations

import re
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import islice
from operator import attrgetter
from typing import Protocol

from esworkbench.devserver.records import StoredEvent, StreamDeleted
from esworkbench.devserver.store import EventStore
from esworkbench.devserver.wire import (
    read_resp_caught_up,
    read_resp_checkpoint,
    read_resp_confirmation,
    read_resp_link,
    read_resp_stream_not_found,
)

DEFAULT_WINDOW = 32
"""Search window when a filter asks for ``count`` instead of ``max`` (the server's page size)."""


class Liveness(Protocol):
    """What a live subscription needs from its RPC: a way to wait for new events."""

    def wait_until(self, ready: Callable[[], bool]) -> bool:
        """Block until ``ready()`` is true (True) or the call has ended (False)."""
        ...


class Filter:
    """A compiled ``$all`` filter on event type or stream name, by regex or by prefixes.

    Args:
        by_stream_name: Match the stream name instead of the event type.
        regex: A pattern searched anywhere in the key (.NET ``Regex.IsMatch`` semantics,
            which Python's ``re.search`` matches for the patterns clients build).
        prefixes: Used when ``regex`` is empty: the key must start with one of them.
        window: ``filter.max``, the search window.
        multiplier: ``checkpointIntervalMultiplier``.

    Raises:
        re.error: ``regex`` does not compile.
    """

    def __init__(
        self,
        *,
        by_stream_name: bool,
        regex: str,
        prefixes: Sequence[str],
        window: int,
        multiplier: int,
    ) -> None:
        self.key_of: Callable[[StoredEvent], str] = attrgetter(
            "stream" if by_stream_name else "type"
        )
        if regex:
            search = re.compile(regex).search
            self._match: Callable[[str], bool] = lambda key: search(key) is not None
        else:
            starts = tuple(prefixes)
            self._match = lambda key: key.startswith(starts)
        self.checkpoint_interval = max(window, 1) * max(multiplier, 1)
        # Event types and stream names repeat, so each distinct key is matched once per call.
        self.cache: dict[str, bool] = {}

    def accepts(self, key: str) -> bool:
        """Whether an event with this type (or stream name) passes the filter."""
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = self._match(key)
        return hit


def new_subscription_id() -> str:
    """A fresh subscription id, as the real server sends in the confirmation."""
    return str(uuid.uuid4())


def _resolved(store: EventStore, event: StoredEvent) -> bytes:
    # A link resolves to its target if the target is still readable through its stream,
    # otherwise it goes out alone (no `event`), which clients skip.
    assert event.link is not None
    stream, revision = event.link
    target: bytes | None = None
    state = store.stream(stream)
    if (
        state is not None
        and not state.soft_deleted
        and not store.is_deleted_for_reads(stream)
        and store.first_visible(state) <= revision <= state.last_revision
    ):
        target = state.events[revision].record
    return read_resp_link(target, event.record, event.position)


def read_stream(
    store: EventStore,
    name: str,
    *,
    revision: int | None,
    backwards: bool,
    count: int,
    resolve_links: bool,
) -> Iterator[bytes]:
    """Read one stream from ``revision`` (None: its end), honouring its metadata.

    Raises:
        StreamDeleted: The stream (or, for ``$$S``, ``S``) is tombstoned.
    """
    if store.is_deleted_for_reads(name):
        raise StreamDeleted
    state = store.stream(name)
    if state is None or state.last_revision < 0 or state.soft_deleted:
        yield read_resp_stream_not_found(name)
        return
    events = state.events
    last = len(events) - 1
    low = store.first_visible(state)
    if backwards:
        top = last if revision is None else min(revision, last)
        selected = range(top, max(low, top - count + 1) - 1, -1)
    else:
        bottom = max(low, revision or 0)
        selected = range(bottom, min(last, bottom + count - 1) + 1)
    for i in selected:
        event = events[i]
        if resolve_links and event.link is not None:
            yield _resolved(store, event)
        else:
            yield event.wire


def read_all(
    store: EventStore,
    *,
    position: int | None,
    backwards: bool,
    count: int,
    flt: Filter | None,
    resolve_links: bool,
) -> Iterator[bytes]:
    """Read ``$all``: forwards from ``position`` inclusive, backwards from it exclusive.

    ``position`` None means the start (forwards) or the end (backwards). Reads see the log as
    it was when they began.
    """
    events = store.events
    n = len(events)
    if count <= 0:
        return
    if backwards:
        top = n - 1 if position is None else bisect_left(store.positions, position, 0, n) - 1
        yield from _backwards(store, events, top, count, flt, resolve_links)
        return
    start = 0 if position is None else bisect_left(store.positions, position, 0, n)
    window = islice(events, start, n)
    sent = 0
    if flt is None and not resolve_links:
        for event in window:
            if event.hidden:
                continue
            yield event.wire
            sent += 1
            if sent >= count:
                return
        return
    key_of = flt.key_of if flt is not None else None
    accepts = flt.accepts if flt is not None else None
    for event in window:
        if event.hidden:
            continue
        if accepts is not None and key_of is not None and not accepts(key_of(event)):
            continue
        if resolve_links and event.link is not None:
            yield _resolved(store, event)
        else:
            yield event.wire
        sent += 1
        if sent >= count:
            return


def _backwards(
    store: EventStore,
    events: list[StoredEvent],
    top: int,
    count: int,
    flt: Filter | None,
    resolve_links: bool,
) -> Iterator[bytes]:
    sent = 0
    i = top
    while i >= 0:
        event = events[i]
        i -= 1
        if event.hidden or (flt is not None and not flt.accepts(flt.key_of(event))):
            continue
        if resolve_links and event.link is not None:
            yield _resolved(store, event)
        else:
            yield event.wire
        sent += 1
        if sent >= count:
            return


def subscribe_all(
    store: EventStore,
    liveness: Liveness,
    *,
    after: int | None,
    from_end: bool,
    flt: Filter | None,
    resolve_links: bool,
) -> Iterator[bytes]:
    """A catch-up subscription to ``$all``, starting after position ``after`` (exclusive).

    ``after`` None with ``from_end`` False starts at the beginning. Filtered subscriptions
    emit a checkpoint every ``filter.max * multiplier`` considered events (matching or not),
    one at the end of catch-up (never past the last event in the log), and only increasing
    ones; unfiltered subscriptions emit none.
    """
    yield read_resp_confirmation(new_subscription_id())
    events = store.events
    positions = store.positions
    i = len(events) if from_end else (0 if after is None else bisect_right(positions, after))
    interval = flt.checkpoint_interval if flt is not None else 0
    counter = 0
    last_considered = after or 0
    last_checkpoint = -1
    caught_up = from_end
    if from_end:
        yield read_resp_caught_up(_now_ns(store), revision=None, position=_head(positions, i))
    while True:
        n = len(events)
        if i < n:
            for event in islice(events, i, n):
                if flt is not None:
                    counter += 1
                    last_considered = event.position
                if not event.hidden and (flt is None or flt.accepts(flt.key_of(event))):
                    if resolve_links and event.link is not None:
                        yield _resolved(store, event)
                    else:
                        yield event.wire
                if counter >= interval > 0:
                    counter = 0
                    if last_considered > last_checkpoint:
                        last_checkpoint = last_considered
                        yield read_resp_checkpoint(last_considered, _now_ns(store))
            i = n
            continue
        if not caught_up:
            caught_up = True
            if flt is not None:
                head = positions[n - 1] if n else 0
                checkpoint = min(last_considered, head)
                if checkpoint > last_checkpoint:
                    last_checkpoint = checkpoint
                    yield read_resp_checkpoint(checkpoint, _now_ns(store))
            # Everything up to the head has been scanned: that is where a resume would start.
            yield read_resp_caught_up(_now_ns(store), revision=None, position=_head(positions, n))
            continue
        if not liveness.wait_until(partial(_log_grew, events, i)):
            return


def subscribe_stream(
    store: EventStore,
    liveness: Liveness,
    name: str,
    *,
    after: int | None,
    from_end: bool,
    resolve_links: bool,
) -> Iterator[bytes]:
    """A catch-up subscription to one stream, starting after revision ``after`` (exclusive).

    A stream that does not exist yet is waited for. When the stream is tombstoned, the
    ``$streamDeleted`` event is delivered and then ``StreamDeleted`` is raised.

    Raises:
        StreamDeleted: The stream is (or becomes) tombstoned.
    """
    yield read_resp_confirmation(new_subscription_id())
    if store.is_deleted_for_reads(name):
        raise StreamDeleted
    state = store.stream(name)
    caught_up = from_end
    if from_end:
        next_revision = len(state.events) if state is not None else 0
        yield _stream_caught_up(store, next_revision)
    else:
        next_revision = 0 if after is None else after + 1
    while True:
        state = store.stream(name)
        if state is not None:
            events = state.events
            n = len(events)
            if next_revision < n:
                if not caught_up:
                    # Catch-up honours $tb/$maxCount/$maxAge; live events are new, so visible.
                    next_revision = min(max(next_revision, store.first_visible(state)), n)
                for event in islice(events, next_revision, n):
                    if resolve_links and event.link is not None:
                        yield _resolved(store, event)
                    else:
                        yield event.wire
                next_revision = max(next_revision, n)
                continue
            if state.tombstone is not None:
                yield state.tombstone.wire
                raise StreamDeleted
        if not caught_up:
            caught_up = True
            yield _stream_caught_up(store, next_revision)
            continue
        if not liveness.wait_until(partial(_stream_moved, store, name, next_revision)):
            return


def _now_ns(store: EventStore) -> int:
    return store.now_ticks() * 100


def _head(positions: list[int], n: int) -> int | None:
    # The position of the last of the first n records, or None for an empty log.
    return positions[n - 1] if n else None


def _stream_caught_up(store: EventStore, next_revision: int) -> bytes:
    revision = next_revision - 1 if next_revision > 0 else None
    return read_resp_caught_up(_now_ns(store), revision=revision, position=None)


def _log_grew(events: list[StoredEvent], seen: int) -> bool:
    return len(events) > seen


def _stream_moved(store: EventStore, name: str, next_revision: int) -> bool:
    state = store.stream(name)
    return state is not None and (len(state.events) > next_revision or state.tombstone is not None)
