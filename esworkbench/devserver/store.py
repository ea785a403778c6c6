"""The event store behind the development server: one ordered log and its in-memory index.

Writes go through one lock (positions and revisions are assigned, the frame is made durable,
then the events are published); reads never take it. Readers see a consistent prefix because
each write publishes its events with single ``list.extend`` calls under ``cond``, and live
subscriptions wait on ``cond`` for the log to grow.

The rules implemented here (expected revisions, idempotent retries, soft delete and undelete,
tombstones, stream metadata) follow ``shared/esdb-devserver-spec.md`` §b.2-b.9.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from esdbclient.protos.Grpc import streams_pb2

from esworkbench.devserver.log import (
    FRAME_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    SALVAGE_HINT,
    EventLog,
    LogCorruptError,
)
from esworkbench.devserver.records import (
    ANY,
    MAX_REVISION,
    METADATA_EVENT_TYPE,
    NO_STREAM,
    STREAM_EXISTS,
    TOMBSTONE_EVENT_TYPE,
    ProposedEvent,
    StoredEvent,
    StreamDeleted,
    StreamMeta,
    StreamState,
    WriteResult,
    WrongExpectedVersion,
    is_metastream,
    validate_stream_name,
)
from esworkbench.devserver.wire import encode_recorded_event

_TICKS_PER_SECOND = 10_000_000
_created_of = attrgetter("created")


@dataclass(frozen=True, slots=True)
class _Draft:
    stream: str
    revision: int
    event_id: str
    type: str
    is_json: bool
    custom_metadata: bytes
    data: bytes


class EventStore:
    """The log, its index and the write rules.

    Args:
        log: Where committed frames go (``MemoryLog`` or ``FileLog``).
        records: ``(position, RecordedEvent bytes)`` already in the log, replayed into the index.
        seed: Whether to write the start-up system events if the log is empty.
        clock_ns: Wall clock in ns since the epoch (``created`` is in 100-ns ticks).
    """

    def __init__(
        self,
        log: EventLog,
        records: Iterable[tuple[int, bytes]] = (),
        *,
        seed: bool = True,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.events: list[StoredEvent] = []
        self.positions: list[int] = []
        self.cond = threading.Condition(threading.Lock())
        self.closed = False
        self.waiting = 0
        """How many live subscriptions are waiting for new events."""
        self._streams: dict[str, StreamState] = {}
        self._log = log
        self._write_lock = threading.Lock()
        self._clock_ns = clock_ns
        self._last_created = 0
        self._load(records)
        if seed and not self.events:
            self._commit(_seed_drafts())

    # -- reading -------------------------------------------------------------------------------

    def stream(self, name: str) -> StreamState | None:
        """The state of ``name``, or None if nothing at all was ever written for it."""
        return self._streams.get(name)

    def now_ticks(self) -> int:
        """The current time in 100-ns ticks since the Unix epoch."""
        return self._clock_ns() // 100

    def first_visible(self, state: StreamState) -> int:
        """The lowest revision stream reads may return (``$tb``, ``$maxCount``, ``$maxAge``)."""
        last = state.last_revision
        low = 0
        if is_metastream(state.name):
            low = max(last, 0)
        meta = state.meta
        if meta is not None:
            if meta.tb is not None:
                low = max(low, meta.tb)
            if meta.max_count is not None:
                low = max(low, last - meta.max_count + 1)
            if meta.max_age is not None and low <= last:
                cutoff = self.now_ticks() - meta.max_age * _TICKS_PER_SECOND
                low = bisect_left(state.events, cutoff, lo=low, key=_created_of)
        return low

    def wait(self, ready: Callable[[], bool], ended: Callable[[], bool]) -> bool:
        """Block until ``ready()`` (True), or ``ended()`` or the store closes (False).

        Both are evaluated under ``cond``; whoever changes what they look at must
        ``notify_all`` it (writers do, and so must whatever ends a call).
        """
        with self.cond:
            self.waiting += 1
            try:
                while True:
                    if ended() or self.closed:
                        return False
                    if ready():
                        return True
                    # The timeout is only a safety net; writers and call ends notify.
                    self.cond.wait(timeout=5.0)
            finally:
                self.waiting -= 1

    def wake(self) -> None:
        """Wake every waiting subscription so it re-checks its condition."""
        with self.cond:
            self.cond.notify_all()

    def is_deleted_for_reads(self, name: str) -> bool:
        """Tombstoned, or (for ``$$S``) its stream ``S`` is tombstoned."""
        state = self._streams.get(name)
        if state is not None and state.tombstone is not None:
            return True
        if is_metastream(name):
            base = self._streams.get(name[2:])
            return base is not None and base.tombstone is not None
        return False

    # -- writing -------------------------------------------------------------------------------

    def append(self, stream: str, expected: int, events: Sequence[ProposedEvent]) -> WriteResult:
        """Append events to ``stream`` if it is at the ``expected`` revision.

        Raises:
            WrongExpectedVersion: The stream is elsewhere (after idempotency checks).
            StreamDeleted: The stream is tombstoned, or soft-deleted with ``STREAM_EXISTS``.
            InvalidStreamName: ``stream`` is empty or ``$$``.
        """
        validate_stream_name(stream)
        with self._write_lock:
            state = self._streams.get(stream)
            earlier = _check_expected(state, expected, [e.event_id for e in events])
            last = state.last_revision if state is not None else -1
            if earlier is not None:
                return WriteResult(earlier, last)
            if not events:
                return WriteResult(None, last)
            drafts: list[_Draft] = []
            if state is not None and state.soft_deleted:
                # Undelete: the stream continues at last + 1, and only new events show.
                drafts.append(_metadata_draft(self, stream, {"$tb": last + 1}))
            last_user_draft = len(drafts) + len(events) - 1
            for i, event in enumerate(events):
                drafts.append(
                    _Draft(
                        stream,
                        last + 1 + i,
                        event.event_id,
                        event.type,
                        event.is_json,
                        event.custom_metadata,
                        event.data,
                    )
                )
            drafts.extend(self._undelete_via_metadata(stream, events, last + len(events)))
            stored = self._commit(drafts)
            return WriteResult(stored[last_user_draft].position, last + len(events))

    def delete(self, stream: str, expected: int) -> int:
        """Soft-delete: write ``{"$tb": 2^63-1}`` as the stream's metadata; return its position."""
        validate_stream_name(stream)
        with self._write_lock:
            state = self._streams.get(stream)
            if state is not None and state.tombstone is not None:
                raise StreamDeleted
            if state is None or (state.last_revision < 0 and state.meta is None):
                raise WrongExpectedVersion(-1)
            _check_expected(state, expected, ())
            draft = _metadata_draft(self, stream, {"$tb": MAX_REVISION})
            return self._commit([draft])[-1].position

    def tombstone(self, stream: str, expected: int) -> int:
        """Hard-delete: write a ``$streamDeleted`` event at revision 2^63-1; return its position."""
        validate_stream_name(stream)
        with self._write_lock:
            state = self._streams.get(stream)
            if state is None or (state.last_revision < 0 and state.meta is None):
                if expected not in (ANY, NO_STREAM):
                    raise WrongExpectedVersion(-1)
            else:
                _check_expected(state, expected, ())
            draft = _Draft(
                stream, MAX_REVISION, str(uuid.uuid4()), TOMBSTONE_EVENT_TYPE, False, b"", b""
            )
            return self._commit([draft])[-1].position

    def close(self) -> None:
        """Stop live subscriptions and release the log."""
        with self._write_lock:
            with self.cond:
                self.closed = True
                self.cond.notify_all()
            self._log.close()

    # -- internals -----------------------------------------------------------------------------

    def _undelete_via_metadata(
        self, stream: str, events: Sequence[ProposedEvent], last_meta_revision: int
    ) -> list[_Draft]:
        # New metadata for a soft-deleted S undeletes it: the real server follows the user's
        # $metadata event with a copy whose $tb points just past S's last event.
        if not is_metastream(stream):
            return []
        base = self._streams.get(stream[2:])
        if base is None or not base.soft_deleted:
            return []
        meta = StreamMeta.parse(events[-1].data)
        if meta.tb == MAX_REVISION:
            return []
        raw = dict(meta.raw)
        raw["$tb"] = base.last_revision + 1
        draft = _Draft(
            stream,
            last_meta_revision + 1,
            str(uuid.uuid4()),
            METADATA_EVENT_TYPE,
            True,
            b"",
            json.dumps(raw, separators=(",", ":")).encode(),
        )
        return [draft]

    def _next_created(self) -> int:
        # Kept non-decreasing so $maxAge can binary-search a stream by time.
        self._last_created = max(self._last_created, self.now_ticks())
        return self._last_created

    def _commit(self, drafts: Sequence[_Draft]) -> list[StoredEvent]:
        created = self._next_created()
        offset = self._log.end + FRAME_HEADER_SIZE
        records: list[bytes] = []
        stored: list[StoredEvent] = []
        for d in drafts:
            record = encode_recorded_event(
                event_id=d.event_id,
                stream_name=d.stream.encode(),
                revision=d.revision,
                position=offset,
                event_type=d.type,
                is_json=d.is_json,
                created=created,
                custom_metadata=d.custom_metadata,
                data=d.data,
            )
            records.append(record)
            stored.append(
                StoredEvent(
                    position=offset,
                    stream=d.stream,
                    revision=d.revision,
                    event_id=d.event_id,
                    type=d.type,
                    created=created,
                    record=record,
                    data=d.data,
                )
            )
            offset += RECORD_HEADER_SIZE + len(record)
        self._log.append(records)
        self._publish(stored, [d.data for d in drafts])
        return stored

    def _publish(self, stored: list[StoredEvent], data: list[bytes]) -> None:
        with self.cond:
            for event, payload in zip(stored, data, strict=True):
                self._index(event, payload)
            # Positions first: a lock-free reader may then see more positions than events
            # (bisect past the end and wait), never an event whose position it cannot find.
            self.positions.extend([e.position for e in stored])
            self.events.extend(stored)
            self.cond.notify_all()

    def _index(self, event: StoredEvent, data: bytes) -> None:
        state = self._streams.get(event.stream)
        if state is None:
            state = self._streams[event.stream] = StreamState(event.stream)
        event.stream = state.name  # one shared str per stream name
        if event.revision == MAX_REVISION:
            state.tombstone = event
            return
        if event.revision != len(state.events):
            raise LogCorruptError(
                f"stream {event.stream!r}: revision {event.revision} follows "
                f"{len(state.events) - 1} at position {event.position}. {SALVAGE_HINT}"
            )
        state.events.append(event)
        state.ids[event.event_id] = event.revision
        if is_metastream(event.stream):
            base_name = event.stream[2:]
            base = self._streams.get(base_name)
            if base is None:
                base = self._streams[base_name] = StreamState(base_name)
            base.meta = StreamMeta.parse(data)

    def _load(self, records: Iterable[tuple[int, bytes]]) -> None:
        stored: list[StoredEvent] = []
        data: list[bytes] = []
        for position, record in records:
            if len(stored) >= 4096:  # publish in slices to bound the transient copies of data
                self._publish(stored, data)
                stored, data = [], []
            msg = streams_pb2.ReadResp.ReadEvent.RecordedEvent.FromString(record)
            if msg.commit_position != position:
                raise LogCorruptError(
                    f"record at offset {position} claims position {msg.commit_position}. "
                    + SALVAGE_HINT
                )
            created = int(msg.metadata["created"])
            stored.append(
                StoredEvent(
                    position=position,
                    stream=msg.stream_identifier.stream_name.decode(),
                    revision=msg.stream_revision,
                    event_id=msg.id.string,
                    type=msg.metadata["type"],
                    created=created,
                    record=record,
                    data=msg.data,
                )
            )
            data.append(msg.data)
            self._last_created = max(self._last_created, created)
        if stored:
            self._publish(stored, data)


def _check_expected(state: StreamState | None, expected: int, ids: Sequence[str]) -> int | None:
    """Apply the expected-revision table; None means "write", an int is an idempotent retry.

    The int is the position of the earlier write of the request's last event.
    """
    if state is not None and state.tombstone is not None:
        raise StreamDeleted
    last = state.last_revision if state is not None else -1
    soft_deleted = state is not None and state.soft_deleted
    if soft_deleted and expected == NO_STREAM:
        return None
    if expected == STREAM_EXISTS:
        if soft_deleted:
            raise StreamDeleted
        if last < 0 and (state is None or state.meta is None):
            raise WrongExpectedVersion(last)
        expected = ANY
    if expected == ANY:
        if not ids or state is None or ids[0] not in state.ids:
            return None
        revision = -1
        for event_id in ids:
            known = state.ids.get(event_id)
            if known is None:
                raise WrongExpectedVersion(last)  # a retry that does not match: corrupted
            revision = known
        return state.events[revision].position
    if expected < last:
        assert state is not None
        if not ids:
            raise WrongExpectedVersion(last)
        for offset, event_id in enumerate(ids, start=1):
            if state.ids.get(event_id) != expected + offset:
                raise WrongExpectedVersion(last)
        return state.events[expected + len(ids)].position
    if expected > last:
        raise WrongExpectedVersion(last)
    return None


def _metadata_draft(store: EventStore, stream: str, metadata: dict[str, Any]) -> _Draft:
    meta_stream = "$$" + stream
    meta_state = store.stream(meta_stream)
    revision = (meta_state.last_revision if meta_state is not None else -1) + 1
    data = json.dumps(metadata, separators=(",", ":")).encode()
    return _Draft(meta_stream, revision, str(uuid.uuid4()), METADATA_EVENT_TYPE, True, b"", data)


def _seed_drafts() -> list[_Draft]:
    # A real node's $all never starts with user events: it opens with its own bookkeeping.
    acl_all = {"$r": "$all", "$w": "$all", "$d": "$all", "$mr": "$all", "$mw": "$all"}
    acl_admins = {k: "$admins" for k in acl_all}
    seeds = [
        ("$epoch-information", "$epoch-information", {"EpochNumber": 0, "EpochPosition": 0}),
        ("$$$scavenges", METADATA_EVENT_TYPE, {"$maxAge": 2592000}),
        ("$settings", "$settings", {"$userStreamAcl": acl_all, "$systemStreamAcl": acl_admins}),
        ("$$$stats-devserver", METADATA_EVENT_TYPE, {"$maxAge": 86400}),
    ]
    return [
        _Draft(
            stream,
            0,
            str(uuid.uuid4()),
            event_type,
            True,
            b"",
            json.dumps(payload, separators=(",", ":")).encode(),
        )
        for stream, event_type, payload in seeds
    ]
