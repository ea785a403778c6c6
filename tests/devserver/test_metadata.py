"""Stream metadata through ``$$S``, soft delete and undelete, tombstones, truncation keys."""

from __future__ import annotations

import time

import pytest
from esdbclient import EventStoreDBClient, StreamState
from esdbclient.exceptions import NotFound, StreamIsDeleted, WrongCurrentVersion

from tests.devserver.conftest import event, events

DELETED = 2**63 - 1


def revisions(client: EventStoreDBClient, stream: str) -> list[int]:
    return [e.stream_position for e in client.get_stream(stream)]


def test_metadata_round_trip_keeps_custom_keys(client: EventStoreDBClient, stream: str) -> None:
    assert client.get_stream_metadata(stream) == ({}, StreamState.NO_STREAM)
    first = {"custom": {"nested": [1, "two"]}, "$acl": {"$r": "$all"}, "$cacheControl": 30}
    client.set_stream_metadata(stream, metadata=first)
    assert client.get_stream_metadata(stream) == (first, 0)
    client.set_stream_metadata(stream, metadata={"other": True}, current_version=0)
    assert client.get_stream_metadata(stream) == ({"other": True}, 1)
    with pytest.raises(WrongCurrentVersion):
        client.set_stream_metadata(stream, metadata={}, current_version=0)


def test_metastream_keeps_only_the_latest_event(client: EventStoreDBClient, stream: str) -> None:
    for i in range(3):
        client.set_stream_metadata(stream, metadata={"i": i})
    meta_events = client.get_stream(f"$${stream}")
    assert [(e.stream_position, e.type) for e in meta_events] == [(2, "$metadata")]
    assert client.get_stream(f"$${stream}", stream_position=0) == meta_events


def test_max_count_truncates_stream_reads(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(5))
    client.set_stream_metadata(stream, metadata={"$maxCount": 2})
    assert revisions(client, stream) == [3, 4]
    assert [e.stream_position for e in client.get_stream(stream, backwards=True)] == [4, 3]
    assert client.get_current_version(stream) == 4


def test_truncate_before_hides_earlier_revisions(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(5))
    client.set_stream_metadata(stream, metadata={"$tb": 3})
    assert revisions(client, stream) == [3, 4]
    client.set_stream_metadata(stream, metadata={"$tb": 9})
    assert revisions(client, stream) == []  # all hidden: an empty read, not "not found"


def test_max_age_hides_old_events(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.set_stream_metadata(stream, metadata={"$maxAge": 1})
    time.sleep(1.2)
    client.append_to_stream(stream, current_version=1, events=events(1))
    assert revisions(client, stream) == [2]


def test_all_ignores_truncation_and_deletion(client: EventStoreDBClient, stream: str) -> None:
    start = client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(1))
    client.append_to_stream(stream, current_version=0, events=events(2))
    client.set_stream_metadata(stream, metadata={"$maxCount": 1})
    client.tombstone_stream(stream, current_version=2)
    seen = [
        (e.stream_name, e.type)
        for e in client.read_all(commit_position=start, filter_exclude=())
        if e.stream_name in (stream, f"$${stream}")
    ]
    assert seen == [
        (stream, "Happened"),
        (stream, "Happened"),
        (stream, "Happened"),
        (f"$${stream}", "$metadata"),
        (stream, "$streamDeleted"),
    ]


# -- soft delete -------------------------------------------------------------------------------


def test_soft_delete_marks_the_metadata(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.set_stream_metadata(stream, metadata={"keep": "me?"})
    client.delete_stream(stream, current_version=1)
    assert client.get_stream_metadata(stream) == ({"$tb": DELETED}, 1)
    with pytest.raises(NotFound):
        client.get_stream(stream)
    client.delete_stream(stream, current_version=1)  # again, with the right expectation
    client.delete_stream(stream, current_version=StreamState.ANY)
    assert client.get_stream_metadata(stream) == ({"$tb": DELETED}, 3)


def test_delete_of_a_never_written_stream_is_not_found(
    client: EventStoreDBClient, stream: str
) -> None:
    for version in (StreamState.ANY, StreamState.NO_STREAM, StreamState.EXISTS, 0):
        with pytest.raises(NotFound):
            client.delete_stream(stream, current_version=version)


def test_delete_with_the_wrong_revision(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    message = (
        f"Delete failed due to WrongExpectedVersion. Stream: {stream}, "
        "Expected version: 0, Actual version: 1"
    )
    with pytest.raises(WrongCurrentVersion, match=f"^{message}$"):
        client.delete_stream(stream, current_version=0)
    with pytest.raises(WrongCurrentVersion):
        client.delete_stream(stream, current_version=StreamState.NO_STREAM)


def test_delete_of_a_stream_with_only_metadata(client: EventStoreDBClient, stream: str) -> None:
    client.set_stream_metadata(stream, metadata={"a": 1})
    client.delete_stream(stream, current_version=StreamState.NO_STREAM)
    assert client.get_stream_metadata(stream) == ({"$tb": DELETED}, 1)


def test_append_undeletes_and_forgets_old_metadata(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.set_stream_metadata(stream, metadata={"owner": "old"})
    client.delete_stream(stream, current_version=1)
    client.append_to_stream(stream, current_version=StreamState.ANY, events=events(2))
    assert revisions(client, stream) == [2, 3]
    metadata, _ = client.get_stream_metadata(stream)
    assert metadata == {"$tb": 2}
    assert client.get_current_version(stream) == 3


def test_setting_metadata_undeletes(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.delete_stream(stream, current_version=1)
    client.set_stream_metadata(stream, metadata={"owner": "new"})
    metadata, revision = client.get_stream_metadata(stream)
    assert metadata == {"owner": "new", "$tb": 2}
    assert revision == 2  # the user's write, then the server's copy with $tb
    assert revisions(client, stream) == []
    client.append_to_stream(stream, current_version=1, events=events(1))
    assert revisions(client, stream) == [2]


# -- tombstones --------------------------------------------------------------------------------


def test_tombstone_is_final(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.tombstone_stream(stream, current_version=1)
    with pytest.raises(StreamIsDeleted):
        client.get_stream(stream)
    with pytest.raises(StreamIsDeleted):
        client.append_to_stream(stream, current_version=StreamState.ANY, events=[event()])
    with pytest.raises(StreamIsDeleted):
        client.delete_stream(stream, current_version=StreamState.ANY)
    with pytest.raises(StreamIsDeleted):
        client.tombstone_stream(stream, current_version=StreamState.ANY)
    with pytest.raises(StreamIsDeleted):
        client.get_stream_metadata(stream)
    client.set_stream_metadata(stream, metadata={"still": "writable"})  # $$S itself is not deleted


@pytest.mark.parametrize("version", [StreamState.ANY, StreamState.NO_STREAM])
def test_tombstoning_a_never_written_stream(
    client: EventStoreDBClient, stream: str, version: StreamState
) -> None:
    client.tombstone_stream(stream, current_version=version)
    with pytest.raises(StreamIsDeleted):
        client.get_stream(stream)


@pytest.mark.parametrize("version", [StreamState.EXISTS, 0])
def test_tombstoning_a_never_written_stream_needs_it_to_exist(
    client: EventStoreDBClient, stream: str, version: int | StreamState
) -> None:
    with pytest.raises(NotFound):
        client.tombstone_stream(stream, current_version=version)


def test_tombstone_with_the_wrong_revision(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    with pytest.raises(WrongCurrentVersion, match=r"Expected version: 5, Actual version: 1$"):
        client.tombstone_stream(stream, current_version=5)
    client.tombstone_stream(stream, current_version=StreamState.EXISTS)


def test_tombstoning_a_soft_deleted_stream(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.delete_stream(stream, current_version=1)
    with pytest.raises(StreamIsDeleted):
        client.tombstone_stream(stream, current_version=StreamState.EXISTS)
    client.tombstone_stream(stream, current_version=1)
    with pytest.raises(StreamIsDeleted):
        client.get_stream(stream)
