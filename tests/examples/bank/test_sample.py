"""The sample ledger: deterministic, realistic, and honest about the anomalies it carries."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from esworkbench.aggregates import decode_event, encode_event
from esworkbench.errors import EsWorkbenchError, EventError
from esworkbench.events import OCCURRED_AT_KEY, RAW_SCHEMA, parse_archive_line
from esworkbench.examples.bank import User, registry
from esworkbench.examples.bank.sample import (
    ANOMALY_KINDS,
    REPLAY_ERRORS,
    Anomaly,
    Ledger,
    generate,
    read_truth,
    truth_path,
    write_archive,
)

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "data" / "sample" / "ledger.jsonl.gz"


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return generate(users=60, seed=3, days=45)


def replay(ledger: Ledger) -> tuple[dict[str, type[Exception]], list[Decimal]]:
    """Replay every stream through User as the fold stage does: errors by event id, balances."""
    users: dict[str, User] = {}
    errors: dict[str, type[Exception]] = {}
    balances = []
    for e in ledger.events:
        user = users.setdefault(e["stream_name"], User(User.aggregate_id_of(e["stream_name"])))
        try:
            event = decode_event(
                registry,
                aggregate_id=user.id,
                stream_revision=e["stream_revision"],
                event_id=e["event_id"],
                event_type=e["event_type"],
                data=e["data"],
                metadata=e["metadata"],
            )
            user.check_next(event)
            try:
                user.apply(event)
            finally:
                user.version = event.aggregate_version
        except EventError as error:  # undecodable: it takes its revision and changes nothing
            user.version += 1
            errors[e["event_id"]] = type(error)
        except EsWorkbenchError as error:
            errors[e["event_id"]] = type(error)
        balances.append(user.balance)
    return errors, balances


# --- determinism ----------------------------------------------------------------------------------


def test_the_same_seed_gives_byte_identical_archives(tmp_path: Path) -> None:
    first, first_truth = write_archive(generate(users=12, seed=5, days=20), tmp_path / "a.jsonl.gz")
    second, second_truth = write_archive(
        generate(users=12, seed=5, days=20), tmp_path / "b.jsonl.gz"
    )

    assert first.read_bytes() == second.read_bytes()
    assert first_truth.read_bytes() == second_truth.read_bytes()


def test_a_different_seed_or_size_gives_a_different_ledger_in_other_streams() -> None:
    base = generate(users=12, seed=5, days=20)
    other_seed = generate(users=12, seed=6, days=20)
    other_size = generate(users=13, seed=5, days=20)

    assert base.data != other_seed.data
    # Ids come from all the parameters: two ledgers can share one EventStoreDB.
    assert not set(base.stream_name) & set(other_seed.stream_name)
    assert not set(base.event_id) & set(other_size.event_id)


def test_event_ids_are_name_based_uuids(ledger: Ledger) -> None:
    ids = [uuid.UUID(i) for i in ledger.event_id]

    assert {i.version for i in ids} == {5}
    assert len(set(ids)) == len(ids)


# --- the shape of the log -------------------------------------------------------------------------


def test_events_are_in_raw_schema_shape_in_all_order_with_gap_free_revisions(
    ledger: Ledger,
) -> None:
    table = ledger.to_arrow()
    revisions = defaultdict(list)
    for stream, revision in zip(ledger.stream_name, ledger.stream_revision, strict=True):
        revisions[stream].append(revision)

    assert table.schema == RAW_SCHEMA and table.num_rows == len(ledger)
    assert table.slice(7, 1).to_pylist() == [ledger.events[7]]
    assert all(a < b for a, b in itertools.pairwise(ledger.commit_position))
    assert all(r == list(range(len(r))) for r in revisions.values())
    assert len(revisions) == ledger.users


def test_created_is_the_business_time_and_only_backdated_events_go_back_in_time(
    ledger: Ledger,
) -> None:
    backdated = {a.event_id for a in ledger.truth if a.kind == "timestamp_out_of_order"}
    went_back = []
    previous: dict[str, int] = {}
    for e, created in zip(ledger.events, ledger.created_us, strict=True):
        metadata = json.loads(e["metadata"])
        assert metadata[OCCURRED_AT_KEY] == e["created"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if created < previous.get(e["stream_name"], 0):
            went_back.append(e["event_id"])
        previous[e["stream_name"]] = created

    assert set(went_back) == backdated


def test_normal_events_are_byte_for_byte_what_the_repository_writes(ledger: Ledger) -> None:
    checked = 0
    for first, stop, raw in ledger.batches():
        if raw:
            continue
        for i in range(first, stop):
            e = ledger.events[i]
            event = decode_event(
                registry,
                aggregate_id=User.aggregate_id_of(e["stream_name"]),
                stream_revision=e["stream_revision"],
                event_id=e["event_id"],
                event_type=e["event_type"],
                data=e["data"],
                metadata=e["metadata"],
            )
            stored = encode_event(event, registry)
            assert (stored.data, stored.metadata) == (e["data"], e["metadata"])
            checked += 1

    assert checked > 0.95 * len(ledger)


def test_one_append_per_unit_of_work_on_one_stream(ledger: Ledger) -> None:
    sizes = Counter()
    for first, stop, _ in ledger.batches():
        assert len(set(ledger.stream_name[first:stop])) == 1
        sizes[stop - first] += 1

    assert set(sizes) == {1, 2}  # openings (account + first deposit) and closings go together


def test_transfers_pair_up_by_id_the_receiver_caused_by_the_sender(ledger: Ledger) -> None:
    sent: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    received = 0
    for e in ledger.events:
        if e["event_type"] == "TransferSent":
            sent[json.loads(e["data"])["transferId"]] = (json.loads(e["data"]), e)
        elif e["event_type"] == "TransferReceived":
            data, metadata = json.loads(e["data"]), json.loads(e["metadata"])
            sender_data, sender = sent[data["transferId"]]
            assert data["amount"] == sender_data["amount"]
            assert data["fromUserId"] == sender_data["userId"]
            assert metadata["$causationId"] == sender["event_id"]
            received += 1

    assert received == len(sent) - ledger.counts()["unmatched_transfer"] > 0


def test_users_opened_early_were_written_by_the_older_user_created_writers(
    ledger: Ledger,
) -> None:
    versions = Counter()
    for e in ledger.events:
        if e["event_type"] == "UserCreated":
            data, metadata = json.loads(e["data"]), json.loads(e["metadata"])
            version = metadata.get("schemaVersion", 1)
            versions[version] += 1
            assert ("fullName" in data) == (version == 1)
            assert ("overdraftLimit" in data) == (version == 3)

    assert set(versions) == {1, 2, 3}


def test_spending_has_a_weekly_rhythm_with_weekend_dips() -> None:
    ledger = generate(users=150, seed=2, days=56)
    per_weekday = Counter(
        e["created"].weekday() for e in ledger.events if e["event_type"] == "BalanceWithdrawn"
    )

    assert per_weekday[4] > per_weekday[2] > per_weekday[5] > per_weekday[6]


# --- ground truth ---------------------------------------------------------------------------------


def test_anomalies_come_in_the_counts_asked_for(ledger: Ledger) -> None:
    assert ledger.counts() == dict.fromkeys(ANOMALY_KINDS, 3)
    custom = generate(users=10, seed=1, days=30, anomalies={"overdraft": 4, "malformed_json": 1})
    assert {k: n for k, n in custom.counts().items() if n} == {"overdraft": 4, "malformed_json": 1}


def test_each_truth_row_points_at_an_event_of_the_right_shape(ledger: Ledger) -> None:
    at = {
        (s, r): i
        for i, (s, r) in enumerate(zip(ledger.stream_name, ledger.stream_revision, strict=True))
    }
    closed_streams: set[str] = set()
    for e in ledger.events:
        truth = next((a for a in ledger.truth if a.event_id == e["event_id"]), None)
        if truth is not None:
            assert at[truth.stream_name, truth.stream_revision] == ledger.event_id.index(
                truth.event_id
            )
            check_shape(truth, e, ledger, closed_streams)
        if e["event_type"] == "UserClosed":
            closed_streams.add(e["stream_name"])


def check_shape(a: Anomaly, e: dict[str, Any], ledger: Ledger, closed: set[str]) -> None:
    data: Any = None
    if e["content_type"] == "application/json":
        try:
            data = json.loads(e["data"])
        except ValueError:
            data = None
    match a.kind:
        case "ledger_drift":
            assert e["event_type"] in ("BalanceDeposited", "BalanceWithdrawn")
            assert "drift" in a.detail and data["newBalance"] in a.detail
        case "overdraft":
            assert e["event_type"] == "BalanceWithdrawn"
            assert f"recorded newBalance {data['newBalance']})" in a.detail
            assert "past the overdraft limit" in a.detail
        case "unmatched_transfer":
            assert e["event_type"] == "TransferSent" and data["transferId"] in a.detail
        case "activity_after_close":
            assert e["stream_name"] in closed
        case "duplicate_event":
            previous = ledger.event_id.index(e["event_id"]) - 1
            assert (ledger.data[previous], ledger.metadata[previous]) == (e["data"], e["metadata"])
            assert ledger.stream_name[previous] == e["stream_name"]
        case "timestamp_out_of_order":
            assert e["event_type"] == "BalanceDeposited"
        case "unknown_event_type":
            assert e["event_type"] not in registry and data["userId"]
        case "malformed_json":
            assert e["content_type"] == "application/json" and data is None
        case "binary_payload":
            assert e["content_type"] == "application/octet-stream"
            assert e["event_type"] in registry
            with pytest.raises(UnicodeDecodeError):
                e["data"].decode()
        case "amount_outlier":
            assert e["event_type"] == "BalanceDeposited"
            assert Decimal(data["amount"]) > 20_000


def test_replay_raises_exactly_at_the_truth_and_reproduces_the_expected_balances(
    ledger: Ledger,
) -> None:
    errors, balances = replay(ledger)

    expected = {
        a.event_id: REPLAY_ERRORS[a.kind] for a in ledger.truth if REPLAY_ERRORS[a.kind] is not None
    }
    assert errors == expected
    assert balances == [b for _, _, b in ledger.expected_balances]


def test_without_anomalies_every_event_replays_cleanly() -> None:
    clean = generate(users=20, seed=9, days=30, anomalies={})

    errors, _ = replay(clean)

    # Nothing injected: the truth holds only the schema changes the legacy writers made.
    assert {a.kind for a in clean.truth} <= {"schema_change"} and errors == {}
    assert not any(
        clean.batch_raw[i]
        for i, (first, _, _) in enumerate(clean.batches())
        if clean.stream_revision[first] > 0
    )


def test_the_truth_file_sits_beside_the_archive_and_reads_back(
    tmp_path: Path, ledger: Ledger
) -> None:
    archive, truth = write_archive(ledger, tmp_path / "x" / "ledger.jsonl")

    assert truth == truth_path(archive) == tmp_path / "x" / "ledger.truth.jsonl"
    assert read_truth(truth) == ledger.truth
    lines = archive.read_text().splitlines()
    assert [parse_archive_line(line) for line in lines] == list(ledger.events)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"users": 1, "seed": 1}, "at least 2"),
        ({"users": 5, "seed": 1, "days": 0}, "at least 1"),
        ({"users": 5, "seed": 1, "anomalies": {"typo": 1}}, "anomalies must map kinds"),
        ({"users": 5, "seed": 1, "anomalies": {"overdraft": -1}}, "anomalies must map kinds"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)


# --- the committed sample -------------------------------------------------------------------------


def test_the_committed_sample_is_what_its_documented_command_regenerates(tmp_path: Path) -> None:
    readme = (SAMPLE.parent / "README.md").read_text()
    command = re.search(
        r"esworkbench seed --out (\S+) --users (\d+) --seed (\d+) --days (\d+)", readme
    )
    assert command is not None, "data/sample/README.md must document the seed command"
    out, users, seed, days = command.groups()
    assert ROOT / out == SAMPLE

    archive, truth = write_archive(
        generate(users=int(users), seed=int(seed), days=int(days)), tmp_path / SAMPLE.name
    )

    # Compare the JSONL, not the gzip bytes: another zlib may compress the same text otherwise.
    assert gzip.decompress(archive.read_bytes()) == gzip.decompress(SAMPLE.read_bytes())
    assert truth.read_bytes() == truth_path(SAMPLE).read_bytes()
    ledger = read_truth(truth_path(SAMPLE))
    assert Counter(a.kind for a in ledger if a.kind in ANOMALY_KINDS) == dict.fromkeys(
        ANOMALY_KINDS, 3
    )
    # UserCreated v1 -> v2 -> v3: two schema changes, each the first event of its schema.
    assert [a.detail for a in ledger if a.kind == "schema_change"] == [
        "the first UserCreated written by schema v2 (before: v1)",
        "the first UserCreated written by schema v3 (before: v2)",
    ]
