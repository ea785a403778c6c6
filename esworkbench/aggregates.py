"""The production aggregate contract, and the repository that stores aggregates in EventStoreDB.

The workbench replays history through the very classes production uses, so the contract is
small and explicit:

- a ``DomainEvent`` has an event id, a stored event type, the aggregate id, the aggregate
  version it produced (equal to its 0-based stream revision), a typed payload (``data``) and
  metadata (``$correlationId`` / ``$causationId`` included);
- an ``AggregateRoot`` has an id and a version (-1 before its first event, then the version of
  the last event applied), records new events with ``add_event`` (next version, recorded as
  uncommitted, applied), rebuilds itself with ``load_from_history`` (each event must belong to
  this aggregate and be the next version) and implements ``apply`` per event type;
- business rules refuse commands with named ``DomainRuleError`` subclasses.

A ``Repository`` saves an aggregate's uncommitted events with the expected version and loads it
back; ``EventStoreRepository`` is the EventStoreDB implementation. ``encode_event`` and
``decode_event`` are its wire format (JSON payload; JSON metadata with correlation, causation,
``schemaVersion`` and ``occurredAt``), shared with the sample generator so that generated history
is byte for byte what production writes.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, Protocol, Self, TypeVar

from esworkbench.errors import (
    AggregateError,
    AggregateNotFoundError,
    ConcurrencyError,
    HistoryError,
    PayloadDecodeError,
)
from esworkbench.events import OCCURRED_AT_KEY, SCHEMA_VERSION_KEY, EventRegistry

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "AggregateRoot",
    "DomainEvent",
    "EncodedEvent",
    "EventStoreRepository",
    "Repository",
    "decode_event",
    "encode_event",
    "event_metadata",
]

CORRELATION_KEY = "$correlationId"
CAUSATION_KEY = "$causationId"
# json.dumps(obj, separators=(",", ":")) without building an encoder per call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


@dataclasses.dataclass(frozen=True, slots=True)
class DomainEvent:
    """One event of one aggregate, with its payload already decoded.

    Example:
        >>> e = DomainEvent("Opened", "42", 0, {"name": "Ada"}, metadata={"$correlationId": "c"})
        >>> (e.aggregate_version, e.correlation_id)
        (0, 'c')
    """

    event_type: str
    aggregate_id: str
    aggregate_version: int
    data: Any
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    event_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def correlation_id(self) -> str | None:
        """The ``$correlationId`` of the metadata, if any."""
        value = self.metadata.get(CORRELATION_KEY)
        return None if value is None else str(value)

    @property
    def causation_id(self) -> str | None:
        """The ``$causationId`` of the metadata, if any."""
        value = self.metadata.get(CAUSATION_KEY)
        return None if value is None else str(value)


class AggregateRoot(abc.ABC):
    """Base of production aggregates: versions, uncommitted events, replay.

    Subclasses set ``stream_prefix`` (streams are named ``<prefix>-<id>``) and ``registry`` (the
    payload classes of their events), and implement ``apply``.
    """

    stream_prefix: ClassVar[str]
    registry: ClassVar[EventRegistry]

    def __init__(self, aggregate_id: str) -> None:
        self.id = aggregate_id
        self.version = -1
        self._uncommitted: list[DomainEvent] = []

    @classmethod
    def stream_name_for(cls, aggregate_id: str) -> str:
        """The EventStoreDB stream that holds this aggregate's events."""
        return f"{cls.stream_prefix}-{aggregate_id}"

    @classmethod
    def aggregate_id_of(cls, stream_name: str) -> str:
        """The aggregate id a stream name carries (inverse of ``stream_name_for``)."""
        prefix = f"{cls.stream_prefix}-"
        return stream_name[len(prefix) :] if stream_name.startswith(prefix) else stream_name

    @property
    def stream_name(self) -> str:
        """The stream this aggregate lives in."""
        return self.stream_name_for(self.id)

    @property
    def uncommitted_events(self) -> list[DomainEvent]:
        """Events recorded by commands and not yet saved, oldest first."""
        return list(self._uncommitted)

    def mark_committed(self) -> None:
        """Forget the uncommitted events (the repository calls this after a save)."""
        self._uncommitted.clear()

    def add_event(self, data: Any, *, metadata: Mapping[str, Any] | None = None) -> DomainEvent:
        """Record a new event carrying payload `data`: next version, uncommitted, applied."""
        event = DomainEvent(
            event_type=self.registry.type_name_of(data),
            aggregate_id=self.id,
            aggregate_version=self.version + 1,
            data=data,
            metadata=dict(metadata or {}),
        )
        self.apply(event)
        self.version = event.aggregate_version
        self._uncommitted.append(event)
        return event

    def load_from_history(self, events: Iterable[DomainEvent]) -> Self:
        """Apply stored events in order; each must be this aggregate's next version."""
        for event in events:
            self.check_next(event)
            self.apply(event)
            self.version = event.aggregate_version
        return self

    def check_next(self, event: DomainEvent) -> None:
        """Raise HistoryError unless `event` belongs here and is the next version."""
        if event.aggregate_id != self.id:
            raise HistoryError(
                f"event {event.event_id} ({event.event_type}) belongs to aggregate "
                f"{event.aggregate_id!r}, not {self.id!r}",
                aggregate_id=self.id,
                expected_version=self.version + 1,
                event_version=event.aggregate_version,
            )
        if event.aggregate_version != self.version + 1:
            raise HistoryError(
                f"event {event.event_id} ({event.event_type}) of aggregate {self.id!r} has "
                f"version {event.aggregate_version}, expected {self.version + 1}",
                aggregate_id=self.id,
                expected_version=self.version + 1,
                event_version=event.aggregate_version,
            )

    @abc.abstractmethod
    def apply(self, event: DomainEvent) -> None:
        """Change state for one event. Called by add_event and load_from_history."""

    def state(self) -> dict[str, Any]:
        """The public state (attributes without a leading '_', id and version excluded)."""
        return {
            k: v
            for k, v in vars(self).items()
            if not k.startswith("_") and k not in ("id", "version")
        }


A = TypeVar("A", bound=AggregateRoot)


class Repository(Protocol[A]):
    """Stores aggregates as event streams, with optimistic concurrency."""

    def save(self, aggregate: A) -> int | None:
        """Append the uncommitted events, expecting the stream at the version loaded.

        Returns the commit position of the last event written (None if nothing to write);
        raises ConcurrencyError if another writer moved the stream first.
        """
        ...

    def load(self, aggregate_id: str) -> A:
        """Rebuild the aggregate from its stream; raises KeyError-like LookupError if absent."""
        ...


# --- the wire format ---------------------------------------------------------------------------


def event_metadata(
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    occurred_at: datetime | str | None = None,
) -> dict[str, Any]:
    """Metadata for a command's events, keys in the order the repository writes them.

    `occurred_at` is the business time: an aware datetime, or an ISO 8601 UTC string as is.

    Example:
        >>> event_metadata(correlation_id="c", causation_id="c",
        ...                occurred_at=datetime(2024, 1, 2, 9, 30, tzinfo=UTC))
        {'$correlationId': 'c', '$causationId': 'c', 'occurredAt': '2024-01-02T09:30:00.000000Z'}
    """
    out: dict[str, Any] = {}
    if correlation_id is not None:
        out[CORRELATION_KEY] = correlation_id
    if causation_id is not None:
        out[CAUSATION_KEY] = causation_id
    if isinstance(occurred_at, datetime):
        if occurred_at.tzinfo is None:
            raise ValueError(
                f"occurred_at {occurred_at!r} has no time zone; pass an aware "
                "datetime such as datetime(..., tzinfo=UTC)"
            )
        occurred_at = occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if occurred_at is not None:
        out[OCCURRED_AT_KEY] = occurred_at
    return out


class EncodedEvent(NamedTuple):
    """One event as stored: id, type name, payload bytes, JSON metadata bytes, content type."""

    event_id: str
    event_type: str
    data: bytes
    metadata: bytes
    content_type: str = "application/json"


def encode_event(event: DomainEvent, registry: EventRegistry) -> EncodedEvent:
    """A DomainEvent as the repository writes it.

    Payload JSON, and metadata JSON with the payload's ``schemaVersion`` added (the event's own
    metadata keys first, in order).

    Example:
        >>> from esworkbench.examples.bank import BalanceDeposited, registry
        >>> from decimal import Decimal
        >>> e = DomainEvent("BalanceDeposited", "1", 3,
        ...                 BalanceDeposited("1", Decimal("5.00"), Decimal("7.50")),
        ...                 metadata={"$correlationId": "c"}, event_id="e1")
        >>> stored = encode_event(e, registry)
        >>> stored.event_type, stored.data
        ('BalanceDeposited', b'{"userId":"1","amount":"5.00","newBalance":"7.50"}')
        >>> stored.metadata
        b'{"$correlationId":"c","schemaVersion":1}'
    """
    event_type, data, version = registry.encode(event.data)
    metadata = dict(event.metadata)
    metadata[SCHEMA_VERSION_KEY] = version
    return EncodedEvent(event.event_id, event_type, data, _COMPACT_JSON.encode(metadata).encode())


def decode_event(
    registry: EventRegistry,
    *,
    aggregate_id: str,
    stream_revision: int,
    event_id: str,
    event_type: str,
    data: bytes | str,
    metadata: bytes | str,
) -> DomainEvent:
    """A stored event back as a DomainEvent.

    Metadata parsed, payload upcast from its ``schemaVersion`` (absent = 1) and decoded by the
    registry.

    Raises UnknownEventTypeError or PayloadDecodeError (both EventError) for what the registry
    cannot read.

    Example:
        >>> from esworkbench.examples.bank import registry
        >>> e = decode_event(registry, aggregate_id="1", stream_revision=0, event_id="e0",
        ...                  event_type="UserCreated",
        ...                  data=b'{"userId":"1","fullName":"Ada","email":"ada@example.com"}',
        ...                  metadata=b'{"$correlationId":"c"}')
        >>> e.data.name, e.data.overdraft_limit, e.correlation_id
        ('Ada', Decimal('100.00'), 'c')
    """
    try:
        meta = json.loads(metadata) if metadata else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise PayloadDecodeError(event_type, f"metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise PayloadDecodeError(event_type, "metadata is not a JSON object")
    version = meta.get(SCHEMA_VERSION_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PayloadDecodeError(
            event_type, f"metadata {SCHEMA_VERSION_KEY} must be an integer >= 1, got {version!r}"
        )
    payload = registry.decode(event_type, data, version=version)
    return DomainEvent(
        event_type, aggregate_id, stream_revision, payload, metadata=meta, event_id=event_id
    )


# --- EventStoreDB ------------------------------------------------------------------------------

_LAST_EVENT = re.compile(r"last event is (\d+)")


class EventStoreRepository(Generic[A]):
    """Saves and loads aggregates of one class in EventStoreDB, with optimistic concurrency.

    Esdbclient is imported when the repository is built, so ``import esworkbench`` stays light.
    Pass a URI (the repository opens and closes its own client) or an esdbclient client.

    Example:
        >>> from esworkbench.examples.bank import User
        >>> repo = EventStoreRepository(User, "esdb://127.0.0.1:2113?tls=false")
        >>> repo.stream_name("42")
        'user-42'
        >>> repo.close()

    With a server (see tests/test_repository.py)::

        ada = User.create("42", name="Ada", email="ada@example.com")
        repo.save(ada)                       # appends expecting no stream
        ada = repo.load("42"); ada.deposit("10.00"); repo.save(ada)
    """

    def __init__(
        self, aggregate_class: type[A], uri: str | None = None, *, client: Any = None
    ) -> None:
        if (uri is None) == (client is None):
            raise ValueError("give exactly one of uri (an esdb:// connection string) or client")
        from esdbclient import EventStoreDBClient

        self.aggregate_class = aggregate_class
        self._owns_client = client is None
        self._client = EventStoreDBClient(uri) if client is None else client

    def stream_name(self, aggregate_id: str) -> str:
        """The stream holding aggregate `aggregate_id`."""
        return self.aggregate_class.stream_name_for(aggregate_id)

    def save(self, aggregate: A) -> int | None:
        """Append the aggregate's uncommitted events, then mark them committed.

        The append expects the stream at the version the aggregate was loaded at.

        Returns the commit position of the last event written (None if there was nothing to
        write). Raises ConcurrencyError if another writer moved the stream first; the
        aggregate keeps its uncommitted events then.
        """
        events = aggregate.uncommitted_events
        if not events:
            return None
        loaded_at = aggregate.version - len(events)
        position = self.append_events(aggregate.stream_name, events, expected_version=loaded_at)
        aggregate.mark_committed()
        return position

    def append_events(
        self, stream_name: str, events: Sequence[DomainEvent], *, expected_version: int
    ) -> int:
        """Append already-built events (ids preserved) in one call: all or nothing.

        The append expects the stream at `expected_version` (-1: no stream).

        Rewriting events with the same ids at the same place is a no-op that succeeds (the
        server's idempotent append), so a retried or repeated write never duplicates.
        """
        registry = self.aggregate_class.registry
        return self.append_encoded(
            stream_name,
            [encode_event(e, registry) for e in events],
            expected_version=expected_version,
        )

    def append_encoded(
        self, stream_name: str, events: Sequence[EncodedEvent], *, expected_version: int
    ) -> int:
        """Append events exactly as given (bytes, ids and content types untouched).

        The raw write path beneath `append_events`, for writers that bypass the aggregate.

        Returns the commit position of the last event; raises ConcurrencyError when the stream
        is not at `expected_version` (-1: no stream).
        """
        from esdbclient import NewEvent, StreamState
        from esdbclient.exceptions import EventStoreDBClientException, WrongCurrentVersion

        new_events = [
            NewEvent(
                type=e.event_type,
                data=e.data,
                metadata=e.metadata,
                id=uuid.UUID(e.event_id),
                content_type="application/json"
                if e.content_type == "application/json"
                else "application/octet-stream",
            )
            for e in events
        ]
        current = StreamState.NO_STREAM if expected_version < 0 else expected_version
        try:
            # One event goes by the unary Append call, cheaper than a BatchAppend stream.
            position: int = self._client.append_to_stream(
                stream_name,
                current_version=current,
                events=new_events[0] if len(new_events) == 1 else new_events,
            )
        except WrongCurrentVersion as e:
            raise ConcurrencyError(
                stream_name,
                None if expected_version < 0 else expected_version,
                self._actual_version(stream_name, e),
            ) from e
        except EventStoreDBClientException as e:
            raise AggregateError(
                f"could not append {len(new_events)} event(s) to "
                f"{stream_name!r}: {type(e).__name__}: {e}"
            ) from e
        return position

    def load(self, aggregate_id: str) -> A:
        """Rebuild the aggregate from its stream (payloads upcast and decoded by its registry).

        Raises AggregateNotFoundError (a LookupError) if the stream does not exist.
        """
        from esdbclient.exceptions import EventStoreDBClientException, NotFound, StreamIsDeleted

        stream_name = self.stream_name(aggregate_id)
        try:
            recorded = self._client.get_stream(stream_name)
        except (NotFound, StreamIsDeleted) as e:
            raise AggregateNotFoundError(stream_name) from e
        except EventStoreDBClientException as e:
            raise AggregateError(f"could not read {stream_name!r}: {type(e).__name__}: {e}") from e
        registry = self.aggregate_class.registry
        aggregate = self.aggregate_class(aggregate_id)
        return aggregate.load_from_history(
            decode_event(
                registry,
                aggregate_id=aggregate_id,
                stream_revision=r.stream_position,
                event_id=str(r.id),
                event_type=r.type,
                data=r.data,
                metadata=r.metadata,
            )
            for r in recorded
        )

    def _actual_version(self, stream_name: str, error: Exception) -> int | None:
        # The server names the stream's last revision in its message; ask if it did not.
        if "does not exist" in str(error):
            return None
        found = _LAST_EVENT.search(str(error))
        if found:
            return int(found.group(1))
        current = self._client.get_current_version(stream_name)
        return current if isinstance(current, int) else None

    def close(self) -> None:
        """Close the client if the repository opened it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
