"""Given a sample ledger in a lake, when a projection is rebuilt, then its read model is what a
plain loop over the raw events gives: in chunks, in parallel, interrupted anywhere and resumed,
and as SQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esworkbench.errors import ConfigError, LakeError
from esworkbench.examples.bank.projections import AccountSummaryV1
from esworkbench.lake import Lake
from esworkbench.projections import (
    Event,
    Projection,
    Row,
    estimate_rebuild,
    handles,
    rebuild,
    resolve_projection,
)
from tests.projections.conftest import TOTALS, V1, V2, Scene, summaries

COMPARED = [
    "status",
    "balance",
    "deposits",
    "withdrawals",
    "transfers_in",
    "transfers_out",
    "events",
]


def as_dicts(frame: pl.DataFrame, columns: list[str]) -> dict[str, dict[str, Any]]:
    return {row["user_id"]: {c: row[c] for c in columns} for row in frame.to_dicts()}


@pytest.mark.parametrize(("workers", "chunk_size"), [(1, 97), (2, 250), (1, 100_000)])
def test_rebuild_equals_a_plain_loop_over_the_raw_events(
    scene: Scene, lake_path: Path, workers: int, chunk_size: int
) -> None:
    result = rebuild(lake_path, V1, workers=workers, chunk_size=chunk_size)
    with Lake(lake_path, read_only=True) as lake:
        rows = lake.read_model("account_summary", 1).read()
        checkpoint = lake.read_model("account_summary", 1).checkpoint()
        head = lake.head_position()
    expected = summaries(scene.ledger.events, freeze_closed=False)
    assert as_dicts(rows, COMPARED) == expected
    assert result.rows == rows.height == len(expected)
    assert result.events > 0
    assert result.per_type["events"].sum() == result.events
    assert result.findings.is_empty()
    assert checkpoint is not None and checkpoint.complete and checkpoint.position == head
    assert result.last_position == head and result.resumed_from is None


def test_v2_freezes_closed_accounts(scene: Scene, lake_path: Path) -> None:
    rebuild(lake_path, V2)
    with Lake(lake_path, read_only=True) as lake:
        rows = lake.read_model("account_summary", 2).read()
    assert as_dicts(rows, COMPARED) == summaries(scene.ledger.events, freeze_closed=True)


def test_the_sql_projection_equals_the_plain_loop(scene: Scene, lake_path: Path) -> None:
    result = rebuild(lake_path, TOTALS)
    with Lake(lake_path, read_only=True) as lake:
        rows = lake.read_model("account_totals", 1).read()
    money = ["balance", "deposits", "withdrawals", "transfers_in", "transfers_out"]
    expected = summaries(scene.ledger.events, freeze_closed=False)
    assert as_dicts(rows, money) == {u: {c: r[c] for c in money} for u, r in expected.items()}
    assert result.kind == "sql" and result.rows == len(expected)


def test_a_pinned_window_builds_only_its_events(scene: Scene, lake_path: Path) -> None:
    positions = sorted(e["commit_position"] for e in scene.ledger.events)
    middle = positions[len(positions) // 2]
    with Lake(lake_path) as lake:
        result = rebuild(lake, V1, last_position=middle)
        rows = lake.read_model("account_summary", 1).read()
    assert result.last_position == middle
    assert as_dicts(rows, COMPARED) == summaries(
        scene.ledger.events, freeze_closed=False, to_position=middle
    )


class Interrupted(BaseException):
    """A kill in the middle of a chunk: nothing catches it but the test."""


class CrashingSummary(AccountSummaryV1):
    """The v1 read model, whose process dies at its `crash_at`-th event."""

    crash_at = 0
    seen = 0

    def key_of(self, event: Event) -> str | None:
        type(self).seen += 1
        if type(self).seen == type(self).crash_at:
            raise Interrupted
        return super().key_of(event)


@pytest.fixture(scope="module")
def clean_v1(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    lake_path = tmp_path_factory.mktemp("clean") / "lake.duckdb"
    lake_path.write_bytes(scene.lake.read_bytes())
    rebuild(lake_path, V1)
    with Lake(lake_path, read_only=True) as lake:
        return lake.read_model("account_summary", 1).read()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(crash_at=st.integers(min_value=1, max_value=820), chunk_size=st.integers(10, 400))
def test_interrupted_anywhere_then_resumed_equals_one_clean_rebuild(
    lake_path: Path, clean_v1: pl.DataFrame, crash_at: int, chunk_size: int
) -> None:
    CrashingSummary.crash_at, CrashingSummary.seen = crash_at, 0
    with Lake(lake_path) as lake:
        with pytest.raises(Interrupted):
            rebuild(lake, CrashingSummary, chunk_size=chunk_size, resume=False)
        before = lake.read_model("account_summary", 1).checkpoint()
        resumed = rebuild(lake, V1, chunk_size=chunk_size)
        rows = lake.read_model("account_summary", 1).read()
    assert before is not None and not before.complete
    assert resumed.resumed_from == before.position
    assert rows.equals(clean_v1)


def test_a_different_window_starts_again(lake_path: Path) -> None:
    with Lake(lake_path) as lake:
        head = lake.head_position()
        assert head is not None
        rebuild(lake, V1, last_position=head // 2)
        again = rebuild(lake, V1)
    assert again.resumed_from is None and again.last_position == head


def test_a_complete_rebuild_resumes_to_nothing(lake_path: Path) -> None:
    with Lake(lake_path) as lake:
        first = rebuild(lake, V1)
        second = rebuild(lake, V1)
    assert second.events == 0 and second.rows == first.rows


def test_the_estimate_comes_from_a_prefix(lake_path: Path) -> None:
    estimate = estimate_rebuild(lake_path, V1, sample=200)
    assert estimate.seconds > 0 and estimate.sample_events <= 200 < estimate.events
    with Lake(lake_path, read_only=True) as lake:
        assert lake.read_model_schemas() == []  # the scratch schema is gone
    result = rebuild(lake_path, V1, estimate=True)
    assert result.estimate is not None and "estimate" in str(result)
    assert result.timings()["estimate_error"].item() is not None


class NoKey(Projection):
    name, version, key = "nokey", 1, "k"
    columns = AccountSummaryV1.columns
    registry = AccountSummaryV1.registry

    @handles("UserCreated")
    def created(self, row: Row, event: Event) -> None:
        pass


def test_bad_projections_say_what_is_wrong(lake_path: Path) -> None:
    with pytest.raises(ConfigError, match="import path"):
        resolve_projection("no_colon_here")
    with pytest.raises(ConfigError, match="not a projection"):
        resolve_projection("esworkbench.examples.bank:User")
    with pytest.raises(ConfigError, match="key 'k'"):
        resolve_projection(NoKey)
    with pytest.raises(LakeError, match="read-only"), Lake(lake_path, read_only=True) as lake:
        rebuild(lake, V1)
