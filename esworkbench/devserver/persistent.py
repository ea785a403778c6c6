"""Persistent subscription groups: the competing-consumer state machine over an ``EventStore``.

A group reads its source (one stream, or ``$all`` through an optional filter) into a buffer,
hands messages to connected consumers by its consumer strategy, and tracks each message until
it is acknowledged, skipped, retried or parked. Semantics follow the KurrentDB/EventStoreDB
server (``PersistentSubscription.cs``):

* every message leaving the buffer gets a sequence number; the checkpoint is the position just
  before the lowest message still in flight or waiting for a retry (or the last message handed
  out when none is), written after ``max_checkpoint_count`` processed messages, or on the clock
  tick once ``min_checkpoint_count`` are processed and ``checkpoint_after`` has passed;
* a retry (nack ``retry``/``unknown``, a message timeout, or a consumer that disconnects with
  messages in flight) re-queues the message with ``retry_count + 1`` ahead of new messages,
  unless it has already been retried ``max_retry_count`` times: then it is parked;
* ``park`` writes a link to the group's ``-parked`` stream, ``skip`` drops the message, and
  ``stop`` does what the real server does: the same as ``skip`` (the server's handler is empty);
* a replay of parked messages queues them as retries (``retry_count`` 0) and then truncates the
  parked stream with ``$tb``.

Durability comes from the store's own log, laid out as the real server lays it out: group
definitions in ``$persistentSubscriptionConfig`` (``$PersistentConfig1`` events), checkpoints
in ``$persistentsubscription-<stream>::<group>-checkpoint`` and parked messages as ``$>`` links
in ``...-parked``.

All state changes happen under one condition variable (``Registry.cond``); consumers' RPC
threads pump their group while holding it. Store writes happen under it too: the store never
calls back into the registry, so the lock order (registry, then store) cannot invert.
"""

from __future__ import annotations

import json
import re
import time
import uuid
import zlib
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from esdbclient.protos.Grpc import streams_pb2

from esworkbench.devserver.records import (
    ANY,
    LINK_EVENT_TYPE,
    METADATA_EVENT_TYPE,
    ProposedEvent,
    StoredEvent,
)
from esworkbench.devserver.store import EventStore
from esworkbench.devserver.wire import persistent_read_resp

ALL = "$all"
CONFIG_STREAM = "$persistentSubscriptionConfig"
CONFIG_EVENT_TYPE = "$PersistentConfig1"
CHECKPOINT_EVENT_TYPE = "$SubscriptionCheckpoint"
STRATEGIES = ("DispatchToSingle", "RoundRobin", "Pinned", "PinnedByCorrelation")
_PINNED_BUCKETS = 1024
_MAX_BUFFERED = 500

NackAction = Literal["unknown", "park", "retry", "skip", "stop"]


class GroupNotFound(Exception):
    """No group of that name on that stream."""


class GroupExists(Exception):
    """A group of that name already exists on that stream."""


class MaxSubscribersReached(Exception):
    """The group already has ``max_subscriber_count`` consumers."""


@dataclass(frozen=True)
class FilterSpec:
    """A ``$all`` group's filter, as the client sent it (stored with the definition)."""

    by_stream_name: bool
    regex: str
    prefixes: tuple[str, ...]

    def accepts(self, event: StoredEvent, cache: dict[str, bool]) -> bool:
        """Whether ``event`` passes (results cached per distinct key)."""
        key = event.stream if self.by_stream_name else event.type
        hit = cache.get(key)
        if hit is None:
            if self.regex:
                hit = re.search(self.regex, key) is not None  # compiled once by re's cache
            else:
                hit = key.startswith(self.prefixes)
            cache[key] = hit
        return hit


@dataclass
class GroupSettings:
    """A group definition: what ``Create``/``Update`` carry, and what is persisted."""

    stream: str
    group: str
    start: int | None = None
    """First revision (stream) or commit position (``$all``) to deliver; None: the start."""
    from_end: bool = False
    filter: FilterSpec | None = None
    resolve_links: bool = False
    message_timeout_ms: int = 30_000
    max_retry_count: int = 10
    min_checkpoint_count: int = 10
    max_checkpoint_count: int = 1000
    checkpoint_after_ms: int = 2_000
    max_subscriber_count: int = 0
    live_buffer_size: int = 500
    read_batch_size: int = 20
    history_buffer_size: int = 500
    strategy: str = "RoundRobin"
    extra_statistics: bool = False

    @property
    def is_all(self) -> bool:
        """Whether the group reads ``$all``."""
        return self.stream == ALL

    def position_text(self, position: int) -> str:
        """A position as the server prints it: a revision, or ``C:<commit>/P:<prepare>``."""
        return f"C:{position}/P:{position}" if self.is_all else str(position)

    def start_from_text(self) -> str:
        """``start_from`` as ``GetInfo`` reports it (-1 means the end)."""
        if self.from_end:
            return self.position_text(-1)
        return self.position_text(self.start or 0)

    def to_json(self) -> dict[str, Any]:
        """The persisted form."""
        data = asdict(self)
        if self.filter is not None:
            data["filter"]["prefixes"] = list(self.filter.prefixes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupSettings:
        """Parse the persisted form."""
        data = dict(data)
        flt = data.pop("filter", None)
        settings = cls(**data)
        if flt is not None:
            settings.filter = FilterSpec(
                flt["by_stream_name"], flt["regex"], tuple(flt.get("prefixes", ()))
            )
        return settings


@dataclass(eq=False)
class _Message:
    event_id: str
    """The id consumers ack with: the link's id when a link was resolved."""
    event: StoredEvent | None
    """The event delivered (the target of a resolved link; None if the target is gone)."""
    link: StoredEvent | None
    original: StoredEvent
    """The record read from the source (the link itself for a resolved link)."""
    position: int
    retry_count: int = 0
    seq: int | None = None
    prev_position: int | None = None
    consumer: Consumer | None = None
    deadline: float = 0.0


@dataclass(eq=False)
class Consumer:
    """One connected ``Read`` call: what it may hold, and what is queued for it."""

    group: Group
    buffer_size: int
    connection_name: str = ""
    peer: str = ""
    outbox: deque[bytes] = field(default_factory=deque)
    in_flight: set[str] = field(default_factory=set)
    total_items: int = 0
    dropped: str | None = None
    """Why the server ended this consumer (group deleted or updated), if it did."""

    @property
    def free_slots(self) -> int:
        """How many more messages this consumer may hold unacknowledged."""
        return max(self.buffer_size - len(self.in_flight), 0)


class Group:
    """One subscription group's live state."""

    def __init__(self, store: EventStore, settings: GroupSettings) -> None:
        self.store = store
        self.settings = settings
        self.consumers: list[Consumer] = []
        self.retry: deque[_Message] = deque()
        self.buffer: deque[_Message] = deque()
        self.outstanding: dict[str, _Message] = {}
        self.total_items = 0
        self._filter_cache: dict[str, bool] = {}
        self._next_consumer = 0
        self._buckets: dict[int, Consumer] = {}
        self.next_seq = 0
        self.last_known_seq = -1
        self.last_known_pos: int | None = None
        self.last_cp_seq = -1
        self.last_cp_pos: int | None = None
        self.last_cp_time = float("-inf")
        self.stat_last_known: int | None = None
        checkpoint = self._load_checkpoint()
        if checkpoint is not None:
            # As the server does on a loaded checkpoint: resume just after it.
            self.cursor = self._cursor_after(checkpoint)
            self.next_seq, self.last_cp_seq, self.last_known_seq = 1, 0, 0
            self.last_known_pos = self.last_cp_pos = checkpoint
        else:
            self.cursor = self._initial_cursor()

    # -- names ---------------------------------------------------------------------------------

    @property
    def key(self) -> str:
        """``<stream>::<group>``, also the subscription id sent in the confirmation."""
        return f"{self.settings.stream}::{self.settings.group}"

    @property
    def checkpoint_stream(self) -> str:
        """Where checkpoints are written."""
        return f"$persistentsubscription-{self.key}-checkpoint"

    @property
    def parked_stream(self) -> str:
        """Where parked messages are linked."""
        return f"$persistentsubscription-{self.key}-parked"

    # -- reading the source --------------------------------------------------------------------

    def _initial_cursor(self) -> int:
        s = self.settings
        if s.is_all:
            if s.from_end:
                return len(self.store.events)
            return bisect_left(self.store.positions, s.start or 0, 0, len(self.store.events))
        state = self.store.stream(s.stream)
        if s.from_end:
            return len(state.events) if state is not None else 0
        return s.start or 0

    def _cursor_after(self, position: int) -> int:
        if self.settings.is_all:
            return bisect_right(self.store.positions, position, 0, len(self.store.events))
        return position + 1

    def _load_checkpoint(self) -> int | None:
        state = self.store.stream(self.checkpoint_stream)
        if state is None or state.soft_deleted or not state.events:
            return None
        if self.store.first_visible(state) > state.last_revision:
            return None
        try:
            record = streams_pb2.ReadResp.ReadEvent.RecordedEvent.FromString(
                state.events[-1].record
            )
            text = json.loads(record.data)
            return int(str(text).split("/")[0].removeprefix("C:"))
        except (ValueError, TypeError):
            return None

    def at_end(self) -> bool:
        """Whether everything in the source has been read into the buffer."""
        if self.settings.is_all:
            return self.cursor >= len(self.store.events)
        state = self.store.stream(self.settings.stream)
        return state is None or self.cursor >= len(state.events)

    def _fill(self) -> None:
        s = self.settings
        if s.is_all:
            events = self.store.events
            skipped = False
            while self.cursor < len(events) and len(self.buffer) < _MAX_BUFFERED:
                event = events[self.cursor]
                self.cursor += 1
                if event.hidden:
                    continue
                if s.filter is not None and not s.filter.accepts(event, self._filter_cache):
                    # The server counts filtered-out events towards checkpoints.
                    self.last_known_pos = event.position
                    self.next_seq += 1
                    self.last_known_seq = self.next_seq - 1
                    skipped = True
                    continue
                self._buffer(event, event.position)
            if skipped:
                self.try_checkpoint(is_time_check=False)
            return
        state = self.store.stream(s.stream)
        if state is None:
            return
        self.cursor = max(self.cursor, self.store.first_visible(state))
        while self.cursor < len(state.events) and len(self.buffer) < _MAX_BUFFERED:
            event = state.events[self.cursor]
            self.cursor += 1
            self._buffer(event, event.revision)

    def _buffer(self, event: StoredEvent, position: int) -> None:
        self.buffer.append(self._message(event, position))
        if self.stat_last_known is None or position > self.stat_last_known:
            self.stat_last_known = position

    def _message(self, event: StoredEvent, position: int) -> _Message:
        if self.settings.resolve_links and event.link is not None:
            target = self._resolve(event)
            return _Message(event.event_id, target, event, event, position)
        return _Message(event.event_id, event, None, event, position)

    def _resolve(self, link: StoredEvent) -> StoredEvent | None:
        assert link.link is not None
        stream, revision = link.link
        state = self.store.stream(stream)
        if state is None or state.soft_deleted or self.store.is_deleted_for_reads(stream):
            return None
        if self.store.first_visible(state) <= revision <= state.last_revision:
            return state.events[revision]
        return None

    # -- dispatching ---------------------------------------------------------------------------

    def pump(self, now: float) -> bool:
        """Time out messages, checkpoint on the clock, read and dispatch; True if anything went."""
        for message in [m for m in self.outstanding.values() if m.deadline <= now]:
            self._retry_or_park(message, "Message timed out")
        self.try_checkpoint(is_time_check=True, now=now)
        if not self.consumers:
            return False
        sent = False
        for queue in (self.retry, self.buffer):
            kept: deque[_Message] = deque()
            while queue:
                message = queue.popleft()
                consumer = self._choose(message)
                if consumer is None:
                    kept.append(message)
                    if self.settings.strategy.startswith("Pinned"):
                        continue  # this consumer is busy; others may take later messages
                    kept.extend(queue)
                    queue.clear()
                    break
                self._send(message, consumer, now)
                sent = True
                if queue is self.buffer and not queue:
                    self._fill()
            queue.extend(kept)
        if not self.buffer:
            self._fill()
            if self.buffer:
                return self.pump(now) or sent
        return sent

    def _choose(self, message: _Message) -> Consumer | None:
        consumers = self.consumers
        if self.settings.strategy.startswith("Pinned"):
            key = (message.event or message.original).stream
            bucket = zlib.crc32(key.encode()) % _PINNED_BUCKETS
            owner = self._buckets.get(bucket)
            if owner is None or owner not in consumers:
                owner = min(consumers, key=self._bucket_count)
                self._buckets[bucket] = owner
            return owner if owner.free_slots else None
        n = len(consumers)
        for step in range(n):
            index = (self._next_consumer + step) % n
            candidate = consumers[index]
            if candidate.free_slots:
                if self.settings.strategy == "RoundRobin":
                    self._next_consumer = (index + 1) % n
                else:  # DispatchToSingle: stay with this consumer until it is full
                    self._next_consumer = index
                return candidate
        return None

    def _bucket_count(self, consumer: Consumer) -> int:
        return sum(1 for owner in self._buckets.values() if owner is consumer)

    def _send(self, message: _Message, consumer: Consumer, now: float) -> None:
        if message.seq is None:
            message.seq = self.next_seq
            self.next_seq += 1
            message.prev_position = self.last_known_pos
            self.last_known_seq = message.seq
            self.last_known_pos = message.position
        timeout = self.settings.message_timeout_ms
        message.deadline = now + timeout / 1000 if timeout > 0 else float("inf")
        message.consumer = consumer
        self.outstanding[message.event_id] = message
        consumer.in_flight.add(message.event_id)
        consumer.outbox.append(
            persistent_read_resp(
                message.event.record if message.event is not None else None,
                message.link.record if message.link is not None else None,
                message.original.position,
                message.retry_count,
            )
        )
        consumer.total_items += 1
        self.total_items += 1

    # -- acknowledgements ----------------------------------------------------------------------

    def _take(self, event_id: str) -> _Message | None:
        message = self.outstanding.pop(event_id, None)
        if message is not None and message.consumer is not None:
            message.consumer.in_flight.discard(event_id)
            message.consumer = None
        return message

    def ack(self, event_ids: list[str]) -> None:
        """Messages processed."""
        for event_id in event_ids:
            self._take(event_id)
        self.try_checkpoint(is_time_check=False)

    def nack(self, event_ids: list[str], action: NackAction, reason: str) -> None:
        """Messages not processed; ``action`` says what to do with them."""
        for event_id in event_ids:
            message = self.outstanding.get(event_id)
            if message is None:
                continue
            if action in ("retry", "unknown"):
                self._retry_or_park(message, reason)
            elif action == "park":
                self._take(event_id)
                self._park(message, "Client explicitly NAK'ed message.\n" + reason)
            else:  # skip; stop is a no-op on the real server, so the message is dropped too
                self._take(event_id)
        self.try_checkpoint(is_time_check=False)

    def _retry_or_park(self, message: _Message, reason: str) -> None:
        self._take(message.event_id)
        if message.retry_count >= self.settings.max_retry_count:
            self._park(message, f"Reached retry count of {self.settings.max_retry_count}")
            return
        message.retry_count += 1
        self.retry.append(message)

    def _park(self, message: _Message, reason: str) -> None:
        original = message.original
        self.store.append(
            self.parked_stream,
            ANY,
            [
                ProposedEvent(
                    event_id=str(uuid.uuid4()),
                    type=LINK_EVENT_TYPE,
                    is_json=False,
                    custom_metadata=json.dumps({"reason": reason}).encode(),
                    data=f"{original.revision}@{original.stream}".encode(),
                )
            ],
        )

    def remove(self, consumer: Consumer) -> None:
        """A consumer left: its messages in flight are retried (or parked), in source order."""
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        lost = sorted(
            (m for m in self.outstanding.values() if m.consumer is consumer),
            key=lambda m: m.position,
        )
        for message in lost:
            self._retry_or_park(message, "Client disconnected")
        self._buckets = {b: c for b, c in self._buckets.items() if c is not consumer}

    # -- checkpoints and parked messages -------------------------------------------------------

    def try_checkpoint(self, *, is_time_check: bool, now: float | None = None) -> None:
        """Write a checkpoint if enough messages were processed (see the module docstring)."""
        pending = [m for m in self.outstanding.values()]
        pending.extend(m for m in self.retry if m.seq is not None)
        if pending:
            lowest = min(pending, key=lambda m: m.seq if m.seq is not None else 0)
            assert lowest.seq is not None
            seq, position = lowest.seq - 1, lowest.prev_position
        else:
            seq, position = self.last_known_seq, self.last_known_pos
        if seq < 0 or position is None:
            return
        difference = seq - self.last_cp_seq
        now = time.monotonic() if now is None else now
        elapsed_ms = (now - self.last_cp_time) * 1000
        s = self.settings
        if difference <= 0:
            return
        if elapsed_ms < s.checkpoint_after_ms and difference < s.max_checkpoint_count:
            return
        if (difference >= s.min_checkpoint_count and is_time_check) or (
            difference >= s.max_checkpoint_count
        ):
            self.last_cp_time = now
            self.last_cp_seq = seq
            self.last_cp_pos = position
            self.store.append(
                self.checkpoint_stream,
                ANY,
                [
                    ProposedEvent(
                        event_id=str(uuid.uuid4()),
                        type=CHECKPOINT_EVENT_TYPE,
                        is_json=True,
                        custom_metadata=b"",
                        data=json.dumps(s.position_text(position)).encode(),
                    )
                ],
            )

    def parked_count(self) -> int:
        """Parked messages not yet replayed."""
        state = self.store.stream(self.parked_stream)
        if state is None:
            return 0
        return max(state.last_revision + 1 - self.store.first_visible(state), 0)

    def replay_parked(self, stop_at: int | None) -> None:
        """Queue parked messages (up to ``stop_at`` parked-stream revisions) as retries."""
        state = self.store.stream(self.parked_stream)
        if state is None:
            return
        first = self.store.first_visible(state)
        end = state.last_revision + 1 if stop_at is None else min(stop_at, state.last_revision + 1)
        if end <= first:
            return
        for link in state.events[first:end]:
            target = self._resolve(link) if link.link is not None else None
            if target is None:
                continue
            message = self._message(target, self._source_position(target))
            self.retry.append(message)
        meta = json.dumps({"$tb": end}, separators=(",", ":")).encode()
        self.store.append(
            "$$" + self.parked_stream,
            ANY,
            [ProposedEvent(str(uuid.uuid4()), METADATA_EVENT_TYPE, True, b"", meta)],
        )

    def _source_position(self, event: StoredEvent) -> int:
        return event.position if self.settings.is_all else event.revision

    def forget(self) -> Iterator[Consumer]:
        """Drop every consumer (the group is being deleted or replaced)."""
        consumers, self.consumers = self.consumers, []
        yield from consumers
