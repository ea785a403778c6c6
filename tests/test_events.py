"""The event envelope: the type registry (names, upcasting, decode errors) and archive lines."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esworkbench.errors import DuplicateEventTypeError, PayloadDecodeError, UnknownEventTypeError
from esworkbench.events import (
    RAW_SCHEMA,
    EventRegistry,
    archive_line,
    category_of,
    created_from_ticks,
    is_system_event_type,
    parse_archive_line,
    ticks_from_created,
)


@dataclasses.dataclass(frozen=True)
class Renamed:
    """v3: {"displayName", "email"}; v2 had {"fullName", "email"}; v1 {"name"} only."""

    display_name: str
    email: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Renamed:
        return cls(data["displayName"], data["email"])

    def to_json(self) -> dict[str, Any]:
        return {"displayName": self.display_name, "email": self.email}


@dataclasses.dataclass(frozen=True)
class Ping:
    n: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ping:
        return cls(int(data["n"]))

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n}


def make_registry() -> EventRegistry:
    registry = EventRegistry()
    registry.add("Renamed", Renamed, version=3)
    registry.add("Ping", Ping)

    @registry.upcaster("Renamed", from_version=1)
    def _v1(data: dict[str, Any]) -> dict[str, Any]:
        return {"fullName": data["name"], "email": "unknown@example.com"}

    @registry.upcaster("Renamed", from_version=2)
    def _v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"displayName": data["fullName"], "email": data["email"]}

    return registry


# --- registry -----------------------------------------------------------------------------------


def test_a_stored_name_decodes_to_its_class_and_encodes_back() -> None:
    registry = make_registry()

    ping = registry.decode("Ping", b'{"n": 3}')

    assert ping == Ping(3)
    assert registry.encode(ping) == ("Ping", b'{"n":3}', 1)
    assert registry.event_types == ["Ping", "Renamed"]
    assert "Ping" in registry and "Pong" not in registry


def test_registering_a_stored_name_twice_is_an_error_naming_both_classes() -> None:
    registry = make_registry()

    with pytest.raises(DuplicateEventTypeError) as caught:
        registry.add("Ping", Renamed)

    assert caught.value.event_type == "Ping"
    assert "Ping" in str(caught.value) and "Renamed" in str(caught.value)
    assert registry.class_for("Ping") is Ping  # the first registration stands


def test_an_unknown_type_is_reported_with_what_is_known() -> None:
    registry = make_registry()

    with pytest.raises(UnknownEventTypeError) as caught:
        registry.decode("CardIssued", b"{}")

    assert caught.value.event_type == "CardIssued"
    assert "Ping, Renamed" in str(caught.value)
    with pytest.raises(UnknownEventTypeError):
        registry.type_name_of(object())


def test_old_payloads_are_upcast_step_by_step_to_the_current_shape() -> None:
    registry = make_registry()

    assert registry.decode("Renamed", {"name": "Ada"}, version=1) == Renamed(
        "Ada", "unknown@example.com"
    )
    assert registry.decode(
        "Renamed", b'{"fullName":"Ada","email":"a@example.com"}', version=2
    ) == Renamed("Ada", "a@example.com")
    assert registry.decode(
        "Renamed", {"displayName": "Ada", "email": "a@example.com"}, version=3
    ) == Renamed("Ada", "a@example.com")


def test_a_missing_upcaster_or_a_future_version_says_what_to_do() -> None:
    registry = EventRegistry()
    registry.add("Renamed", Renamed, version=3)

    @registry.upcaster("Renamed", from_version=2)
    def _v2(data: dict[str, Any]) -> dict[str, Any]:
        return data

    with pytest.raises(PayloadDecodeError, match=r"from_version=1"):
        registry.decode("Renamed", {"name": "Ada"}, version=1)
    with pytest.raises(PayloadDecodeError, match="newer than the registered version 3"):
        registry.decode("Renamed", {}, version=4)
    with pytest.raises(ValueError, match="already exists"):
        registry.upcaster("Renamed", from_version=2)(_v2)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"n": 1', "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'{"m": 1}', "KeyError"),
        (b'{"n": "one"}', "ValueError"),
    ],
)
def test_payloads_that_are_not_what_their_type_promises_raise_a_decode_error(
    payload: bytes,
    reason: str,
) -> None:
    with pytest.raises(PayloadDecodeError, match=reason) as caught:
        make_registry().decode("Ping", payload)

    assert caught.value.event_type == "Ping"


# --- envelope helpers ---------------------------------------------------------------------------


def test_categories_and_system_types() -> None:
    assert category_of("user-6f1c-42") == "user"
    assert category_of("nodash") == "nodash"
    assert is_system_event_type("$metadata") and not is_system_event_type("UserCreated")


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    )
)
def test_ticks_and_created_round_trip_to_the_microsecond(created: datetime) -> None:
    assert created_from_ticks(ticks_from_created(created)) == created


# --- archive lines ------------------------------------------------------------------------------


def raw_event(**overrides: Any) -> dict[str, Any]:
    event = {
        "commit_position": 4484,
        "prepare_position": 4484,
        "stream_name": "user-1",
        "stream_revision": 0,
        "event_id": "300bbc16-7232-5e9a-af34-e2a36a7fd041",
        "event_type": "UserCreated",
        "created": datetime(2024, 1, 1, 10, 43, 51, 366626, UTC),
        "content_type": "application/json",
        "data": b'{"userId":"1","name":"Ad\xc3\xa4"}',
        "metadata": b'{"$correlationId":"c"}',
    }
    return {**event, **overrides}


def test_an_archive_line_is_one_json_object_with_text_payloads() -> None:
    line = archive_line(raw_event())

    obj = json.loads(line)
    assert "\n" not in line
    assert list(obj) == RAW_SCHEMA.names
    assert obj["created"] == "2024-01-01T10:43:51.366626Z"
    assert obj["data"] == '{"userId":"1","name":"Adä"}'
    assert parse_archive_line(line) == raw_event()


def test_binary_payloads_survive_the_archive_as_base64() -> None:
    event = raw_event(
        content_type="application/octet-stream", data=b"\x80\x01\x00\xff", metadata=b"\xfe"
    )

    obj = json.loads(archive_line(event))

    assert "data" not in obj and obj["data_base64"] == "gAEA/w=="
    assert obj["metadata_base64"] == "/g=="
    assert parse_archive_line(archive_line(event)) == event


@given(
    data=st.binary(max_size=64),
    metadata=st.binary(max_size=32),
    created=st.datetimes(
        min_value=datetime(1980, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    revision=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_any_event_round_trips_through_an_archive_line(
    data: bytes,
    metadata: bytes,
    created: datetime,
    revision: int,
) -> None:
    event = raw_event(data=data, metadata=metadata, created=created, stream_revision=revision)

    assert parse_archive_line(archive_line(event)) == event


def test_created_is_written_in_utc_whatever_the_zone_given() -> None:
    tokyo = datetime(2024, 1, 2, 4, 0, tzinfo=timezone(timedelta(hours=9)))

    line = archive_line(raw_event(created=tokyo))

    assert json.loads(line)["created"] == "2024-01-01T19:00:00.000000Z"


def test_a_decoder_decodes_as_decode_does_and_follows_new_registrations() -> None:
    registry = make_registry()
    for version, data in [
        (1, {"name": "Ada"}),
        (2, {"fullName": "Ada", "email": "a@example.com"}),
        (3, {"displayName": "Ada", "email": "a@example.com"}),
    ]:
        assert registry.decoder("Renamed", version=version)(dict(data)) == registry.decode(
            "Renamed", data, version=version
        )
    with pytest.raises(PayloadDecodeError, match="KeyError"):
        registry.decoder("Renamed", version=3)({})

    partial = EventRegistry()
    partial.add("Renamed", Renamed, version=3)
    with pytest.raises(PayloadDecodeError, match=r"from_version=1"):
        partial.decoder("Renamed", version=1)
    with pytest.raises(PayloadDecodeError, match="newer than the registered version 3"):
        partial.decoder("Renamed", version=4)
    with pytest.raises(UnknownEventTypeError):
        partial.decoder("CardIssued")

    # A decoder is built again after a registration, so a new upcaster is used.
    assert partial.decoder("Renamed", version=3)({"displayName": "Bo", "email": "b@x.io"})

    @partial.upcaster("Renamed", from_version=2)
    def _v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"displayName": data["fullName"], "email": data["email"]}

    assert partial.decoder("Renamed", version=2)({"fullName": "Bo", "email": "b@x.io"}) == (
        Renamed("Bo", "b@x.io")
    )
