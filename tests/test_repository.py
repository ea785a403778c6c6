"""The production write path: aggregates saved to EventStoreDB and loaded back, and seeding.

Runs against the session's EventStoreDB (the development server, or ESWORKBENCH_ESDB_URI).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from esdbclient import EventStoreDBClient

from esworkbench.aggregates import EventStoreRepository, event_metadata
from esworkbench.errors import AggregateNotFoundError, ConcurrencyError
from esworkbench.examples.bank import User, transfer
from esworkbench.examples.bank.sample import generate
from esworkbench.examples.bank.seed import seed_esdb, write_esdb


@pytest.fixture(scope="module")
def client(esdb_uri: str) -> Iterator[EventStoreDBClient]:
    c = EventStoreDBClient(esdb_uri)
    yield c
    c.close()


@pytest.fixture
def repo(client: EventStoreDBClient) -> EventStoreRepository[User]:
    return EventStoreRepository(User, client=client)


def new_id() -> str:
    return str(uuid.uuid4())


def test_a_saved_user_loads_back_with_its_state_and_version(
    repo: EventStoreRepository[User],
    client: EventStoreDBClient,
) -> None:
    uid = new_id()
    meta = event_metadata(
        correlation_id="req-1", causation_id="req-1", occurred_at="2024-05-01T09:00:00.000000Z"
    )
    ada = User.create(uid, name="Ada", email="ada@example.com", metadata=meta)
    ada.deposit("120.50", metadata=meta)
    ids = [e.event_id for e in ada.uncommitted_events]

    position = repo.save(ada)

    assert isinstance(position, int) and ada.uncommitted_events == []
    loaded = repo.load(uid)
    assert (loaded.state(), loaded.version) == (ada.state(), 1)
    recorded = client.get_stream(f"user-{uid}")
    assert [str(r.id) for r in recorded] == ids
    assert [r.content_type for r in recorded] == ["application/json"] * 2
    assert json.loads(recorded[1].data) == {
        "userId": uid,
        "amount": "120.50",
        "newBalance": "120.50",
    }
    assert json.loads(recorded[1].metadata) == {**meta, "schemaVersion": 1}
    assert recorded[-1].commit_position == position


def test_saving_again_appends_after_the_version_loaded(repo: EventStoreRepository[User]) -> None:
    uid = new_id()
    repo.save(User.create(uid, name="Bo", email="bo@example.com"))

    bo = repo.load(uid)
    bo.deposit("10.00")
    bo.withdraw("2.50")
    repo.save(bo)

    assert repo.save(bo) is None  # nothing new to write
    again = repo.load(uid)
    assert (again.balance, again.version) == (Decimal("7.50"), 2)


def test_a_concurrent_writer_gets_a_conflict_naming_the_stream_and_both_versions(
    repo: EventStoreRepository[User],
) -> None:
    uid = new_id()
    repo.save(User.create(uid, name="Cy", email="cy@example.com"))
    first, second = repo.load(uid), repo.load(uid)
    first.deposit("5.00")
    first.deposit("6.00")
    repo.save(first)
    second.deposit("7.00")

    with pytest.raises(ConcurrencyError) as caught:
        repo.save(second)

    error = caught.value
    assert (error.stream_name, error.expected_version, error.actual_version) == (
        f"user-{uid}",
        0,
        2,
    )
    assert "Reload the aggregate and retry" in str(error)
    assert len(second.uncommitted_events) == 1  # nothing lost: reload and retry
    assert repo.load(uid).balance == Decimal("11.00")


def test_creating_a_user_whose_stream_exists_is_a_conflict_with_no_stream_expected(
    repo: EventStoreRepository[User],
) -> None:
    uid = new_id()
    repo.save(User.create(uid, name="Di", email="di@example.com"))

    with pytest.raises(ConcurrencyError) as caught:
        repo.save(User.create(uid, name="Di again", email="di@example.com"))

    assert (caught.value.expected_version, caught.value.actual_version) == (None, 0)


def test_loading_a_user_that_was_never_saved_is_a_lookup_error(
    repo: EventStoreRepository[User],
) -> None:
    with pytest.raises(AggregateNotFoundError) as caught:
        repo.load(new_id())

    assert isinstance(caught.value, LookupError)


def test_a_transfer_is_two_saves_and_a_retried_save_writes_nothing_twice(
    repo: EventStoreRepository[User],
    client: EventStoreDBClient,
) -> None:
    a, b = new_id(), new_id()
    repo.save(User.create(a, name="Ed", email="ed@example.com"))
    repo.save(User.create(b, name="Flo", email="flo@example.com"))
    sender, receiver = repo.load(a), repo.load(b)
    sent, _ = transfer(sender, receiver, "30.00")

    position = repo.append_events(sender.stream_name, [sent], expected_version=0)
    retried = repo.append_events(sender.stream_name, [sent], expected_version=0)
    repo.save(receiver)

    assert retried == position  # the server recognised the retry by its event id
    assert len(client.get_stream(f"user-{a}")) == 2
    assert repo.load(b).balance == Decimal("30.00")


def test_the_repository_opens_and_closes_its_own_client_from_a_uri(esdb_uri: str) -> None:
    uid = new_id()
    with EventStoreRepository(User, esdb_uri) as repo:
        repo.save(User.create(uid, name="Gus", email="gus@example.com"))
        assert repo.load(uid).name == "Gus"
    with pytest.raises(ValueError, match="exactly one"):
        EventStoreRepository(User)


# --- seeding ------------------------------------------------------------------------------------


def test_seeding_writes_the_ledger_in_order_and_a_rerun_writes_nothing(
    esdb_uri: str,
    client: EventStoreDBClient,
) -> None:
    # A seed of its own, so that a long-lived EventStoreDB has not seen this ledger before.
    seed = uuid.uuid4().int % 1_000_000
    ledger = generate(users=8, seed=seed, days=21)

    first = seed_esdb(esdb_uri, users=8, seed=seed, days=21)
    again = seed_esdb(esdb_uri, users=8, seed=seed, days=21)

    assert (first.events, first.written, first.anomalies) == (len(ledger), len(ledger), 10)
    assert first.appends == len(ledger.batch_start) < len(ledger)
    assert (again.written, again.last_commit_position) == (0, first.last_commit_position)
    stored = [r for stream in dict.fromkeys(ledger.stream_name) for r in client.get_stream(stream)]
    assert len(stored) == len(ledger)
    by_id = {str(r.id): r for r in stored}
    for e in ledger.events:
        r = by_id[e["event_id"]]
        assert (r.stream_name, r.stream_position, r.type, r.content_type, r.data, r.metadata) == (
            e["stream_name"],
            e["stream_revision"],
            e["event_type"],
            e["content_type"],
            e["data"],
            e["metadata"],
        )
    # $all order is the ledger's order.
    positions = [by_id[i].commit_position for i in ledger.event_id]
    assert positions == sorted(positions)


def test_a_stream_seeded_clean_loads_through_the_repository(
    esdb_uri: str,
    repo: EventStoreRepository[User],
) -> None:
    ledger = generate(users=6, seed=uuid.uuid4().int % 1_000_000, days=14, anomalies={})
    write_esdb(ledger, esdb_uri)

    for stream in dict.fromkeys(ledger.stream_name):
        user = repo.load(User.aggregate_id_of(stream))
        last = max(i for i, s in enumerate(ledger.stream_name) if s == stream)
        assert user.version == ledger.stream_revision[last]
        assert user.balance == ledger.expected_balances[last][2]
