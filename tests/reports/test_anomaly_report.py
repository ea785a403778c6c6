"""The anomaly report: runs under papermill, renders offline, shows every finding, compares runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import polars as pl
import pytest

from esworkbench import reports
from esworkbench.events import archive_line
from esworkbench.examples.bank.sample import generate
from esworkbench.lake import Lake, sync
from esworkbench.sources.files import open_archive
from tests.reports.browser import offline_dom

NOTEBOOK = reports.NOTEBOOKS_DIR / "anomaly_report.ipynb"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[reports.ReportResult, ...]:
    """Two reports: one on the ledger's first part, one after the rest (more anomalies) came in."""
    base = tmp_path_factory.mktemp("anomaly_report")
    ledger = generate(users=30, seed=17, days=40)
    lines = [archive_line(e) for e in ledger.events]
    # Cut just before the last injected anomaly: the second run brings it in.
    cut = max(ledger.event_id.index(a.event_id) for a in ledger.truth)
    (base / "first.jsonl").write_text("\n".join(lines[:cut]) + "\n")
    (base / "whole.jsonl").write_text("\n".join(lines) + "\n")
    lake = base / "lake.duckdb"
    with Lake(lake) as opened:
        sync(open_archive(base / "first.jsonl"), opened)
    first = reports.run_report("anomaly_report", lake=lake, out_dir=base / "reports")
    with Lake(lake) as opened:
        sync(open_archive(base / "whole.jsonl"), opened)
    second = reports.run_report(
        "anomaly_report",
        lake=lake,
        out_dir=base / "reports",
        parameters={"since": str(first.directory)},
    )
    return first, second


def test_the_report_exports_every_finding_and_pins_the_files(
    runs: tuple[reports.ReportResult, ...],
) -> None:
    _, second = runs
    assert second.ok
    files = second.manifest["files"]
    assert {"anomaly_report.html", "findings.parquet", "findings.csv"} <= set(files)
    findings = pl.read_parquet(second.directory / "findings.parquet")
    html = second.html.read_text()
    # The complete table: every finding's event id and full message is on the page.
    assert findings.height > 0
    for event_id in findings["event_id"]:
        assert event_id in html
    longest = max(findings["message"], key=len)
    assert longest.replace("'", "&#x27;") in html or longest in html
    assert reports.external_urls(html) == []
    assert reports.verify_manifest(second.manifest_path).ok


def test_since_last_run_names_the_new_findings(runs: tuple[reports.ReportResult, ...]) -> None:
    first, second = runs
    before = pl.read_parquet(first.directory / "findings.parquet")
    after = pl.read_parquet(second.directory / "findings.parquet")
    new = after.join(before, on=["rule", "kind", "event_id"], how="anti").height
    assert new > 0  # the rest of the ledger brought anomalies
    executed = second.html.read_text()
    assert re.search(rf"Since the previous run: {new:,} new, ", executed)


def test_the_notebook_is_thin_and_committed_clean() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c for c in code if "parameters" in c.metadata.get("tags", [])] == [code[0]]
    assert all(not c.outputs and c.execution_count is None for c in code)
    text = "\n".join(c.source for c in code)
    assert not re.search(r"^\s*(def|class|for|while|with|lambda)\b", text, re.M)
    assert all(
        i.split(".")[0] == "esworkbench" for i in re.findall(r"^(?:from|import) (\S+)", text, re.M)
    )


def test_the_report_renders_offline_in_headless_chromium(
    runs: tuple[reports.ReportResult, ...], tmp_path: Path
) -> None:
    _, second = runs
    dom = offline_dom(second.html.as_uri(), tmp_path)
    assert dom.count('class="esw-chart"') == 1
    assert dom.count('data-esw-rendered="true"') == 1, "the chart did not render"
    assert "data-esw-error" not in dom
    # The tables' inline script ran: each shows its row count and page.
    findings = pl.read_parquet(second.directory / "findings.parquet").height
    assert re.search(rf"{findings} of {findings} rows, page 1 of \d+", dom)


def test_check_on_the_command_line_gates_a_pipeline(
    runs: tuple[reports.ReportResult, ...], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from esworkbench.cli import CHECK_FAILED, main

    _, second = runs
    lake = json.loads(second.manifest_path.read_text())["lake"]["path"]
    rules = ["--rules", "esworkbench.examples.bank.rules:RULES"]
    out = tmp_path / "findings.parquet"
    failed = CliRunner().invoke(main, ["check", "--lake", lake, *rules, "--out", str(out)])
    assert failed.exit_code == CHECK_FAILED, failed.output
    expected = pl.read_parquet(second.directory / "findings.parquet")
    for kind, n in expected.group_by("kind").len().iter_rows():
        assert re.search(rf"^  {kind} \(\w+\): {n:,}$", failed.output, re.M), failed.output
    assert pl.read_parquet(out).height == expected.height

    again = CliRunner().invoke(
        main,
        [
            "check",
            "--lake",
            lake,
            *rules,
            "--since-manifest",
            str(second.directory),
            "--fail-on",
            "never",
        ],
    )
    assert again.exit_code == 0, again.output
    assert "(0 new," in again.output and "gone since the previous run: 0" in again.output
