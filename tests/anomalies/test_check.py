"""The anomaly check: every injected anomaly found at exactly its event, nothing elsewhere."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esworkbench.anomalies import (
    GENERIC_RULES,
    Findings,
    FunctionRule,
    check,
    resolve_rules,
)
from esworkbench.errors import ConfigError
from esworkbench.events import RAW_SCHEMA, archive_line
from esworkbench.examples.bank.rules import AmountOutlier
from esworkbench.examples.bank.sample import (
    ANOMALY_KINDS,
    Anomaly,
    Ledger,
    generate,
    read_truth,
    truth_path,
)
from esworkbench.lake import Lake, sync
from esworkbench.sources import SourceBatch
from esworkbench.sources.files import open_archive

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "ledger.jsonl.gz"
BANK_RULES = "esworkbench.examples.bank.rules:RULES"


def expected_by_kind(truth: list[Anomaly]) -> dict[str, set[str]]:
    """Finding kind -> the events where the ground truth says a check must report it."""
    expected: dict[str, set[str]] = defaultdict(set)
    for a in truth:
        for kind in a.findings:
            expected[kind].add(a.event_id)
    return expected


def found_by_kind(found: Findings) -> dict[str, set[str]]:
    got: dict[str, set[str]] = defaultdict(set)
    for event_id, kind in found.frame.select("event_id", "kind").iter_rows():
        got[kind].add(event_id)
    return got


def lake_of_archive(archive: Path, path: Path) -> Path:
    with Lake(path) as lake:
        sync(open_archive(archive), lake)
    return path


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lake_of_archive(SAMPLE, tmp_path_factory.mktemp("check") / "sample.duckdb")


def test_every_anomaly_of_the_sample_is_found_at_its_event_and_nowhere_else(
    sample_lake: Path,
) -> None:
    truth = read_truth(truth_path(SAMPLE))
    found = check(sample_lake, BANK_RULES)

    expected, got = expected_by_kind(truth), found_by_kind(found)
    print("\nkind: found / expected, precision, recall")
    for kind in sorted(set(expected) | set(got)):
        hits = len(expected[kind] & got[kind])
        precision = hits / len(got[kind]) if got[kind] else 1.0
        recall = hits / len(expected[kind]) if expected[kind] else 1.0
        print(f"  {kind}: {len(got[kind])} / {len(expected[kind])}, {precision}, {recall}")
    # Sets, per kind: precision and recall 1.0 for each of the injected kinds and the rest.
    assert dict(got) == dict(expected)
    assert {a.kind for a in truth} >= set(ANOMALY_KINDS)


def test_findings_carry_the_vocabulary_and_checkable_evidence(sample_lake: Path) -> None:
    found = check(sample_lake, BANK_RULES)
    frame = found.frame

    assert frame.columns[:3] == ["rule", "kind", "severity"]
    assert frame["commit_position"].is_sorted()
    assert frame.filter(pl.col("message").is_null() | (pl.col("message") == "")).height == 0
    # Evidence is JSON that names the values compared.
    drift = frame.filter(pl.col("kind") == "ledger_drift").row(0, named=True)
    evidence = json.loads(drift["evidence"])
    assert {"expected", "recorded", "previous_recorded"} <= set(evidence)
    transfer = frame.filter(pl.col("kind") == "unmatched_transfer").row(0, named=True)
    assert json.loads(transfer["evidence"])["received"] is None
    # Counts by kind and severity, and the first violation per stream.
    counts = dict(found.counts().select("kind", "findings").iter_rows())
    assert counts == dict(frame.group_by("kind").len().iter_rows())
    first = found.first_per_stream()
    assert first.height == frame.select("rule", "kind", "stream_name").n_unique()
    assert found.at_or_above("error")["severity"].unique().to_list() == ["error"]


def test_the_scope_filters_the_findings(sample_lake: Path) -> None:
    everything = check(sample_lake, BANK_RULES)
    stream = everything.frame["stream_name"][0]

    one = check(sample_lake, BANK_RULES, streams=[stream])

    assert set(one.frame["stream_name"]) == {stream}
    assert one.frame.height == everything.frame.filter(pl.col("stream_name") == stream).height


def write_ledger(ledger: Ledger, path: Path) -> Path:
    path.write_text("\n".join(archive_line(e) for e in ledger.events) + "\n")
    return path


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 100_000),
    users=st.integers(25, 60),
    counts=st.fixed_dictionaries({kind: st.integers(0, 2) for kind in ANOMALY_KINDS}),
)
def test_random_anomalies_of_every_kind_come_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, seed: int, users: int, counts: dict[str, int]
) -> None:
    ledger = generate(users=users, seed=seed, days=60, anomalies=counts)  # type: ignore[arg-type]
    base = tmp_path_factory.mktemp("random")
    lake = lake_of_archive(write_ledger(ledger, base / "ledger.jsonl"), base / "l.duckdb")

    found = check(lake, BANK_RULES)

    assert dict(found_by_kind(found)) == dict(expected_by_kind(ledger.truth))


def test_since_last_run_names_new_gone_and_persisting(tmp_path: Path) -> None:
    ledger = generate(users=30, seed=3, days=40)
    lines = [archive_line(e) for e in ledger.events]
    truth = {a.event_id: a for a in ledger.truth}
    # Cut the ledger after the 2nd-to-last injected anomaly: the last comes in the second run.
    last = max((ledger.event_id.index(a.event_id) for a in ledger.truth), default=0)
    first_part = tmp_path / "first.jsonl"
    first_part.write_text("\n".join(lines[:last]) + "\n")
    whole = tmp_path / "whole.jsonl"
    whole.write_text("\n".join(lines) + "\n")
    lake = tmp_path / "l.duckdb"
    with Lake(lake) as opened:
        sync(open_archive(first_part), opened)
    before = check(lake, BANK_RULES)
    before.write_parquet(tmp_path / "before.parquet")
    with Lake(lake) as opened:
        sync(open_archive(whole), opened)

    after = check(lake, BANK_RULES)
    diff = after.since(tmp_path / "before.parquet")

    new = diff.filter(pl.col("status") == "new")
    assert ledger.event_id[last] in set(new["event_id"])
    assert set(new["event_id"]) <= set(truth)  # new findings only where anomalies were written
    assert (
        diff.filter(pl.col("status") == "persisting").height
        == before.frame.height - diff.filter(pl.col("status") == "gone").height
    )
    # An ongoing finding only moves from new to persisting when nothing changes.
    again = after.since(after)
    assert set(again["status"]) == {"persisting"}


def test_a_user_rule_by_import_path_and_a_function_rule(sample_lake: Path) -> None:
    rules = resolve_rules(["esworkbench.anomalies:GENERIC_RULES", AmountOutlier])
    assert [r.name for r in rules] == [r.name for r in GENERIC_RULES] + ["amount_outlier"]

    big = FunctionRule(
        name="big_withdrawals",
        kind="large_cash_withdrawal",
        description="withdrawals over 1,000",
        fn=lambda ctx: ctx.lake.read_sql(
            "SELECT event_id::VARCHAR AS event_id FROM events WHERE event_type = "
            "'BalanceWithdrawn' AND TRY_CAST(json_extract_string(data, '$.amount') AS "
            "DECIMAL(38, 2)) > 1000"
        ),
    )
    found = check(sample_lake, [big])

    with Lake(sample_lake, read_only=True) as lake:
        expected = lake.read_typed("BalanceWithdrawn").filter(pl.col("amount") > 1000)
    assert set(found.frame["event_id"]) == set(expected["event_id"].cast(pl.String))
    assert set(found.frame["kind"]) <= {"large_cash_withdrawal"}


def test_bad_rules_say_what_to_write() -> None:
    with pytest.raises(ConfigError, match="import path"):
        resolve_rules("no_colon_here")
    with pytest.raises(ConfigError, match="not a rule"):
        resolve_rules(42)  # type: ignore[arg-type]


# --- generic rules on small hand-written histories ------------------------------------------


class _Source:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    key = "test:hand"

    def describe(self) -> str:
        return "hand-written events"

    def read_batches(self, after: int | None, *, batch_size: int) -> Any:
        table = pl.DataFrame(self.rows).to_arrow().cast(RAW_SCHEMA)
        yield SourceBatch(table.to_batches()[0], checkpoint=self.rows[-1]["commit_position"])


def hand_lake(
    tmp_path: Path, events: list[tuple[str, int, str, dict[str, Any], dict[str, Any]]]
) -> Path:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        {
            "commit_position": 100 * (i + 1),
            "prepare_position": 100 * (i + 1),
            "stream_name": stream,
            "stream_revision": revision,
            "event_id": f"00000000-0000-0000-0000-{i + 1:012d}",
            "event_type": event_type,
            "created": t0 + timedelta(minutes=i),
            "content_type": "application/json",
            "data": json.dumps(data).encode(),
            "metadata": json.dumps(meta).encode(),
        }
        for i, (stream, revision, event_type, data, meta) in enumerate(events)
    ]
    path = tmp_path / "hand.duckdb"
    with Lake(path) as lake:
        sync(_Source(rows), lake)  # type: ignore[arg-type]
    return path


def ids(found: Findings, kind: str) -> list[int]:
    return [int(e[-12:]) for e in found.frame.filter(pl.col("kind") == kind)["event_id"]]


def test_revision_gaps_and_steps_back(tmp_path: Path) -> None:
    lake = hand_lake(
        tmp_path,
        [
            ("a-1", 0, "Made", {"x": 1}, {}),
            ("a-1", 1, "Made", {"x": 2}, {}),
            ("a-1", 3, "Made", {"x": 3}, {}),  # 2 is missing
            ("a-1", 2, "Made", {"x": 4}, {}),  # and comes late
            ("b-1", 1, "Made", {"x": 5}, {}),  # b-1 never had a revision 0
        ],
    )
    found = check(lake, GENERIC_RULES)
    assert ids(found, "version_gap") == [3, 5]
    assert ids(found, "version_out_of_order") == [4]


def test_schema_drift_is_reported_once_where_a_field_changes_for_good(tmp_path: Path) -> None:
    lake = hand_lake(
        tmp_path,
        [
            ("a-1", 0, "Paid", {"amount": "1.00", "note": "x"}, {"v": 1}),
            ("a-2", 0, "Paid", {"amount": "2.00"}, {"v": 1}),  # note is optional: comes and goes
            ("a-3", 0, "Paid", {"amount": 3, "note": "y"}, {"v": 1}),  # amount turns a number
            ("a-4", 0, "Paid", {"amount": 4}, {"v": 1}),
        ],
    )
    found = check(lake, GENERIC_RULES)
    assert ids(found, "schema_drift") == [3]
    message = found.frame.filter(pl.col("kind") == "schema_drift")["message"][0]
    assert "amount turns number (was string)" in message and "note" not in message


def test_metadata_missing_a_key_its_type_carries_and_dangling_causation(tmp_path: Path) -> None:
    events = [
        ("a-1", i, "Made", {"i": i}, {"$correlationId": "c", "$causationId": "c"})
        for i in range(12)
    ]
    events[5] = ("a-1", 5, "Made", {"i": 5}, {"$causationId": "c"})  # lost its correlation id
    events[8] = (
        "a-1",
        8,
        "Made",
        {"i": 8},
        {"$correlationId": "c", "$causationId": "99999999-0000-0000-0000-000000000000"},
    )
    lake = hand_lake(tmp_path, events)
    found = check(lake, GENERIC_RULES)
    assert ids(found, "metadata_missing_field") == [6]
    assert ids(found, "dangling_reference") == [9]
    assert ids(found, "schema_drift") == []
