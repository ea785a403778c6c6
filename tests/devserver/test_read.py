"""Reading streams and ``$all`` through the sync client; event fields; links."""

from __future__ import annotations

import datetime
import uuid

import pytest
from esdbclient import EventStoreDBClient, StreamState
from esdbclient.exceptions import NotFound, StreamIsDeleted

from tests.devserver.conftest import REAL_URI, event, events, needs_devserver

# -- stream reads ------------------------------------------------------------------------------


@pytest.fixture
def five(client: EventStoreDBClient, stream: str) -> str:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(5))
    return stream


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [0, 1, 2, 3, 4]),
        ({"stream_position": 2}, [2, 3, 4]),
        ({"stream_position": 9}, []),
        ({"limit": 2}, [0, 1]),
        ({"stream_position": 1, "limit": 2}, [1, 2]),
        ({"backwards": True}, [4, 3, 2, 1, 0]),
        ({"backwards": True, "stream_position": 2}, [2, 1, 0]),
        ({"backwards": True, "stream_position": 9}, [4, 3, 2, 1, 0]),
        ({"backwards": True, "limit": 2}, [4, 3]),
        ({"backwards": True, "stream_position": 3, "limit": 2}, [3, 2]),
    ],
)
def test_stream_reads(
    client: EventStoreDBClient, five: str, kwargs: dict[str, object], expected: list[int]
) -> None:
    recorded = client.get_stream(five, **kwargs)  # type: ignore[arg-type]
    assert [e.stream_position for e in recorded] == expected
    assert all(e.stream_name == five for e in recorded)


def test_current_version(client: EventStoreDBClient, five: str) -> None:
    assert client.get_current_version(five) == 4
    assert client.get_current_version(five + "-never") is StreamState.NO_STREAM


def test_missing_stream_is_not_found_lazily(client: EventStoreDBClient, stream: str) -> None:
    reader = client.read_stream(stream)  # no error until iterated
    with pytest.raises(NotFound, match=f"^Stream '{stream}' not found$"):
        list(reader)


def test_soft_deleted_stream_is_not_found(client: EventStoreDBClient, five: str) -> None:
    client.delete_stream(five, current_version=4)
    with pytest.raises(NotFound):
        client.get_stream(five)
    assert client.get_current_version(five) is StreamState.NO_STREAM


def test_tombstoned_stream_is_deleted(client: EventStoreDBClient, five: str) -> None:
    client.tombstone_stream(five, current_version=4)
    with pytest.raises(StreamIsDeleted):
        client.get_stream(five)
    with pytest.raises(StreamIsDeleted):
        client.get_current_version(five)


# -- event fields ------------------------------------------------------------------------------


def test_event_fields_round_trip_byte_for_byte(client: EventStoreDBClient, stream: str) -> None:
    payloads = [
        event("Json", b'{"a": [1, 2.5, "\\u00e9"]}', metadata=b'{"$correlationId": "c-1"}'),
        event("Binary", bytes(range(256)), metadata=bytes(range(255, -1, -1)), content_type="x"),
        event("Empty", b"", metadata=b""),
        event("Unicode-\u00e9v\u00e9nement", "caf\u00e9".encode(), content_type="text/plain"),
    ]
    before = datetime.datetime.now(datetime.UTC)
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=payloads)
    after = datetime.datetime.now(datetime.UTC)
    recorded = client.get_stream(stream)
    slack = datetime.timedelta(seconds=600 if REAL_URI else 1)
    for new, got in zip(payloads, recorded, strict=True):
        assert got.id == new.id
        assert got.type == new.type
        assert got.data == new.data
        assert got.metadata == new.metadata
        assert got.stream_name == stream
        assert got.recorded_at is not None
        assert before - slack <= got.recorded_at <= after + slack
    assert [e.content_type for e in recorded] == [
        "application/json",
        "application/octet-stream",
        "application/json",
        "application/octet-stream",
    ]


def test_unicode_stream_names(client: EventStoreDBClient) -> None:
    name = f"devserver-test-\u00e9\u4e2d-{uuid.uuid4()}"
    client.append_to_stream(name, current_version=StreamState.NO_STREAM, events=events(1))
    assert client.get_stream(name)[0].stream_name == name
    client.tombstone_stream(name, current_version=0)
    with pytest.raises(StreamIsDeleted):
        client.get_stream(name)


# -- $all --------------------------------------------------------------------------------------


def test_all_forwards_is_inclusive_and_backwards_exclusive(
    client: EventStoreDBClient, stream: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(3))
    first, second, third = client.get_stream(stream)
    assert second.commit_position is not None
    forwards = client.read_all(commit_position=second.commit_position, limit=2)
    assert [e.id for e in forwards] == [second.id, third.id]
    backwards = client.read_all(commit_position=second.commit_position, backwards=True, limit=1)
    assert [e.id for e in backwards] == [first.id]


def test_all_reads_the_whole_log_in_order(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(3))
    everything = list(client.read_all(filter_exclude=()))
    positions = [e.commit_position for e in everything]
    assert positions == sorted(set(positions))  # type: ignore[type-var]
    assert [e.stream_position for e in everything if e.stream_name == stream] == [0, 1, 2]
    newest_first = list(client.read_all(filter_exclude=(), backwards=True))
    assert [e.id for e in newest_first] == [e.id for e in reversed(everything)][: len(newest_first)]


def test_filters_by_event_type_and_stream_name(client: EventStoreDBClient) -> None:
    tag = uuid.uuid4().hex
    start = client.append_to_stream(
        f"a{tag}", current_version=StreamState.ANY, events=[event(f"T{tag}x")]
    )
    client.append_to_stream(f"b{tag}", current_version=StreamState.ANY, events=[event(f"T{tag}y")])
    client.append_to_stream(f"c{tag}", current_version=StreamState.ANY, events=[event(f"U{tag}")])

    def types(**kwargs: object) -> list[str]:
        return [e.type for e in client.read_all(commit_position=start, **kwargs)]  # type: ignore[arg-type]

    assert types(filter_include=[f"T{tag}.*"]) == [f"T{tag}x", f"T{tag}y"]
    assert types(filter_include=[f"T{tag}y", f"U{tag}"]) == [f"T{tag}y", f"U{tag}"]
    mine = [f"a{tag}", f"b{tag}", f"c{tag}"]
    assert types(filter_include=mine[1:], filter_by_stream_name=True) == [f"T{tag}y", f"U{tag}"]
    excluded = types(filter_exclude=[f"T{tag}.*", r"\$.*"])
    assert f"U{tag}" in excluded and not any(t.startswith(f"T{tag}") for t in excluded)
    by_stream = types(filter_exclude=[f"a{tag}", r"\$.*"], filter_by_stream_name=True)
    assert f"T{tag}x" not in by_stream and f"T{tag}y" in by_stream


def test_default_filter_hides_system_types_but_not_system_streams(
    client: EventStoreDBClient,
) -> None:
    tag = uuid.uuid4().hex
    start = client.append_to_stream(
        f"$sys-{tag}", current_version=StreamState.ANY, events=[event("User")]
    )
    client.append_to_stream(f"u-{tag}", current_version=StreamState.ANY, events=[event("$sys")])
    client.append_to_stream(
        f"u-{tag}", current_version=StreamState.ANY, events=[event("PersistentConfig1")]
    )
    client.set_stream_metadata(f"u-{tag}", metadata={"x": 1})
    default = [(e.stream_name, e.type) for e in client.read_all(commit_position=start)]
    assert default == [(f"$sys-{tag}", "User")]
    unfiltered = [e.type for e in client.read_all(commit_position=start, filter_exclude=())]
    assert unfiltered == ["User", "$sys", "PersistentConfig1", "$metadata"]


def test_built_in_exclusions_apply_without_a_filter(client: EventStoreDBClient) -> None:
    group = uuid.uuid4().hex
    marker = f"devserver-test-{group}"
    start = client.append_to_stream(marker, current_version=StreamState.ANY, events=[event()])
    for suffix in ("checkpoint", "parked"):
        client.append_to_stream(
            f"$persistentsubscription-$all::{group}-{suffix}",
            current_version=StreamState.ANY,
            events=[event("Visible?")],
        )
    after = list(client.read_all(commit_position=start, filter_exclude=()))
    assert [e.stream_name for e in after] == [marker]
    assert not any(
        e.stream_name == "$epoch-information" for e in client.read_all(filter_exclude=())
    )


def test_commit_position(client: EventStoreDBClient, stream: str) -> None:
    last = client.append_to_stream(stream, current_version=StreamState.ANY, events=events(2))
    assert client.get_commit_position() >= last
    assert client.get_commit_position(filter_include=[stream], filter_by_stream_name=True) == last
    assert client.get_commit_position(filter_exclude=[".*"]) == 0


@needs_devserver
def test_log_starts_with_system_events(fresh_server: object) -> None:
    with EventStoreDBClient(fresh_server.uri) as fresh:  # type: ignore[attr-defined]
        seeded = list(fresh.read_all(filter_exclude=()))
        assert seeded and all(e.type.startswith("$") for e in seeded)
        assert list(fresh.read_all()) == []
        assert fresh.get_commit_position() == 0
        position = fresh.append_to_stream("s", current_version=StreamState.ANY, events=events(1))
        assert position > max(e.commit_position or 0 for e in seeded)


# -- links -------------------------------------------------------------------------------------


def test_links_resolve_to_their_targets(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    target = client.get_stream(stream)[1]
    links = f"{stream}-links"
    client.append_to_stream(
        links,
        current_version=StreamState.NO_STREAM,
        events=[
            event("$>", f"1@{stream}".encode(), content_type="application/octet-stream"),
            event("$>", f"7@{stream}".encode(), content_type="application/octet-stream"),
        ],
    )
    raw = client.get_stream(links)
    assert [e.type for e in raw] == ["$>", "$>"]
    resolved = client.get_stream(links, resolve_links=True)
    assert len(resolved) == 1  # the dangling link is skipped by the client
    got = resolved[0]
    assert (got.id, got.stream_name, got.stream_position) == (target.id, stream, 1)
    assert got.link is not None
    assert (got.link.id, got.link.stream_name, got.link.type) == (raw[0].id, links, "$>")
    assert got.commit_position == target.commit_position
    via_all = [
        e
        for e in client.read_all(
            commit_position=raw[0].commit_position, resolve_links=True, filter_exclude=(), limit=2
        )
    ]
    assert via_all[0].id == target.id and via_all[0].link is not None

    client.tombstone_stream(stream, current_version=1)
    assert client.get_stream(links, resolve_links=True) == ()
