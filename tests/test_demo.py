"""The main job, end to end: dev server -> sample ledger -> lake -> report."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from esworkbench.cli import main
from esworkbench.examples.bank.sample import generate
from esworkbench.lake import Lake


def test_demo_builds_lake_and_report(tmp_path: Path) -> None:
    lake = tmp_path / "demo.duckdb"
    result = CliRunner().invoke(
        main, ["demo", "--lake", str(lake), "--out-dir", str(tmp_path / "reports"), "--users", "20"]
    )
    assert result.exit_code == 0, result.output
    ledger = generate(users=20, seed=7, days=90)
    not_json = sum(1 for a in ledger.truth if a.kind in ("malformed_json", "binary_payload"))
    with Lake(lake, read_only=True) as opened:
        summary = opened.summary()
    # Every generated event is in the lake, or kept in _rejected with its reason.
    assert summary.events == len(ledger) - not_json
    assert sum(summary.rejected.values()) == not_json
    html = next((tmp_path / "reports" / "balance_timeline").glob("*/balance_timeline.html"))
    assert f"open {html.resolve()}" in result.output
    manifest = json.loads((html.parent / "manifest.json").read_text())
    assert manifest["outcome"]["status"] == "ok"
    assert manifest["event_count"] == summary.events


def test_demo_never_deletes_a_lake_it_was_not_asked_to_build(tmp_path: Path) -> None:
    precious = tmp_path / "precious.duckdb"
    precious.write_bytes(b"not mine to delete")
    result = CliRunner().invoke(main, ["demo", "--lake", str(precious)])
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert precious.read_bytes() == b"not mine to delete"
