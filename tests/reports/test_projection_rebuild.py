"""Given the sample ledger in a lake, when the projection-rebuild report runs under papermill,
then it shows the timings, the diff and the divergences of v1 and v2, and its HTML renders
offline in headless Chromium.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from esworkbench import reports
from esworkbench.examples.bank.sample import generate, write_archive
from esworkbench.lake import Lake, sync
from esworkbench.sources.files import open_archive
from tests.projections.conftest import V1, V2
from tests.reports.browser import offline_dom
from tests.reports.test_runner import NOTEBOOKS


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> reports.ReportResult:
    base = tmp_path_factory.mktemp("projection_report")
    archive, _ = write_archive(generate(users=30, seed=5, days=30), base / "ledger.jsonl")
    lake = base / "lake.duckdb"
    with Lake(lake) as opened:
        sync(open_archive(archive), opened)
    return reports.run_report(
        "projection_rebuild",
        lake=lake,
        parameters={"projection": V1, "compare_with": V2},
        out_dir=base / "reports",
        notebooks_dir=NOTEBOOKS,
    )


def test_the_report_shows_timings_diff_and_divergences(result: reports.ReportResult) -> None:
    assert result.ok
    html = result.html.read_text()
    assert "estimate_error" in html and "projection_divergence" not in html
    assert "rm_account_summary_v1" in html and "rm_account_summary_v2" in html
    assert "a_before" in html and "changed_events" in html
    assert reports.external_urls(html) == []
    assert result.manifest["event_count"] > 0


def test_the_notebook_is_thin() -> None:
    nb = nbformat.read(NOTEBOOKS / "projection_rebuild.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class|for|while|with|lambda)\b", code, re.M)
    imports = re.findall(r"^(?:from|import) (\S+)", code, re.M)
    assert imports and all(i.split(".")[0] == "esworkbench" for i in imports)


def test_the_html_renders_offline_in_headless_chromium(
    result: reports.ReportResult, tmp_path: Path
) -> None:
    dom = offline_dom(result.html.as_uri(), tmp_path)
    assert "Blue/green diff" in dom and "Divergences" in dom
    assert "a_before" in dom and "data-esw-error" not in dom
