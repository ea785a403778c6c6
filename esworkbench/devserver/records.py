"""What the store keeps: stored events, per-stream state, metadata, and the write outcomes.

``StoredEvent`` carries the ``ReadResp`` it is sent as, serialized once when it is written or
loaded, so reads never touch protobuf objects.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from esworkbench.devserver.wire import read_resp_event

MAX_REVISION = 2**63 - 1
"""``$tb`` of a soft-deleted stream, and the revision of a tombstone."""

# Expected-revision codes, as the real server numbers them (they appear in Delete errors).
ANY = -2
NO_STREAM = -1
STREAM_EXISTS = -4

METADATA_EVENT_TYPE = "$metadata"
TOMBSTONE_EVENT_TYPE = "$streamDeleted"
LINK_EVENT_TYPE = "$>"


# The three exceptions below are signals from the store to the servicers, which turn them into
# the exact gRPC replies of a real server; they never reach users, so they stay outside
# esworkbench's error tree.


class WrongExpectedVersion(Exception):
    """The stream is not at the expected revision; ``current`` is -1 for "no stream"."""

    def __init__(self, current: int) -> None:
        super().__init__(current)
        self.current = current


class StreamDeleted(Exception):
    """The stream is tombstoned (or soft-deleted where that forbids the operation)."""


class InvalidStreamName(ValueError):
    """An empty name, or ``$$`` alone."""


@dataclass(frozen=True, slots=True)
class ProposedEvent:
    """An event as a client proposes it."""

    event_id: str
    type: str
    is_json: bool
    custom_metadata: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of a successful write: ``position`` is None when nothing was written."""

    position: int | None
    revision: int


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """The honoured keys of a stream's latest metadata event, plus the whole JSON object."""

    max_count: int | None
    max_age: int | None
    tb: int | None
    raw: dict[str, Any]

    @classmethod
    def parse(cls, data: bytes) -> StreamMeta:
        """Parse metadata JSON; anything that is not a JSON object counts as empty metadata."""
        try:
            raw = json.loads(data)
        except ValueError:
            raw = {}
        if not isinstance(raw, dict):
            raw = {}
        return cls(
            max_count=_int_key(raw, "$maxCount", 1),
            max_age=_int_key(raw, "$maxAge", 1),
            tb=_int_key(raw, "$tb", 0),
            raw=raw,
        )


def _int_key(raw: dict[str, Any], key: str, minimum: int) -> int | None:
    value = raw.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    return None


class StoredEvent:
    """One committed event; ``wire`` is the ``ReadResp`` it is sent as, serialized once."""

    __slots__ = (
        "created",
        "event_id",
        "hidden",
        "link",
        "position",
        "rec_end",
        "rec_start",
        "revision",
        "stream",
        "type",
        "wire",
    )

    def __init__(
        self,
        *,
        position: int,
        stream: str,
        revision: int,
        event_id: str,
        type: str,
        created: int,
        record: bytes,
        data: bytes,
    ) -> None:
        self.position = position
        self.stream = stream
        self.revision = revision
        self.event_id = event_id
        self.type = sys.intern(type)
        self.created = created
        self.wire, self.rec_start = read_resp_event(record, position)
        self.rec_end = self.rec_start + len(record)
        self.hidden = _hidden_from_all(stream)
        self.link = _parse_link(data) if type == LINK_EVENT_TYPE else None

    @property
    def record(self) -> bytes:
        """The serialized RecordedEvent alone (what links embed)."""
        return self.wire[self.rec_start : self.rec_end]


def _hidden_from_all(stream: str) -> bool:
    # The real server never shows these in $all, not even without a filter.
    return stream == "$epoch-information" or (
        stream.startswith("$persistentsubscription-$all::")
        and stream.endswith(("-checkpoint", "-parked"))
    )


def _parse_link(data: bytes) -> tuple[str, int]:
    revision, sep, stream = data.decode("utf-8", "replace").partition("@")
    try:
        return (stream, int(revision)) if sep else ("", -1)
    except ValueError:
        return ("", -1)


class StreamState:
    """Everything known about one stream name."""

    __slots__ = ("events", "ids", "meta", "name", "tombstone")

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[StoredEvent] = []
        self.ids: dict[str, int] = {}
        self.tombstone: StoredEvent | None = None
        self.meta: StreamMeta | None = None

    @property
    def last_revision(self) -> int:
        """Revision of the last event, or -1 if none was ever written."""
        return len(self.events) - 1

    @property
    def soft_deleted(self) -> bool:
        """Whether the latest metadata marks the stream deleted (``$tb`` == 2^63-1)."""
        return self.meta is not None and self.meta.tb == MAX_REVISION


def is_metastream(name: str) -> bool:
    """``$$S`` is the metadata stream of ``S``."""
    return name.startswith("$$") and len(name) > 2


def validate_stream_name(name: str) -> None:
    """Reject the names no real server accepts."""
    if not name or name == "$$":
        raise InvalidStreamName(f"invalid stream name {name!r}")
