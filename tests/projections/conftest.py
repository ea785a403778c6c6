"""A sample ledger synced into a lake, and its account summaries by a plain loop (ground truth).

The ground truth reads the generator's raw events (JSON bytes, $all order) with nothing but
``json`` and ``Decimal``: no projection, registry or lake code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from esworkbench.examples.bank.sample import Ledger, generate, write_archive
from esworkbench.lake import Lake, sync
from esworkbench.sources.files import open_archive

V1 = "esworkbench.examples.bank.projections:AccountSummaryV1"
V2 = "esworkbench.examples.bank.projections:AccountSummaryV2"
TOTALS = "esworkbench.examples.bank.projections:AccountTotals"
MONEY_TYPES = {
    "BalanceDeposited": ("deposits", 1),
    "BalanceWithdrawn": ("withdrawals", -1),
    "TransferSent": ("transfers_out", -1),
    "TransferReceived": ("transfers_in", 1),
}
HANDLED = {*MONEY_TYPES, "UserCreated", "EmailChanged", "UserClosed"}


@dataclass(frozen=True)
class Scene:
    ledger: Ledger
    archive: Path
    lake: Path


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    base = tmp_path_factory.mktemp("projections")
    ledger = generate(users=40, seed=5, days=30)
    archive, _ = write_archive(ledger, base / "ledger.jsonl")
    lake = base / "lake.duckdb"
    with Lake(lake) as opened:
        sync(open_archive(archive), opened)
    return Scene(ledger, archive, lake)


@pytest.fixture
def lake_path(scene: Scene, tmp_path: Path) -> Path:
    """A copy of the scene's lake for one test to write read models into."""
    copy = tmp_path / "lake.duckdb"
    copy.write_bytes(scene.lake.read_bytes())
    return copy


def readable(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(event, decoded JSON payload) for the bank events a lake keeps, in $all order."""
    out = []
    for event in sorted(events, key=lambda e: e["commit_position"]):
        if event["event_type"] not in HANDLED:
            continue
        try:
            data = json.loads(event["data"])
        except (UnicodeDecodeError, ValueError):
            continue  # the lake keeps these in _rejected, not in events
        out.append((event, data))
    return out


def summaries(
    events: list[dict[str, Any]], *, freeze_closed: bool, to_position: int | None = None
) -> dict[str, dict[str, Any]]:
    """Per user id: status, balance, counts; v2 (freeze_closed) ignores events after closing."""
    rows: dict[str, dict[str, Any]] = {}
    for event, data in readable(events):
        if to_position is not None and event["commit_position"] > to_position:
            break
        user = data["userId"]
        row = rows.setdefault(
            user,
            {
                "status": "open",
                "balance": Decimal("0.00"),
                "deposits": 0,
                "withdrawals": 0,
                "transfers_in": 0,
                "transfers_out": 0,
                "events": 0,
            },
        )
        if freeze_closed and row["status"] == "closed":
            continue
        kind = event["event_type"]
        if kind in MONEY_TYPES:
            counter, sign = MONEY_TYPES[kind]
            row[counter] += 1
            row["balance"] += sign * Decimal(data["amount"])
        elif kind == "UserClosed":
            row["status"] = "closed"
        row["events"] += 1
    return rows
