"""Given v1 and v2 of the account summary over the sample ledger, when compared, then the diff
and the bisection find exactly the accounts and first events where they differ: those a plain
loop over the raw events finds (activity recorded after an account was closed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from esworkbench.projections import compare, diff_read_models, divergences
from tests.projections.conftest import TOTALS, V1, V2, Scene, readable


def after_close(events: list[dict[str, Any]]) -> dict[str, int]:
    """User id -> commit position of the first readable event after its UserClosed."""
    closed: set[str] = set()
    first: dict[str, int] = {}
    for event, data in readable(events):
        user = data["userId"]
        if user in closed:
            first.setdefault(user, event["commit_position"])
        elif event["event_type"] == "UserClosed":
            closed.add(user)
    return first


def test_the_diff_and_bisection_find_the_accounts_and_events(scene: Scene, lake_path: Path) -> None:
    truth = after_close(scene.ledger.events)
    assert truth, "the sample ledger has activity after close"
    comparison = compare(lake_path, V1, V2)
    diff = comparison.diff
    assert diff.keys == sorted(truth)
    assert diff.only_in_a.is_empty() and diff.only_in_b.is_empty()
    summary = diff.summary.row(0, named=True)
    assert summary["changed"] == len(truth) and summary["rows_a"] == summary["rows_b"]
    assert set(diff.changes["column"]) >= {"events", "balance"}
    assert comparison.a.first_position == comparison.b.first_position
    assert comparison.a.last_position == comparison.b.last_position

    found = divergences(lake_path, V1, V2, keys=diff.keys)
    table = found.table
    assert dict(zip(table["key"], table["commit_position"], strict=True)) == truth
    assert found.method == "replay"
    row = table.row(0, named=True)
    assert json.loads(row["a_before"]) == json.loads(row["b_before"])
    assert json.loads(row["a_after"]) != json.loads(row["b_after"])
    assert "events" in row["columns"]
    drill = found.drill_down(row["key"])
    assert drill.filter(pl.col("differ"))["commit_position"][0] == row["commit_position"]
    findings = found.findings()
    assert findings.height == len(truth) and set(findings["kind"]) == {"projection_divergence"}


def test_bisection_over_positions_for_a_sql_side(scene: Scene, lake_path: Path) -> None:
    truth = after_close(scene.ledger.events)
    key = min(truth)
    found = divergences(lake_path, V2, TOTALS, keys=[key])
    # The SQL totals count the deposit after close, as v1 does and v2 does not.
    assert found.method == "bisection"
    assert found.table["commit_position"].to_list() == [truth[key]]


def test_the_same_projection_twice_has_no_difference() -> None:
    a = pl.DataFrame({"k": ["1", "2"], "n": [1, 2], "x": ["p", "q"]})
    d = diff_read_models(a, a, "k")
    assert d.identical and d.changes.is_empty()
    b = pl.DataFrame({"k": ["1"], "n": [4], "x": ["p"]})
    d = diff_read_models(a, b, "k")
    assert d.only_in_a["k"].to_list() == ["2"]
    assert d.largest.select("k", "column", "delta").row(0) == ("1", "n", "3")
