"""The production aggregate contract: versions, uncommitted events, replay, and the wire format."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from esworkbench.aggregates import (
    AggregateRoot,
    DomainEvent,
    decode_event,
    encode_event,
    event_metadata,
)
from esworkbench.errors import HistoryError, PayloadDecodeError, UnknownEventTypeError
from esworkbench.events import EventRegistry

registry = EventRegistry()


@registry.register("Incremented", version=2)
@dataclasses.dataclass(frozen=True)
class Incremented:
    by: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Incremented:
        return cls(int(data["by"]))

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by}


@registry.upcaster("Incremented", from_version=1)
def _v1(data: dict[str, Any]) -> dict[str, Any]:
    return {"by": data["step"]}  # v1 called it step


class Counter(AggregateRoot):
    stream_prefix = "counter"
    registry = registry

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.total = 0
        self._applied: list[str] = []

    def increment(self, by: int, *, metadata: Mapping[str, Any] | None = None) -> DomainEvent:
        return self.add_event(Incremented(by), metadata=metadata)

    def apply(self, event: DomainEvent) -> None:
        match event.data:
            case Incremented(by=by):
                self.total += by
        self._applied.append(event.event_id)


def incremented(aggregate_id: str, version: int, by: int = 1) -> DomainEvent:
    return DomainEvent("Incremented", aggregate_id, version, Incremented(by))


# --- versions and uncommitted events ------------------------------------------------------------


def test_a_new_aggregate_is_at_version_minus_one_with_nothing_to_save() -> None:
    counter = Counter("c1")

    assert counter.version == -1
    assert counter.uncommitted_events == []
    assert counter.stream_name == "counter-c1"
    assert Counter.aggregate_id_of("counter-c1") == "c1"


def test_add_event_applies_records_and_numbers_events_from_zero() -> None:
    counter = Counter("c1")

    first = counter.increment(2, metadata={"$correlationId": "k"})
    second = counter.increment(3)

    assert (first.aggregate_version, second.aggregate_version) == (0, 1)
    assert (first.event_type, first.aggregate_id, first.correlation_id) == (
        "Incremented",
        "c1",
        "k",
    )
    assert counter.version == 1 and counter.total == 5
    assert counter.uncommitted_events == [first, second]
    assert first.event_id != second.event_id

    counter.mark_committed()

    assert counter.uncommitted_events == [] and counter.version == 1


def test_state_is_the_public_attributes_only() -> None:
    counter = Counter("c1")
    counter.increment(4)

    assert counter.state() == {"total": 4}


# --- replay -------------------------------------------------------------------------------------


def test_load_from_history_applies_events_in_order_and_records_nothing_new() -> None:
    counter = Counter("c1").load_from_history([incremented("c1", 0, 2), incremented("c1", 1, 5)])

    assert (counter.version, counter.total) == (1, 7)
    assert counter.uncommitted_events == []


def test_history_of_another_aggregate_is_refused_before_it_is_applied() -> None:
    counter = Counter("c1").load_from_history([incremented("c1", 0)])

    with pytest.raises(HistoryError, match="belongs to aggregate 'c2'") as caught:
        counter.load_from_history([incremented("c2", 1)])

    assert (
        caught.value.aggregate_id,
        caught.value.expected_version,
        caught.value.event_version,
    ) == ("c1", 1, 1)
    assert (counter.version, counter.total) == (0, 1)


@pytest.mark.parametrize("version", [0, 2, 7])
def test_history_out_of_order_is_refused_naming_the_expected_version(version: int) -> None:
    counter = Counter("c1").load_from_history([incremented("c1", 0)])

    with pytest.raises(HistoryError, match=f"has version {version}, expected 1") as caught:
        counter.load_from_history([incremented("c1", version)])

    assert caught.value.event_version == version
    assert counter.total == 1


# --- the wire format ----------------------------------------------------------------------------


def test_event_metadata_holds_correlation_causation_and_business_time_in_order() -> None:
    meta = event_metadata(
        correlation_id="k", causation_id="c", occurred_at=datetime(2024, 3, 1, 8, 0, 0, 5, UTC)
    )

    assert list(meta.items()) == [
        ("$correlationId", "k"),
        ("$causationId", "c"),
        ("occurredAt", "2024-03-01T08:00:00.000005Z"),
    ]
    assert event_metadata() == {}
    with pytest.raises(ValueError, match="no time zone"):
        event_metadata(occurred_at=datetime(2024, 3, 1))


def test_an_encoded_event_decodes_back_to_the_same_event() -> None:
    event = DomainEvent(
        "Incremented",
        "c1",
        4,
        Incremented(3),
        metadata=event_metadata(correlation_id="k", causation_id="k"),
        event_id="3f1d8c1e-0000-4000-8000-000000000001",
    )

    stored = encode_event(event, registry)
    back = decode_event(
        registry,
        aggregate_id="c1",
        stream_revision=4,
        event_id=stored.event_id,
        event_type=stored.event_type,
        data=stored.data,
        metadata=stored.metadata,
    )

    assert stored.data == b'{"by":3}'
    assert json.loads(stored.metadata) == {
        "$correlationId": "k",
        "$causationId": "k",
        "schemaVersion": 2,
    }
    assert stored.content_type == "application/json"
    assert back == dataclasses.replace(event, metadata={**event.metadata, "schemaVersion": 2})


def test_decoding_upcasts_by_the_stored_schema_version_absent_meaning_one() -> None:
    def decode(metadata: bytes) -> DomainEvent:
        return decode_event(
            registry,
            aggregate_id="c1",
            stream_revision=0,
            event_id="e",
            event_type="Incremented",
            data=b'{"step": 9}',
            metadata=metadata,
        )

    assert decode(b"{}").data == Incremented(9)
    assert decode(b"").data == Incremented(9)
    assert decode(b'{"schemaVersion": 1}').data == Incremented(9)


@pytest.mark.parametrize(
    ("event_type", "metadata", "error", "reason"),
    [
        ("Incremented", b"{not json", PayloadDecodeError, "metadata is not valid JSON"),
        ("Incremented", b"[1]", PayloadDecodeError, "not a JSON object"),
        ("Incremented", b'{"schemaVersion": "2"}', PayloadDecodeError, "integer >= 1"),
        ("Incremented", b'{"schemaVersion": 0}', PayloadDecodeError, "integer >= 1"),
        ("Decremented", b"{}", UnknownEventTypeError, "Decremented"),
    ],
)
def test_events_the_registry_cannot_read_raise_event_errors(
    event_type: str,
    metadata: bytes,
    error: type[Exception],
    reason: str,
) -> None:
    with pytest.raises(error, match=reason):
        decode_event(
            registry,
            aggregate_id="c1",
            stream_revision=0,
            event_id="e",
            event_type=event_type,
            data=b'{"by": 1}',
            metadata=metadata,
        )
