"""Appends through both RPCs: the expected-revision table, error shapes, idempotency, positions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from esdbclient import EventStoreDBClient, NewEvent, StreamState
from esdbclient.exceptions import (
    FailedPrecondition,
    GrpcError,
    MaximumAppendSizeExceededError,
    StreamIsDeleted,
    WrongCurrentVersion,
)

from tests.devserver.conftest import event, events

# "append" sends one NewEvent (the Append RPC); "batch" sends a list (BatchAppend).
PATHS = ["append", "batch"]
Version = int | StreamState


def append(
    client: EventStoreDBClient, path: str, stream: str, version: Version, new: Sequence[NewEvent]
) -> int:
    if path == "append":
        assert len(new) == 1
        return client.append_to_stream(stream, current_version=version, events=new[0])
    return client.append_to_stream(stream, current_version=version, events=list(new))


def deleted_error(path: str) -> type[Exception]:
    # The Append path maps FAILED_PRECONDITION generically; BatchAppend has a StreamDeleted detail.
    return FailedPrecondition if path == "append" else StreamIsDeleted


def revisions(client: EventStoreDBClient, stream: str) -> list[int]:
    return [e.stream_position for e in client.get_stream(stream)]


# -- never written ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("version", [StreamState.ANY, StreamState.NO_STREAM])
def test_new_stream_accepts_any_and_no_stream(
    client: EventStoreDBClient, stream: str, path: str, version: StreamState
) -> None:
    append(client, path, stream, version, [event()])
    assert revisions(client, stream) == [0]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("version", [StreamState.EXISTS, 0, 3])
def test_new_stream_rejects_exists_and_exact(
    client: EventStoreDBClient, stream: str, path: str, version: Version
) -> None:
    with pytest.raises(WrongCurrentVersion, match=rf"^Stream '{stream}' does not exist$"):
        append(client, path, stream, version, [event()])


@pytest.mark.parametrize("path", PATHS)
def test_stream_with_only_metadata_counts_as_existing(
    client: EventStoreDBClient, stream: str, path: str
) -> None:
    client.set_stream_metadata(stream, metadata={"owner": "tests"})
    append(client, path, stream, StreamState.EXISTS, [event()])
    assert revisions(client, stream) == [0]


@pytest.mark.parametrize("path", PATHS)
def test_stream_with_only_metadata_rejects_exact(
    client: EventStoreDBClient, stream: str, path: str
) -> None:
    client.set_stream_metadata(stream, metadata={"owner": "tests"})
    with pytest.raises(WrongCurrentVersion, match="does not exist"):
        append(client, path, stream, 0, [event()])


# -- existing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("version", [StreamState.ANY, StreamState.EXISTS, 1])
def test_existing_stream_accepts(
    client: EventStoreDBClient, stream: str, path: str, version: Version
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    append(client, path, stream, version, [event()])
    assert revisions(client, stream) == [0, 1, 2]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("version", [StreamState.NO_STREAM, 0, 2, 7])
def test_existing_stream_rejects_wrong_revision(
    client: EventStoreDBClient, stream: str, path: str, version: Version
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    message = rf"^Stream position of last event is 1 not {version}$"
    with pytest.raises(WrongCurrentVersion, match=message):
        append(client, path, stream, version, [event()])
    assert revisions(client, stream) == [0, 1]


# -- soft-deleted and tombstoned ---------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("version", [StreamState.ANY, StreamState.NO_STREAM, 1])
def test_soft_deleted_stream_is_undeleted_by_append(
    client: EventStoreDBClient, stream: str, path: str, version: Version
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.delete_stream(stream, current_version=1)
    append(client, path, stream, version, [event()])
    assert revisions(client, stream) == [2]


@pytest.mark.parametrize("path", PATHS)
def test_soft_deleted_stream_rejects_exists(
    client: EventStoreDBClient, stream: str, path: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.delete_stream(stream, current_version=1)
    with pytest.raises(deleted_error(path)):
        append(client, path, stream, StreamState.EXISTS, [event()])


@pytest.mark.parametrize("path", PATHS)
def test_soft_deleted_stream_rejects_stale_revision(
    client: EventStoreDBClient, stream: str, path: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.delete_stream(stream, current_version=1)
    with pytest.raises(WrongCurrentVersion, match=r"^Stream position of last event is 1 not 0$"):
        append(client, path, stream, 0, [event()])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "version", [StreamState.ANY, StreamState.NO_STREAM, StreamState.EXISTS, 0, 5]
)
def test_tombstoned_stream_rejects_every_append(
    client: EventStoreDBClient, stream: str, path: str, version: Version
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=[event()])
    client.tombstone_stream(stream, current_version=0)
    with pytest.raises(deleted_error(path)) as caught:
        append(client, path, stream, version, [event()])
    if path == "append":
        assert f"Event stream '{stream}' is deleted." in str(caught.value)
    else:
        assert str(caught.value) == f"Stream '{stream}' is deleted"


# -- idempotency (b.4) -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [StreamState.ANY, StreamState.EXISTS])
def test_retry_with_any_returns_earlier_position(
    client: EventStoreDBClient, stream: str, version: StreamState
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=[event()])
    batch = events(3)
    first = client.append_to_stream(stream, current_version=version, events=batch)
    again = client.append_to_stream(stream, current_version=version, events=batch)
    assert again == first
    assert revisions(client, stream) == [0, 1, 2, 3]


def test_retry_with_any_and_a_foreign_later_id_is_rejected(
    client: EventStoreDBClient, stream: str
) -> None:
    batch = events(2)
    client.append_to_stream(stream, current_version=StreamState.ANY, events=batch)
    with pytest.raises(WrongCurrentVersion):
        client.append_to_stream(stream, current_version=StreamState.ANY, events=[batch[0], event()])
    assert revisions(client, stream) == [0, 1]


def test_any_only_checks_the_first_id(client: EventStoreDBClient, stream: str) -> None:
    batch = events(2)
    client.append_to_stream(stream, current_version=StreamState.ANY, events=batch)
    client.append_to_stream(stream, current_version=StreamState.ANY, events=[event(), batch[0]])
    assert revisions(client, stream) == [0, 1, 2, 3]


def test_retry_with_exact_revision_returns_earlier_positions(
    client: EventStoreDBClient, stream: str
) -> None:
    batch = events(3)
    last = client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=batch)
    recorded = client.get_stream(stream)
    assert (
        client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=batch) == last
    )
    assert (
        client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=batch[:1])
        == recorded[0].commit_position
    )
    assert client.append_to_stream(stream, current_version=0, events=batch[1:2]) == (
        recorded[1].commit_position
    )
    assert client.append_to_stream(stream, current_version=0, events=batch[1]) == (
        recorded[1].commit_position
    )
    assert revisions(client, stream) == [0, 1, 2]


@pytest.mark.parametrize(
    "pick",
    [
        lambda b: [event()],  # the first differs
        lambda b: [b[0], event()],  # a later one differs
        lambda b: [*b, event()],  # runs past the end of the stream
    ],
    ids=["first-differs", "later-differs", "past-the-end"],
)
def test_retry_with_exact_revision_that_does_not_match_is_rejected(
    client: EventStoreDBClient, stream: str, pick: object
) -> None:
    batch = events(2)
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=batch)
    retry = pick(batch)  # type: ignore[operator]
    with pytest.raises(WrongCurrentVersion, match=r"^Stream position of last event is 1 not"):
        client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=retry)
    assert revisions(client, stream) == [0, 1]


def test_empty_append_only_checks_the_expected_revision(
    client: EventStoreDBClient, stream: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.ANY, events=[])
    with pytest.raises(WrongCurrentVersion):
        client.append_to_stream(stream, current_version=0, events=[])
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(1))
    client.append_to_stream(stream, current_version=0, events=[])
    assert revisions(client, stream) == [0]


# -- positions (b.1) ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_each_event_gets_its_own_increasing_position(
    client: EventStoreDBClient, stream: str, path: str
) -> None:
    returned = [append(client, path, stream, StreamState.ANY, [event()]) for _ in range(3)]
    returned.append(client.append_to_stream(stream, current_version=2, events=events(4)))
    recorded = client.get_stream(stream)
    positions = [e.commit_position for e in recorded]
    assert all(p is not None and p > 0 for p in positions)
    assert positions == sorted(set(positions))  # type: ignore[type-var]
    assert [e.prepare_position for e in recorded] == positions
    assert returned == [*positions[:3], positions[-1]]


def test_appends_return_increasing_positions_across_streams(client: EventStoreDBClient) -> None:
    names = [f"devserver-test-{uuid.uuid4()}" for _ in range(4)]
    returned = [
        client.append_to_stream(n, current_version=StreamState.ANY, events=events(2)) for n in names
    ]
    assert returned == sorted(set(returned))


# -- limits and malformed requests -------------------------------------------------------------

MAX_APPEND_SIZE = 1024 * 1024


@pytest.mark.parametrize("path", PATHS)
def test_append_at_the_size_limit_succeeds(
    client: EventStoreDBClient, stream: str, path: str
) -> None:
    data = b"x" * (MAX_APPEND_SIZE - 2 * len("Big"))
    append(client, path, stream, StreamState.NO_STREAM, [event("Big", data)])
    assert len(client.get_stream(stream)[0].data) == len(data)


def test_batch_append_over_the_size_limit_is_refused(
    client: EventStoreDBClient, stream: str
) -> None:
    data = b"x" * (MAX_APPEND_SIZE // 2)
    with pytest.raises(MaximumAppendSizeExceededError, match=f"^Max size is {MAX_APPEND_SIZE}$"):
        client.append_to_stream(
            stream, current_version=StreamState.ANY, events=[event("Big", data), event("Big", data)]
        )
    assert client.get_current_version(stream) is StreamState.NO_STREAM


def test_single_append_over_the_size_limit_is_refused(
    client: EventStoreDBClient, stream: str
) -> None:
    big = event("Big", b"x" * MAX_APPEND_SIZE)
    with pytest.raises(GrpcError, match=f"Maximum Append Size of {MAX_APPEND_SIZE} Exceeded."):
        client.append_to_stream(stream, current_version=StreamState.ANY, events=big)
    assert client.get_current_version(stream) is StreamState.NO_STREAM
