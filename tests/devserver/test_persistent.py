"""Persistent subscriptions through esdbclient: groups, acks and nacks, strategies, restarts."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from esdbclient import EventStoreDBClient, StreamState
from esdbclient.events import RecordedEvent
from esdbclient.exceptions import AlreadyExists, MaximumSubscriptionsReached, NotFound
from esdbclient.persistent import AbstractPersistentSubscription, SubscriptionInfo

from esworkbench import devserver
from tests.devserver.conftest import events, needs_devserver

# Short client-side ack batching keeps every test well under a few seconds.
FAST_ACKS = {"max_ack_delay": 0.05, "stopping_grace": 0.05, "timeout": 10}


def take(
    sub: AbstractPersistentSubscription,
    n: int,
    handle: Callable[[RecordedEvent], None] | None = None,
) -> list[RecordedEvent]:
    """The next ``n`` events; each is acked unless ``handle`` says otherwise."""
    got = []
    for event in sub:
        (handle or sub.ack)(event)
        got.append(event)
        if len(got) == n:
            break
    return got


def wait_for(
    client: EventStoreDBClient,
    group: str,
    stream: str | None,
    check: Callable[[SubscriptionInfo], bool],
) -> SubscriptionInfo:
    """Poll ``get_subscription_info`` until ``check`` holds (acks travel in batches)."""
    deadline = time.monotonic() + 5
    while True:
        info = client.get_subscription_info(group, stream_name=stream)
        if check(info) or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex[:8]}"


# -- managing groups ---------------------------------------------------------------------------


def test_create_list_update_delete_a_stream_group(
    client: EventStoreDBClient, stream: str, group: str
) -> None:
    client.create_subscription_to_stream(group, stream, stream_position=3, message_timeout=2)
    with pytest.raises(AlreadyExists):
        client.create_subscription_to_stream(group, stream)
    [listed] = client.list_subscriptions_to_stream(stream)
    assert (listed.group_name, listed.event_source, listed.start_from) == (group, stream, "3")
    assert listed.message_timeout == 2.0
    assert group in [i.group_name for i in client.list_subscriptions()]
    client.update_subscription_to_stream(group, stream, from_end=True, max_retry_count=3)
    info = client.get_subscription_info(group, stream_name=stream)
    assert (info.start_from, info.max_retry_count) == ("-1", 3)
    client.delete_subscription(group, stream_name=stream)
    assert client.list_subscriptions_to_stream(stream) == []
    for call in (
        lambda: client.get_subscription_info(group, stream_name=stream),
        lambda: client.delete_subscription(group, stream_name=stream),
        lambda: client.update_subscription_to_stream(group, stream),
        lambda: client.replay_parked_events(group, stream_name=stream),
        lambda: next(iter(client.read_subscription_to_stream(group, stream, timeout=5))),
    ):
        with pytest.raises(NotFound):
            call()


def test_all_group_with_filter_starts_at_its_position_inclusive(
    client: EventStoreDBClient, stream: str, group: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(4))
    second = client.get_stream(stream)[1]
    client.create_subscription_to_all(
        group,
        commit_position=second.commit_position,
        filter_include=[stream],
        filter_by_stream_name=True,
    )
    info = client.get_subscription_info(group)
    assert info.start_from == f"C:{second.commit_position}/P:{second.commit_position}"
    sub = client.read_subscription_to_all(group, **FAST_ACKS)  # type: ignore[arg-type]
    try:
        assert [e.stream_position for e in take(sub, 3)] == [1, 2, 3]
    finally:
        sub.stop()
    client.delete_subscription(group)


def test_maximum_subscribers(client: EventStoreDBClient, stream: str, group: str) -> None:
    client.create_subscription_to_stream(group, stream, max_subscriber_count=1)
    first = client.read_subscription_to_stream(group, stream, **FAST_ACKS)  # type: ignore[arg-type]
    try:
        with pytest.raises(MaximumSubscriptionsReached):
            client.read_subscription_to_stream(group, stream, timeout=5)
    finally:
        first.stop()


# -- acks, nacks, checkpoints ------------------------------------------------------------------


def test_checkpoint_after_n_acks(client: EventStoreDBClient, stream: str, group: str) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(7))
    client.create_subscription_to_stream(
        group, stream, min_checkpoint_count=3, max_checkpoint_count=3, checkpoint_after=60
    )
    sub = client.read_subscription_to_stream(group, stream, **FAST_ACKS)  # type: ignore[arg-type]
    try:
        for expected in ("2", "5"):
            take(sub, 3)
            info = wait_for(
                client,
                group,
                stream,
                lambda i, want=expected: i.last_checkpointed_event_position == want,  # type: ignore[misc]
            )
            assert info.last_checkpointed_event_position == expected
        take(sub, 1)  # one short of the next checkpoint
        info = wait_for(client, group, stream, lambda i: i.outstanding_messages_count == 0)
    finally:
        sub.stop()
    assert info.last_checkpointed_event_position == "5"
    assert info.last_known_event_position == "6"
    checkpoints = client.get_stream(f"$persistentsubscription-{stream}::{group}-checkpoint")
    assert [e.data for e in checkpoints] == [b'"2"', b'"5"']


def test_a_consumer_that_nacks_with_each_action(
    client: EventStoreDBClient, stream: str, group: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(5))
    client.create_subscription_to_stream(group, stream, max_retry_count=5)
    sub = client.read_subscription_to_stream(group, stream, **FAST_ACKS)  # type: ignore[arg-type]
    actions = {0: "park", 1: "retry", 2: "skip", 3: "stop"}

    def nack_first_delivery(event: RecordedEvent) -> None:
        action = actions.get(event.stream_position or 0)
        if action is not None and event.retry_count == 0:
            sub.nack(event, action)  # type: ignore[arg-type]
        else:
            sub.ack(event)

    try:
        first = take(sub, 6, nack_first_delivery)
        # Retried messages come back before new ones, with their retry count raised; the
        # parked, skipped and "stopped" ones do not come back, and the subscription goes on.
        delivered = [(e.stream_position, e.retry_count) for e in first]
        assert delivered[:4] == [(0, 0), (1, 0), (2, 0), (3, 0)]
        assert sorted(delivered[4:]) == [(1, 1), (4, 0)]
        info = wait_for(client, group, stream, lambda i: i.parked_message_count == 1)
        assert info.parked_message_count == 1
        client.replay_parked_events(group, stream_name=stream)
        [replayed] = take(sub, 1)
        assert (replayed.stream_position, replayed.retry_count) == (0, 0)
        info = wait_for(client, group, stream, lambda i: i.parked_message_count == 0)
        assert info.parked_message_count == 0
    finally:
        sub.stop()


def test_message_timeout_retries_then_parks(
    client: EventStoreDBClient, stream: str, group: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(1))
    client.create_subscription_to_stream(group, stream, message_timeout=0.3, max_retry_count=2)
    sub = client.read_subscription_to_stream(group, stream, **FAST_ACKS)  # type: ignore[arg-type]
    try:
        seen = take(sub, 3, lambda e: None)  # never acked
        assert [e.retry_count for e in seen] == [0, 1, 2]
        info = wait_for(client, group, stream, lambda i: i.parked_message_count == 1)
        assert info.parked_message_count == 1
        assert info.outstanding_messages_count == 0
    finally:
        sub.stop()


def test_disconnect_retries_messages_in_flight(
    client: EventStoreDBClient, stream: str, group: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    client.create_subscription_to_stream(group, stream)
    sub = client.read_subscription_to_stream(group, stream, **FAST_ACKS)  # type: ignore[arg-type]
    take(sub, 2, lambda e: None)
    sub.stop()
    again = client.read_subscription_to_stream(group, stream, **FAST_ACKS)  # type: ignore[arg-type]
    try:
        assert [(e.stream_position, e.retry_count) for e in take(again, 2)] == [(0, 1), (1, 1)]
    finally:
        again.stop()


# -- consumer strategies -----------------------------------------------------------------------


def _two_consumers(
    client: EventStoreDBClient, group: str, stream: str, strategy: str, buffer: int
) -> tuple[AbstractPersistentSubscription, AbstractPersistentSubscription]:
    client.create_subscription_to_stream(group, stream, consumer_strategy=strategy)  # type: ignore[arg-type]
    opts = {**FAST_ACKS, "event_buffer_size": buffer}
    a = client.read_subscription_to_stream(group, stream, **opts)  # type: ignore[arg-type]
    b = client.read_subscription_to_stream(group, stream, **opts)  # type: ignore[arg-type]
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(4))
    return a, b


def test_round_robin_alternates(client: EventStoreDBClient, stream: str, group: str) -> None:
    a, b = _two_consumers(client, group, stream, "RoundRobin", 10)
    try:
        assert [e.stream_position for e in take(a, 2)] == [0, 2]
        assert [e.stream_position for e in take(b, 2)] == [1, 3]
    finally:
        a.stop()
        b.stop()


def test_dispatch_to_single_fills_one_consumer_first(
    client: EventStoreDBClient, stream: str, group: str
) -> None:
    a, b = _two_consumers(client, group, stream, "DispatchToSingle", 2)
    try:
        assert [e.stream_position for e in take(a, 2)] == [0, 1]
        assert [e.stream_position for e in take(b, 2)] == [2, 3]
    finally:
        a.stop()
        b.stop()


def test_pinned_keeps_each_stream_on_one_consumer(client: EventStoreDBClient, group: str) -> None:
    prefix = f"pinned-{uuid.uuid4().hex[:8]}-"
    client.create_subscription_to_all(
        group,
        consumer_strategy="Pinned",
        filter_include=[f"{prefix}.*"],
        filter_by_stream_name=True,
    )
    subs = {
        name: client.read_subscription_to_all(group, **FAST_ACKS)  # type: ignore[arg-type]
        for name in ("a", "b")
    }
    received: list[tuple[str, str]] = []

    def consume(name: str) -> None:
        sub = subs[name]
        for event in sub:
            sub.ack(event)
            received.append((name, event.stream_name))

    threads = [threading.Thread(target=consume, args=(n,), daemon=True) for n in subs]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            for i in range(8):
                client.append_to_stream(
                    f"{prefix}{i}", current_version=StreamState.ANY, events=events(1)
                )
        deadline = time.monotonic() + 5
        while len(received) < 16 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        for sub in subs.values():
            sub.stop()
    assert len(received) == 16
    owners: dict[str, set[str]] = {}
    for name, stream_name in received:
        owners.setdefault(stream_name, set()).add(name)
    assert all(len(names) == 1 for names in owners.values())
    assert {n for names in owners.values() for n in names} == {"a", "b"}


# -- durability --------------------------------------------------------------------------------


@needs_devserver
def test_groups_and_checkpoints_survive_a_restart(tmp_path: Path) -> None:
    stream, group = "orders", "billing"
    with devserver.start(data_dir=tmp_path) as server, EventStoreDBClient(server.uri) as c:
        c.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(5))
        c.create_subscription_to_stream(
            group, stream, min_checkpoint_count=2, max_checkpoint_count=2, message_timeout=2
        )
        c.create_subscription_to_all("everything", filter_include=["Happened"])
        sub = c.read_subscription_to_stream(group, stream, **FAST_ACKS)  # type: ignore[arg-type]
        take(sub, 4)
        take(sub, 1, lambda e: sub.nack(e, "park"))
        wait_for(c, group, stream, lambda i: i.last_checkpointed_event_position == "3")
        sub.stop()
    with devserver.start(data_dir=tmp_path) as server, EventStoreDBClient(server.uri) as c:
        names = sorted(i.group_name for i in c.list_subscriptions())
        assert names == ["billing", "everything"]
        info = c.get_subscription_info(group, stream_name=stream)
        assert info.message_timeout == 2.0
        assert info.last_checkpointed_event_position == "3"
        assert info.parked_message_count == 1
        sub = c.read_subscription_to_stream(group, stream, **FAST_ACKS)  # type: ignore[arg-type]
        try:
            assert [e.stream_position for e in take(sub, 1)] == [4]
        finally:
            sub.stop()
