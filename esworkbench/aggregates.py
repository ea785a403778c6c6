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
back; ``EventStoreRepository`` is the EventStoreDB implementation.
"""

from __future__ import annotations

import abc
import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Protocol, Self, TypeVar

from esworkbench.errors import HistoryError
from esworkbench.events import EventRegistry

__all__ = ["AggregateRoot", "DomainEvent", "Repository"]

CORRELATION_KEY = "$correlationId"
CAUSATION_KEY = "$causationId"


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
        value = self.metadata.get(CORRELATION_KEY)
        return None if value is None else str(value)

    @property
    def causation_id(self) -> str | None:
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
        return stream_name[len(prefix):] if stream_name.startswith(prefix) else stream_name

    @property
    def stream_name(self) -> str:
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
                aggregate_id=self.id, expected_version=self.version + 1,
                event_version=event.aggregate_version,
            )
        if event.aggregate_version != self.version + 1:
            raise HistoryError(
                f"event {event.event_id} ({event.event_type}) of aggregate {self.id!r} has "
                f"version {event.aggregate_version}, expected {self.version + 1}",
                aggregate_id=self.id, expected_version=self.version + 1,
                event_version=event.aggregate_version,
            )

    @abc.abstractmethod
    def apply(self, event: DomainEvent) -> None:
        """Change state for one event. Called by add_event and load_from_history."""

    def state(self) -> dict[str, Any]:
        """The public state (attributes without a leading '_', id and version excluded)."""
        return {k: v for k, v in vars(self).items()
                if not k.startswith("_") and k not in ("id", "version")}


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
