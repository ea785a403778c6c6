"""Catch-up subscriptions to ``$all`` and to streams."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from esdbclient import EventStoreDBClient, StreamState
from esdbclient.events import CaughtUp, Checkpoint, RecordedEvent
from esdbclient.exceptions import GrpcDeadlineExceeded, StreamIsDeleted

from esworkbench.devserver import DevServer
from tests.devserver.conftest import events, needs_devserver


def take(subscription: Iterator[RecordedEvent], n: int) -> list[RecordedEvent]:
    return [next(subscription) for _ in range(n)]


def kinds(items: list[RecordedEvent]) -> list[str]:
    return [type(i).__name__ for i in items]


# -- $all --------------------------------------------------------------------------------------


def test_all_subscription_start_is_exclusive(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(3))
    first, second, third = client.get_stream(stream)
    with client.subscribe_to_all(commit_position=first.commit_position) as sub:
        assert [e.id for e in take(sub, 2)] == [second.id, third.id]


def test_all_subscription_catches_up_then_goes_live(
    client: EventStoreDBClient, stream: str
) -> None:
    start = client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    with client.subscribe_to_all(
        commit_position=start,
        include_caught_up=True,
        filter_include=[stream],
        filter_by_stream_name=True,
    ) as sub:
        assert kinds(take(sub, 1)) == ["CaughtUp"]
        client.append_to_stream(stream, current_version=1, events=events(3))
        live = take(sub, 3)
        assert [e.stream_position for e in live] == [2, 3, 4]


def test_all_subscription_from_the_end_only_sees_new_events(
    client: EventStoreDBClient, stream: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    with client.subscribe_to_all(from_end=True, include_caught_up=True) as sub:
        assert kinds(take(sub, 1)) == ["CaughtUp"]
        client.append_to_stream(stream, current_version=1, events=events(1))
        assert take(sub, 1)[0].stream_position == 2


def test_unfiltered_subscription_sends_no_checkpoints(
    client: EventStoreDBClient, stream: str
) -> None:
    start = client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(1))
    with client.subscribe_to_all(
        commit_position=start,
        filter_exclude=(),
        include_checkpoints=True,
        include_caught_up=True,
        window_size=1,
        checkpoint_interval_multiplier=1,
    ) as sub:
        seen = []
        for item in sub:
            seen.append(item)
            if isinstance(item, CaughtUp):
                break
    assert not any(isinstance(i, Checkpoint) for i in seen)


def test_checkpoints_are_increasing_bounded_and_resumable(
    client: EventStoreDBClient, stream: str
) -> None:
    tag = uuid.uuid4().hex
    start = client.append_to_stream(stream, current_version=StreamState.ANY, events=events(1))
    client.append_to_stream(stream, current_version=0, events=events(7, f"Keep{tag}"))
    client.append_to_stream(stream, current_version=7, events=events(5, "Skip"))
    head = next(iter(client.read_all(backwards=True, limit=1, filter_exclude=())))
    with client.subscribe_to_all(
        commit_position=start,
        filter_include=[f"Keep{tag}"],
        include_checkpoints=True,
        include_caught_up=True,
        window_size=2,
        checkpoint_interval_multiplier=2,
    ) as sub:
        seen = []
        for item in sub:
            seen.append(item)
            if isinstance(item, CaughtUp):
                break
    checkpoints = [i.commit_position for i in seen if isinstance(i, Checkpoint)]
    assert checkpoints, "a filtered subscription checkpoints at least at the end of catch-up"
    assert checkpoints == sorted(set(checkpoints))
    assert kinds(seen[-2:]) == ["Checkpoint", "CaughtUp"]
    assert checkpoints[-1] <= (head.commit_position or 0)
    delivered = [i for i in seen if type(i) is RecordedEvent]
    assert [e.stream_position for e in delivered] == list(range(1, 8))
    # Resuming from any checkpoint delivers exactly what came after it.
    for checkpoint in checkpoints:
        expected = [e.id for e in delivered if (e.commit_position or 0) > checkpoint]
        with client.subscribe_to_all(
            commit_position=checkpoint, filter_include=[f"Keep{tag}"], include_caught_up=True
        ) as resumed:
            got = []
            for item in resumed:
                if isinstance(item, CaughtUp):
                    break
                got.append(item.id)
        assert got == expected


@needs_devserver
def test_checkpoint_interval_counts_considered_events(fresh_server: DevServer) -> None:
    with EventStoreDBClient(fresh_server.uri) as fresh:
        fresh.append_to_stream("s", current_version=StreamState.ANY, events=events(10, "Other"))
        log = [e.commit_position for e in fresh.read_all(filter_exclude=())]
        with fresh.subscribe_to_all(
            filter_include=["Nothing"],
            include_checkpoints=True,
            include_caught_up=True,
            window_size=2,
            checkpoint_interval_multiplier=2,
        ) as sub:
            seen = []
            for item in sub:
                seen.append(item)
                if isinstance(item, CaughtUp):
                    break
    # Every record is considered, the hidden epoch record included.
    considered = [e.position for e in fresh_server.store.events]
    assert [p for p in considered if p in log] == log
    expected = considered[3::4] + ([considered[-1]] if len(considered) % 4 else [])
    assert [i.commit_position for i in seen if isinstance(i, Checkpoint)] == expected


@needs_devserver  # a real node starting at its head may go live without a checkpoint
def test_catch_up_checkpoint_with_nothing_left_is_the_start(client: EventStoreDBClient) -> None:
    last = next(iter(client.read_all(backwards=True, limit=1, filter_exclude=())))
    with client.subscribe_to_all(
        commit_position=last.commit_position, include_checkpoints=True, include_caught_up=True
    ) as sub:
        checkpoint, caught_up = take(sub, 2)
    assert isinstance(checkpoint, Checkpoint) and isinstance(caught_up, CaughtUp)
    assert checkpoint.commit_position == last.commit_position


def test_first_event_arrives_before_a_short_deadline(client: EventStoreDBClient) -> None:
    sub = client.subscribe_to_all(filter_exclude=(), timeout=2)
    try:
        assert isinstance(next(sub), RecordedEvent)
    finally:
        sub.stop()


def test_subscription_ends_at_its_deadline(client: EventStoreDBClient, stream: str) -> None:
    with pytest.raises(GrpcDeadlineExceeded):
        for _ in client.subscribe_to_stream(stream, timeout=0.5):
            pass


@needs_devserver
def test_server_stops_working_for_a_stopped_subscription(fresh_server: DevServer) -> None:
    store = fresh_server.store
    with EventStoreDBClient(fresh_server.uri) as fresh:
        sub = fresh.subscribe_to_all(include_caught_up=True)
        assert kinds(take(sub, 1)) == ["CaughtUp"]
        deadline = time.monotonic() + 10
        while store.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.waiting == 1
        sub.stop()
        while store.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.waiting == 0


def test_live_subscription_sees_concurrent_appends_exactly_once_in_order(
    client: EventStoreDBClient, stream: str
) -> None:
    writers, appends = 4, 20
    per_writer = sum(1 if i % 2 == 0 else 2 for i in range(appends))
    names = [f"{stream}-{w}" for w in range(writers)]
    client.append_to_stream(names[0], current_version=StreamState.ANY, events=events(3))
    start = client.get_stream(names[0])[0].commit_position
    go = threading.Barrier(writers + 1)

    def write(name: str) -> None:
        go.wait()
        for i in range(appends):
            client.append_to_stream(
                name, current_version=StreamState.ANY, events=events(1 if i % 2 == 0 else 2)
            )

    threads = [threading.Thread(target=write, args=(n,)) for n in names]
    for t in threads:
        t.start()
    mine = {"filter_include": [f"{stream}-.*"], "filter_by_stream_name": True}
    received: list[RecordedEvent] = []
    with client.subscribe_to_all(commit_position=start, **mine) as sub:  # type: ignore[arg-type]
        go.wait()
        for item in sub:
            received.append(item)
            if len(received) == 2 + writers * per_writer:
                break
    for t in threads:
        t.join()
    stored = list(client.read_all(commit_position=start, **mine))  # type: ignore[arg-type]
    assert [e.id for e in received] == [e.id for e in stored[1:]]
    for name in names:
        revisions = [e.stream_position for e in received if e.stream_name == name]
        first = 1 if name == names[0] else 0
        assert revisions == list(range(first, first + len(revisions)))
        assert len(revisions) == per_writer + (2 if name == names[0] else 0)


# -- streams -----------------------------------------------------------------------------------


def test_stream_subscription_catches_up_then_goes_live(
    client: EventStoreDBClient, stream: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(3))
    with client.subscribe_to_stream(stream, include_caught_up=True) as sub:
        caught_up = take(sub, 4)
        assert kinds(caught_up) == ["RecordedEvent"] * 3 + ["CaughtUp"]
        assert [e.stream_position for e in caught_up[:3]] == [0, 1, 2]
        client.append_to_stream(stream, current_version=2, events=events(2))
        assert [e.stream_position for e in take(sub, 2)] == [3, 4]


def test_stream_subscription_start_is_exclusive(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(3))
    with client.subscribe_to_stream(stream, stream_position=0) as sub:
        assert [e.stream_position for e in take(sub, 2)] == [1, 2]
    with client.subscribe_to_stream(stream, from_end=True, include_caught_up=True) as sub:
        assert kinds(take(sub, 1)) == ["CaughtUp"]
        client.append_to_stream(stream, current_version=2, events=events(1))
        assert take(sub, 1)[0].stream_position == 3


def test_stream_subscription_waits_for_a_new_stream(
    client: EventStoreDBClient, stream: str
) -> None:
    with client.subscribe_to_stream(stream, include_caught_up=True) as sub:
        assert kinds(take(sub, 1)) == ["CaughtUp"]
        client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
        assert [e.stream_position for e in take(sub, 2)] == [0, 1]


def test_stream_subscription_honours_metadata(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(4))
    client.set_stream_metadata(stream, metadata={"$maxCount": 2})
    with client.subscribe_to_stream(stream) as sub:
        assert [e.stream_position for e in take(sub, 2)] == [2, 3]


def test_stream_subscription_to_a_tombstoned_stream(
    client: EventStoreDBClient, stream: str
) -> None:
    client.tombstone_stream(stream, current_version=StreamState.ANY)
    with pytest.raises(StreamIsDeleted):
        for _ in client.subscribe_to_stream(stream, timeout=5):
            pass


def test_tombstone_ends_a_stream_subscription(client: EventStoreDBClient, stream: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(1))
    seen = []
    with (
        pytest.raises(StreamIsDeleted),
        client.subscribe_to_stream(stream, include_caught_up=True, timeout=10) as sub,
    ):
        for item in sub:
            seen.append(item)
            if isinstance(item, CaughtUp):
                client.tombstone_stream(stream, current_version=0)
    assert kinds(seen) == ["RecordedEvent", "CaughtUp", "RecordedEvent"]
    assert seen[-1].type == "$streamDeleted"
