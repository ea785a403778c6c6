"""Replay through production aggregates: given events, when folded, then this state."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from esworkbench.errors import ConfigError, FoldError
from esworkbench.events import RAW_SCHEMA
from esworkbench.examples.bank import User
from esworkbench.examples.bank.balances import BANK_SIGNS, bank_balances
from esworkbench.examples.bank.sample import REPLAY_ERRORS, Ledger, generate
from esworkbench.fold import (
    FINDINGS_COLUMNS,
    OnError,
    Replay,
    replay,
    replay_frame,
    resolve_aggregate,
    state_as_of,
    with_rejected,
)
from esworkbench.lake import Lake, sync
from esworkbench.sources import SourceBatch

BANK = "esworkbench.examples.bank:User"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
MONEY = pl.Decimal(38, 2)


@dataclass
class History:
    """Envelope rows, as the lake returns them, written one event at a time."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    revisions: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        stream: str,
        event_type: str,
        data: Mapping[str, Any],
        *,
        revision: int | None = None,
        occurred_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        revision = self.revisions.get(stream, -1) + 1 if revision is None else revision
        self.revisions[stream] = revision
        position = (len(self.rows) + 1) * 100
        when = T0 + timedelta(hours=len(self.rows)) if occurred_at is None else occurred_at
        event_id = f"00000000-0000-0000-0000-{len(self.rows):012d}"
        self.rows.append(
            {
                "commit_position": position,
                "stream_name": stream,
                "stream_revision": revision,
                "event_id": event_id,
                "event_type": event_type,
                "created": T0 + timedelta(hours=len(self.rows)),
                "occurred_at": when,
                "data": json.dumps(dict(data)),
                "metadata": json.dumps(dict(metadata or {})),
            }
        )
        return event_id

    # The bank's stored shapes, written the way production writes them.
    def opened(self, user: str, *, limit: str = "100.00", **kw: Any) -> str:
        data = {
            "userId": user,
            "name": f"User {user}",
            "email": f"u{user}@example.com",
            "overdraftLimit": limit,
        }
        return self.add(f"user-{user}", "UserCreated", data, metadata={"schemaVersion": 3}, **kw)

    def deposit(self, user: str, amount: str, new_balance: str, **kw: Any) -> str:
        data = {"userId": user, "amount": amount, "newBalance": new_balance}
        return self.add(f"user-{user}", "BalanceDeposited", data, **kw)

    def withdraw(self, user: str, amount: str, new_balance: str, **kw: Any) -> str:
        data = {"userId": user, "amount": amount, "newBalance": new_balance}
        return self.add(f"user-{user}", "BalanceWithdrawn", data, **kw)

    def closed(self, user: str, **kw: Any) -> str:
        return self.add(f"user-{user}", "UserClosed", {"userId": user}, **kw)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows).with_columns(
            pl.col("commit_position", "stream_revision").cast(pl.UInt64)
        )


def balances(timeline: pl.DataFrame, stream: str) -> list[Decimal]:
    return timeline.filter(pl.col("stream_name") == stream)["balance"].to_list()


# --- the timeline ---------------------------------------------------------------------------


def test_each_event_gives_one_row_with_the_state_after_it() -> None:
    h = History()
    h.opened("1")
    h.opened("2")
    h.deposit("1", "100.00", "100.00")
    h.withdraw("1", "30.50", "69.50")
    h.deposit("2", "5.00", "5.00")

    timeline = replay_frame(h.frame(), BANK).timeline

    assert timeline.columns[:7] == [
        "stream_name",
        "stream_revision",
        "commit_position",
        "created",
        "occurred_at",
        "event_type",
        "event_id",
    ]
    assert timeline.columns[-1] == "changed"
    assert timeline["commit_position"].to_list() == [100, 200, 300, 400, 500]
    expected = pl.DataFrame(
        {
            "stream_name": ["user-1", "user-2", "user-1", "user-1", "user-2"],
            "stream_revision": [0, 0, 1, 2, 1],
            "balance": [
                Decimal("0.00"),
                Decimal("0.00"),
                Decimal("100.00"),
                Decimal("69.50"),
                Decimal("5.00"),
            ],
            "name": ["User 1", "User 2", "User 1", "User 1", "User 2"],
            "closed": [False] * 5,
            "changed": [
                ["name", "email", "overdraft_limit"],
                ["name", "email", "overdraft_limit"],
                ["balance", "recorded_balance", "last_amount", "total_in"],
                ["balance", "recorded_balance", "last_amount", "total_out"],
                ["balance", "recorded_balance", "last_amount", "total_in"],
            ],
        },
        schema_overrides={"stream_revision": pl.UInt64, "balance": MONEY},
    )
    assert_frame_equal(timeline.select(expected.columns), expected)
    assert timeline.schema["created"] == pl.Datetime("us", "UTC")
    assert timeline.schema["overdraft_limit"] == MONEY


def test_old_payload_versions_are_upcast_before_the_aggregate_sees_them() -> None:
    h = History()
    # v1 UserCreated: `fullName`, no limit; absent schemaVersion means version 1.
    h.add("user-7", "UserCreated", {"userId": "7", "fullName": "Grace", "email": "g@example.com"})

    timeline = replay_frame(h.frame(), BANK).timeline

    assert timeline.row(0, named=True)["name"] == "Grace"
    assert timeline.row(0, named=True)["overdraft_limit"] == Decimal("100.00")


# --- findings -------------------------------------------------------------------------------


def overdraft_story() -> History:
    h = History()
    h.opened("1", limit="0.00")
    h.deposit("1", "10.00", "10.00")
    h.withdraw("1", "25.00", "-15.00")  # rev 2: past a limit of 0
    h.deposit("1", "20.00", "5.00")
    return h


def test_a_rule_error_is_a_finding_and_stop_ends_that_stream() -> None:
    h = overdraft_story()
    h.opened("2")
    h.deposit("2", "1.00", "1.00")

    result = replay_frame(h.frame(), BANK, on_error="stop")

    assert result.findings.columns == list(FINDINGS_COLUMNS)
    finding = result.findings.row(0, named=True)
    assert (finding["stream_name"], finding["stream_revision"]) == ("user-1", 2)
    assert (finding["kind"], finding["error"]) == ("overdraft", "OverdraftLimitExceeded")
    assert (finding["rule"], finding["severity"]) == ("replay", "error")
    assert json.loads(finding["evidence"]) == {
        "balance_before": "10.00",
        "amount": "25.00",
        "balance_after": "-15.00",
        "overdraft_limit": "0.00",
    }
    assert "1 later event(s) not replayed" in finding["message"]
    assert balances(result.timeline, "user-1") == [Decimal("0.00"), Decimal("10.00")]
    assert balances(result.timeline, "user-2") == [Decimal("0.00"), Decimal("1.00")]


def test_skip_goes_on_with_the_state_the_aggregate_left() -> None:
    result = replay_frame(overdraft_story().frame(), BANK, on_error="skip")

    # The bank applies the amount and then objects, so the balance keeps the withdrawal.
    assert balances(result.timeline, "user-1") == [
        Decimal("0.00"),
        Decimal("10.00"),
        Decimal("-15.00"),
        Decimal("5.00"),
    ]
    assert result.findings["error"].to_list() == ["OverdraftLimitExceeded"]
    assert result.findings["message"].str.contains("stopped").to_list() == [False]


def test_activity_after_close_is_a_finding_and_the_money_still_counts() -> None:
    h = History()
    h.opened("1")
    h.closed("1")
    late = h.deposit("1", "3.00", "3.00")

    result = replay_frame(h.frame(), BANK, on_error="skip")

    assert result.findings.select("event_id", "error").rows() == [(late, "AccountClosed")]
    last = result.timeline.row(-1, named=True)
    assert (last["closed"], last["balance"]) == (True, Decimal("3.00"))


def test_a_version_gap_is_a_finding_and_skip_resumes_at_the_next_event() -> None:
    h = History()
    h.opened("1")
    h.deposit("1", "10.00", "10.00")
    h.deposit("1", "5.00", "25.00", revision=3)  # revision 2 is missing from the lake

    stopped = replay_frame(h.frame(), BANK, on_error="stop")
    skipped = replay_frame(h.frame(), BANK)

    assert stopped.findings.select("stream_revision", "kind", "error").rows() == [
        (3, "version_gap", "HistoryError")
    ]
    assert stopped.timeline["stream_revision"].to_list() == [0, 1]
    # Resumed at revision 3: its amount is applied, and the missing 10.00 shows up as drift.
    assert skipped.findings.select("stream_revision", "error").rows() == [
        (3, "HistoryError"),
        (3, "LedgerDriftError"),
    ]
    assert balances(skipped.timeline, "user-1")[-1] == Decimal("15.00")


def test_unknown_types_and_undecodable_payloads_are_findings_not_dropped() -> None:
    h = History()
    h.opened("1")
    h.add("user-1", "LoyaltyPointsAwarded", {"points": 5})
    h.add("user-1", "BalanceDeposited", {"userId": "1", "amount": 12.5, "newBalance": "12.50"})
    h.add("user-1", "BalanceDeposited", {"userId": "1", "amount": "1.00"})
    h.add(
        "user-1",
        "BalanceDeposited",
        {"userId": "1", "amount": "2.00", "newBalance": "2.00"},
        metadata={"schemaVersion": 9},
    )
    h.add("user-1", "EmailChanged", {"userId": "1", "email": "new@example.com"})

    result = replay_frame(h.frame(), BANK, on_error="skip")

    assert result.findings.select("stream_revision", "kind").rows() == [
        (1, "unknown_event_type"),
        (2, "decode_error"),
        (3, "decode_error"),
        (4, "decode_error"),
    ]
    # Nothing undecodable moved the balance; the replay reached the last event.
    assert result.timeline["balance"].to_list() == [Decimal("0.00")] * 6
    assert result.timeline["email"].to_list()[-1] == "new@example.com"
    assert result.timeline["changed"].to_list()[1:5] == [[], [], [], []]


def test_an_aggregate_bug_is_a_fold_error_naming_the_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_domain(tmp_path, monkeypatch, name="buggy_domain")
    h = History()
    h.add("acct-2", "Opened", {"owner": "bo"})
    h.add("acct-1", "Opened", {"owner": "ada"})
    h.add("acct-1", "Credited", {"amount": "boom"})  # decodes, then apply raises

    for workers in (1, 2):
        with pytest.raises(FoldError, match=r"InvalidOperation on acct-1@1 \(Credited"):
            replay_frame(h.frame(), f"{module}:Account", workers=workers, batch_size=1)


# --- user-defined aggregates ------------------------------------------------------------------

DOMAIN = '''
"""A production domain outside esworkbench: checks its rules before it mutates."""

import dataclasses
from decimal import Decimal

from esworkbench.aggregates import AggregateRoot, DomainEvent
from esworkbench.errors import DomainRuleError
from esworkbench.events import EventRegistry

registry = EventRegistry()


@registry.register("Opened")
@dataclasses.dataclass(frozen=True)
class Opened:
    owner: str

    @classmethod
    def from_json(cls, data):
        return cls(data["owner"])

    def to_json(self):
        return {"owner": self.owner}


@registry.register("Credited")
@dataclasses.dataclass(frozen=True)
class Credited:
    amount: str

    @classmethod
    def from_json(cls, data):
        return cls(data["amount"])

    def to_json(self):
        return {"amount": self.amount}


class Frozen(DomainRuleError):
    pass


class Account(AggregateRoot):
    stream_prefix = "acct"
    registry = registry

    def __init__(self, aggregate_id):
        super().__init__(aggregate_id)
        self.owner = None
        self.total = Decimal("0")
        self.history = []

    def apply(self, event: DomainEvent) -> None:
        match event.data:
            case Opened(owner=owner):
                self.owner = owner
            case Credited(amount=amount):
                if self.total >= 100:
                    raise Frozen(f"account {self.id} is frozen at {self.total}")
                self.total += Decimal(amount)  # a ValueError-like bug on bad input
                self.history.append(amount)
'''


def write_domain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, name: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(DOMAIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_user_defined_aggregate_by_import_path_works_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_domain(tmp_path, monkeypatch, name="mydomain")
    h = History()
    h.add("acct-1", "Opened", {"owner": "ada"})
    h.add("acct-1", "Credited", {"amount": "60"})
    h.add("acct-1", "Credited", {"amount": "50"})
    h.add("acct-1", "Credited", {"amount": "1"})  # refused: frozen at 110
    h.add("acct-1", "Credited", {"amount": "2"})

    result = replay_frame(h.frame(), f"{module}:Account", on_error="skip")

    assert result.aggregate is resolve_aggregate(f"{module}:Account")
    assert result.timeline["total"].to_list() == [0, 60, 110, 110, 110]
    # A list in the state is copied when recorded: later appends do not rewrite earlier rows.
    assert result.timeline["history"].to_list() == [
        [],
        ["60"],
        ["60", "50"],
        ["60", "50"],
        ["60", "50"],
    ]
    assert result.findings.select("stream_revision", "error").rows() == [
        (3, "Frozen"),
        (4, "Frozen"),
    ]


def test_resolve_aggregate_names_the_fix() -> None:
    assert resolve_aggregate(BANK) is User
    assert resolve_aggregate(User) is User
    with pytest.raises(ConfigError, match=r"package\.module:Class"):
        resolve_aggregate("esworkbench.examples.bank.User")
    with pytest.raises(ConfigError, match="has no 'Nobody'"):
        resolve_aggregate("esworkbench.examples.bank:Nobody")
    with pytest.raises(ConfigError, match="not an AggregateRoot"):
        resolve_aggregate("esworkbench.examples.bank:money")
    with pytest.raises(ConfigError, match="on_error"):
        replay_frame(empty_events(), BANK, on_error="ignore")  # type: ignore[arg-type]


def empty_events() -> pl.DataFrame:
    h = History()
    h.opened("1")
    return h.frame().clear()


def test_no_events_gives_empty_frames_with_the_state_columns() -> None:
    result = replay_frame(empty_events(), BANK)

    assert result.timeline.height == 0
    assert "balance" in result.timeline.columns
    assert result.findings.columns == list(FINDINGS_COLUMNS)


# --- parallel -------------------------------------------------------------------------------


def random_history(seed: int, users: int, events: int) -> History:
    import random

    rng = random.Random(seed)
    h = History()
    balance: dict[str, Decimal] = {}
    for i in range(events):
        user = str(rng.randrange(users))
        if user not in balance:
            h.opened(user)
            balance[user] = Decimal("0.00")
            continue
        amount = Decimal(rng.randrange(1, 5000)).scaleb(-2)
        if rng.random() < 0.5:
            balance[user] += amount
            h.deposit(user, f"{amount:.2f}", f"{balance[user]:.2f}")
        else:
            balance[user] -= amount
            recorded = balance[user] + (Decimal("1.00") if i % 97 == 0 else 0)
            h.withdraw(user, f"{amount:.2f}", f"{recorded:.2f}")
    return h


@pytest.mark.parametrize("on_error", ["stop", "skip"])
def test_parallel_replay_equals_sequential(on_error: OnError) -> None:
    events = random_history(seed=5, users=40, events=3000).frame()

    sequential = replay_frame(events, BANK, on_error=on_error)
    parallel = replay_frame(events, BANK, on_error=on_error, workers=2, batch_size=200)

    assert sequential.findings.height > 0
    assert_frame_equal(parallel.timeline, sequential.timeline)
    assert_frame_equal(parallel.findings, sequential.findings)


# --- the vectorized path ----------------------------------------------------------------------


def test_bank_signs_cover_every_money_event_of_the_domain() -> None:
    money_events = {"BalanceDeposited", "BalanceWithdrawn", "TransferSent", "TransferReceived"}
    assert set(BANK_SIGNS) == money_events
    assert money_events <= set(User.registry.event_types)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), users=st.integers(1, 6), events=st.integers(1, 80))
def test_fold_equals_vectorized_balance(seed: int, users: int, events: int) -> None:
    h = random_history(seed, users, events)

    folded = replay_frame(h.frame(), BANK, on_error="skip").timeline
    vectorized = bank_balances(h.frame())

    together = vectorized.join(
        folded.select("event_id", pl.col("balance").alias("fold")), on="event_id", how="left"
    )
    assert_frame_equal(together.select(pl.col("fold").alias("balance")), together.select("balance"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), users=st.integers(1, 6), events=st.integers(2, 80))
def test_vectorized_balances_do_not_depend_on_the_order_rows_come_in(
    seed: int, users: int, events: int
) -> None:
    # In commit order the sums run in place; any other order (and a stream whose revisions
    # fall as positions rise) takes the sorting path. Both must give the same frame.
    frame = random_history(seed, users, events).frame()
    in_order = bank_balances(frame)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    assert_frame_equal(bank_balances(shuffled), in_order)
    swapped = frame.with_columns(
        pl.col("commit_position").reverse().over("stream_name").alias("commit_position")
    )
    expected = bank_balances(swapped.sort("stream_name", "stream_revision")).sort("commit_position")
    assert_frame_equal(bank_balances(swapped), expected)


def test_the_vectorized_path_reports_drift_where_the_recorded_balance_disagrees() -> None:
    h = History()
    h.opened("1")
    h.deposit("1", "10.00", "10.00")
    drifted = h.withdraw("1", "2.50", "8.00")  # the amounts give 7.50
    back = h.deposit("1", "1.00", "8.50")  # back in line with the amounts: a second break

    vectorized = bank_balances(h.frame())

    assert vectorized.columns == [
        "stream_name",
        "stream_revision",
        "commit_position",
        "occurred_at",
        "event_type",
        "event_id",
        "amount",
        "balance",
        "new_balance",
        "drift",
        "chain_break",
    ]
    assert vectorized["amount"].to_list() == [Decimal("10.00"), Decimal("-2.50"), Decimal("1.00")]
    assert vectorized["balance"].to_list() == [Decimal("10.00"), Decimal("7.50"), Decimal("8.50")]
    assert vectorized.filter(pl.col("drift") != 0)["event_id"].to_list() == [drifted]
    assert vectorized["chain_break"].to_list() == [
        Decimal("0.00"),
        Decimal("0.50"),
        Decimal("-0.50"),
    ]
    assert vectorized.filter(pl.col("chain_break") != 0)["event_id"].to_list() == [drifted, back]
    assert vectorized.schema["balance"] == MONEY


# --- the sample ledger, through the lake --------------------------------------------------------


@dataclass
class LedgerSource:
    """A generated ledger as an EventSource: what its JSONL archive would yield."""

    table: pa.Table
    key: str = "test:sample-ledger"

    def describe(self) -> str:
        return "sample ledger"

    def read_batches(self, after: int | None, *, batch_size: int) -> Iterator[SourceBatch]:
        for batch in self.table.to_batches(max_chunksize=batch_size):
            yield SourceBatch(batch, int(batch.column("commit_position")[-1].as_py()))


@dataclass(frozen=True)
class Sample:
    ledger: Ledger
    lake: Path
    replayed: Replay  # on_error="skip", sequential


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    ledger = generate(users=120, seed=11, days=60)
    path = tmp_path_factory.mktemp("fold") / "lake.duckdb"
    with Lake(path) as lake:
        sync(LedgerSource(ledger.to_arrow()), lake)
    return Sample(ledger, path, replay(path, BANK, on_error="skip"))


def expected_balances(ledger: Ledger) -> pl.DataFrame:
    return pl.DataFrame(
        ledger.expected_balances,
        schema=["stream_name", "stream_revision", "balance"],
        orient="row",
    ).with_columns(pl.col("stream_revision").cast(pl.UInt64), pl.col("balance").cast(MONEY))


def test_replay_reproduces_the_generators_own_balances(sample: Sample) -> None:
    timeline = sample.replayed.timeline

    # Every event has its row, even those the lake rejected (their state is unchanged).
    assert timeline.height == len(sample.ledger)
    got = timeline.select("stream_name", "stream_revision", "balance").sort(
        "stream_name", "stream_revision"
    )
    assert_frame_equal(got, expected_balances(sample.ledger).sort("stream_name", "stream_revision"))


def test_findings_pin_exactly_the_anomalies_replay_can_see(sample: Sample) -> None:
    findings = sample.replayed.findings
    seen = {k for k, v in REPLAY_ERRORS.items() if v is not None}
    expected = {
        (a.stream_name, a.stream_revision, a.event_id, REPLAY_ERRORS[a.kind].__name__)  # type: ignore[union-attr]
        for a in sample.ledger.truth
        if a.kind in seen
    }

    got = set(findings.select("stream_name", "stream_revision", "event_id", "error").rows())

    # overdraft, activity_after_close, ledger_drift, duplicate_event (its repeated newBalance
    # is drift), unknown_event_type, malformed_json and binary_payload (rejected by the lake,
    # reported at their revision). The domain never looks at timestamps, transfer pairs or
    # amount sizes: timestamp_out_of_order, unmatched_transfer and amount_outlier are silent.
    assert seen == {
        "ledger_drift",
        "overdraft",
        "activity_after_close",
        "duplicate_event",
        "unknown_event_type",
        "malformed_json",
        "binary_payload",
    }
    assert got == expected
    kinds = dict(findings.select("error", "kind").unique().rows())
    assert kinds == {
        "LedgerDriftError": "ledger_drift",
        "OverdraftLimitExceeded": "overdraft",
        "AccountClosed": "activity_after_close",
        "UnknownEventTypeError": "unknown_event_type",
        "PayloadDecodeError": "decode_error",
    }


def test_stop_ends_each_troubled_stream_at_its_first_finding(sample: Sample) -> None:
    stopped = replay(sample.lake, BANK, on_error="stop")

    per_stream = stopped.findings.group_by("stream_name").agg(
        pl.len().alias("n"), pl.col("stream_revision").first().alias("at")
    )
    assert per_stream["n"].max() == 1
    last = stopped.timeline.group_by("stream_name").agg(pl.col("stream_revision").max())
    ends = per_stream.join(last, on="stream_name", how="left")
    assert ends.filter(pl.col("stream_revision") >= pl.col("at")).height == 0


def test_parallel_replay_of_the_lake_equals_sequential(sample: Sample) -> None:
    parallel = replay(sample.lake, BANK, on_error="skip", workers=2, batch_size=500)

    assert_frame_equal(parallel.timeline, sample.replayed.timeline)
    assert_frame_equal(parallel.findings, sample.replayed.findings)


def test_state_as_of_a_position_is_each_streams_last_state_at_or_before_it(
    sample: Sample,
) -> None:
    positions = sample.replayed.timeline["commit_position"].sort()
    cut = positions[int(len(positions) * 0.4)]

    states = state_as_of(sample.lake, BANK, at_position=cut, on_error="skip")

    expected = (
        sample.replayed.timeline.drop("changed")
        .filter(pl.col("commit_position") <= cut)
        .group_by("stream_name")
        .agg(pl.all().sort_by("stream_revision").last())
        .sort("stream_name")
    )
    assert_frame_equal(states.select(expected.columns), expected)
    assert (states["findings"] > 0).sum() > 0


def test_state_as_of_a_time_uses_business_time(sample: Sample) -> None:
    moment = datetime(2024, 2, 1, tzinfo=UTC)

    states = state_as_of(sample.lake, BANK, at_time=moment, on_error="skip")

    timeline = sample.replayed.timeline
    last_by_then = (
        timeline.filter(pl.col("occurred_at") <= moment)
        .group_by("stream_name")
        .agg(pl.col("stream_revision").max().alias("cut"))
    )
    expected = (
        timeline.join(last_by_then, on="stream_name")
        .filter(pl.col("stream_revision") == pl.col("cut"))
        .select("stream_name", "stream_revision", "balance", "email", "closed")
        .sort("stream_name")
    )
    assert_frame_equal(states.select(expected.columns), expected)


def test_as_of_a_time_keeps_an_earlier_event_stamped_later() -> None:
    h = History()
    h.opened("1", occurred_at=T0)
    h.deposit("1", "10.00", "10.00", occurred_at=T0 + timedelta(days=1))
    h.deposit("1", "5.00", "15.00", occurred_at=T0 + timedelta(days=5))  # stamped late
    h.deposit("1", "1.00", "16.00", occurred_at=T0 + timedelta(days=2))
    h.deposit("1", "2.00", "18.00", occurred_at=T0 + timedelta(days=6))

    with_lake = lake_of(h)
    states = state_as_of(with_lake, BANK, at_time=T0 + timedelta(days=3))
    by_position = state_as_of(with_lake, BANK, at_position=200)

    # The state after revision 3 (the last event by then) includes revision 2, stamped later.
    assert states.select("stream_revision", "balance").rows() == [(3, Decimal("16.00"))]
    assert by_position.select("stream_revision", "balance").rows() == [(1, Decimal("10.00"))]


def test_replay_reads_only_the_streams_asked_for(sample: Sample) -> None:
    two = sorted(sample.replayed.timeline["stream_name"].unique().to_list())[:2]

    only = replay(str(sample.lake), BANK, streams=two, on_error="skip")
    prefixed = replay(sample.lake, BANK, stream_prefix=two[0], on_error="skip")

    assert sorted(only.timeline["stream_name"].unique().to_list()) == two
    assert_frame_equal(
        only.timeline,
        sample.replayed.timeline.filter(pl.col("stream_name").is_in(two)),
    )
    assert prefixed.timeline["stream_name"].unique().to_list() == [two[0]]


def test_vectorized_balances_agree_with_the_fold_and_break_where_it_finds_drift(
    sample: Sample,
) -> None:
    with Lake(sample.lake, read_only=True) as lake:
        vectorized = bank_balances(lake)
    folded = sample.replayed.timeline.select(
        "event_id", pl.col("balance").alias("folded"), pl.col("balance_drift").alias("fold_drift")
    )

    together = vectorized.join(folded, on="event_id", how="left")

    # The computed balances and drifts are the fold's, at every money event ...
    assert together["folded"].null_count() == 0
    assert_frame_equal(
        together.select(pl.col("folded").alias("balance")), together.select("balance")
    )
    assert_frame_equal(
        together.select(pl.col("fold_drift").alias("drift")), together.select("drift")
    )
    # ... and the recorded chain breaks exactly at the injected drift and duplicates (the
    # writers carry on from their own statements, so a break has no knock-on), which are
    # exactly the fold's ledger_drift findings.
    broken = set(together.filter(pl.col("chain_break") != 0)["event_id"])
    injected = {
        a.event_id for a in sample.ledger.truth if a.kind in ("ledger_drift", "duplicate_event")
    }
    drift_findings = set(
        sample.replayed.findings.filter(pl.col("kind") == "ledger_drift")["event_id"]
    )
    assert broken == injected == drift_findings


def lake_of(h: History) -> Path:
    import tempfile

    # The lake takes business time from the metadata.
    metadata = [
        json.dumps({**json.loads(row["metadata"]), "occurredAt": row["occurred_at"].isoformat()})
        for row in h.rows
    ]
    raw = h.frame().with_columns(
        pl.col("commit_position").alias("prepare_position"),
        pl.lit("application/json").alias("content_type"),
        pl.col("data").cast(pl.Binary),
        pl.Series("metadata", metadata).cast(pl.Binary),
    )
    table = raw.select(RAW_SCHEMA.names).to_arrow().cast(RAW_SCHEMA)
    path = Path(tempfile.mkdtemp()) / "lake.duckdb"
    with Lake(path) as lake:
        sync(LedgerSource(table, key="test:story"), lake)
    return path


def test_state_as_of_needs_exactly_one_cut(sample: Sample) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        state_as_of(sample.lake, BANK)
    with pytest.raises(ConfigError, match="exactly one"):
        state_as_of(sample.lake, BANK, at_position=1, at_time=T0)


# --- ledger drift on real-world ledgers --------------------------------------------------------

_money_event = st.tuples(
    st.integers(0, 3),  # user
    st.booleans(),  # deposit (else withdrawal)
    st.integers(1, 500_000),  # amount in cents
    st.one_of(  # the writer's error in cents: mostly none, sometimes a break of either sign
        st.just(0), st.just(0), st.integers(-10_000, -1), st.integers(1, 10_000)
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_money_event, min_size=1, max_size=60))
def test_k_injected_breaks_give_exactly_k_drift_findings_at_those_events(
    operations: list[tuple[int, bool, int, int]],
) -> None:
    # A ledger written the way legacy writers write: each writer computes newBalance from its
    # own last recorded balance, and carries on from whatever it wrote. Ground truth comes from
    # this loop alone, not from the code under test.
    h = History()
    statement: dict[int, int] = {}
    truth: dict[int, int] = {}
    breaks: set[str] = set()
    for user, deposit, cents, error in operations:
        if user not in statement:
            h.opened(str(user), limit="100000000.00")  # no overdraft can hide a break
            statement[user] = truth[user] = 0
        signed = cents if deposit else -cents
        truth[user] += signed
        statement[user] += signed + error
        record = h.deposit if deposit else h.withdraw
        event_id = record(
            str(user), f"{Decimal(cents).scaleb(-2)}", f"{Decimal(statement[user]).scaleb(-2):.2f}"
        )
        if error:
            breaks.add(event_id)

    result = replay_frame(h.frame(), BANK)

    drift = result.findings.filter(pl.col("kind") == "ledger_drift")
    assert drift.height == len(breaks)
    assert set(drift["event_id"]) == breaks
    assert result.findings.height == len(breaks)  # nothing else, no cascade
    final = result.states()
    for user, cents in truth.items():
        row = final.filter(pl.col("stream_name") == f"user-{user}").row(0, named=True)
        assert row["balance"] == Decimal(cents).scaleb(-2)
        assert row["recorded_balance"] == Decimal(statement[user]).scaleb(-2)
        assert row["balance_drift"] == row["recorded_balance"] - row["balance"]


# Amounts as careless or hostile writers store them: exact money, too many places, exponents,
# padding, signs, JSON numbers, null, nothing, digits past what Decimal(38, 2) holds.
_stored_money = st.one_of(
    st.decimals(min_value=-10_000, max_value=10_000, places=2).map(lambda d: f"{d:.2f}"),
    st.sampled_from(
        ["12.5", "7", "-3.00", "0.001", "1e3", " 4.00", "+2.00", "", "abc", "1" * 40 + ".00"]
    ),
    st.sampled_from([12.5, 7, 0, -1.25, None, True]),
    st.just(_MISSING_KEY := object()),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    moves=st.lists(
        st.tuples(
            st.sampled_from(sorted(BANK_SIGNS)), st.integers(0, 2), _stored_money, _stored_money
        ),
        min_size=1,
        max_size=30,
    )
)
def test_the_lake_sums_in_duckdb_what_polars_sums_over_a_frame(
    moves: list[tuple[str, int, object, object]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    revisions: dict[str, int] = {}
    rows = []
    for i, (event_type, user, amount, new_balance) in enumerate(moves):
        stream = f"user-{user}"
        revisions[stream] = revisions.get(stream, -1) + 1
        data = {
            key: value
            for key, value in (
                ("userId", str(user)),
                ("amount", amount),
                ("newBalance", new_balance),
            )
            if value is not _MISSING_KEY
        }
        rows.append(
            {
                "commit_position": (i + 1) * 10,
                "prepare_position": (i + 1) * 10,
                "stream_name": stream,
                "stream_revision": revisions[stream],
                "event_id": f"00000000-0000-0000-0000-{i:012d}",
                "event_type": event_type,
                "created": T0 + timedelta(minutes=i),
                "content_type": "application/json",
                "data": json.dumps(data).encode(),
                "metadata": b"{}",
            }
        )
    path = tmp_path_factory.mktemp("sums") / "lake.duckdb"
    with Lake(path) as lake:
        sync(LedgerSource(pa.Table.from_pylist(rows, schema=RAW_SCHEMA)), lake)
        in_duckdb = bank_balances(lake)
        in_polars = bank_balances(lake.read_events())
    assert in_duckdb.height == len(moves)
    assert_frame_equal(in_duckdb, in_polars)


def test_a_replay_written_to_parts_reads_back_as_the_replay_in_memory(
    sample: Sample, tmp_path: Path
) -> None:
    out = tmp_path / "replay"
    written = replay(sample.lake, BANK, on_error="skip", batch_size=700, out=out)

    assert len(list((out / "timeline").glob("part-*.parquet"))) > 1
    assert isinstance(written.scan_timeline(), pl.LazyFrame)
    assert_frame_equal(written.timeline, sample.replayed.timeline)
    assert_frame_equal(written.findings, sample.replayed.findings)
    assert written.events_read == sample.replayed.events_read
    # A second run into the same directory replaces the parts of the first.
    again = replay(sample.lake, BANK, on_error="skip", batch_size=5_000, out=out)
    assert_frame_equal(again.timeline, sample.replayed.timeline)


def test_streamed_replay_equals_the_replay_of_the_same_events_in_a_frame(sample: Sample) -> None:
    with Lake(sample.lake, read_only=True) as lake:
        events = with_rejected(lake, lake.read_events(category="user"), category="user")
    framed = replay_frame(events, BANK, on_error="skip")

    assert_frame_equal(framed.timeline, sample.replayed.timeline)
    assert_frame_equal(framed.findings, sample.replayed.findings)


def test_results_written_from_parts_are_sorted_into_files_equal_to_the_replay(
    sample: Sample, tmp_path: Path
) -> None:
    written = replay(sample.lake, BANK, on_error="skip", batch_size=700, out=tmp_path / "parts")
    written.write_parquet(tmp_path / "timeline.parquet", tmp_path / "findings.parquet")

    assert_frame_equal(pl.read_parquet(tmp_path / "timeline.parquet"), sample.replayed.timeline)
    assert_frame_equal(pl.read_parquet(tmp_path / "findings.parquet"), sample.replayed.findings)
