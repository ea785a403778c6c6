"""Report notebooks run under the real papermill, render offline, and pin what they read.

Given a small lake synced from a sample archive, when the balance-timeline report runs, then
its HTML fetches nothing and shows its charts in a real (headless) Chromium, its manifest pins
the events read, and `verify` notices when the lake changes under it.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import nbformat
import pytest

from esworkbench import reports
from esworkbench.errors import ConfigError, ReportError
from esworkbench.events import archive_line
from esworkbench.examples.bank import sample
from esworkbench.lake import Lake, sync
from esworkbench.sources.files import open_archive
from tests.reports.browser import offline_dom

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
TINY = ROOT / "tests" / "fixtures" / "notebooks" / "tiny_report.ipynb"
SECRET = "s3cret-pw"


@dataclass(frozen=True)
class Scene:
    """A small ledger archive (all but its last event), the report run on it, and the rest."""

    archive: Path
    last_line: str
    lake: Path
    result: reports.ReportResult


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    base = tmp_path_factory.mktemp("report")
    ledger = sample.generate(users=12, seed=11, days=30)
    lines = [archive_line(event) for event in ledger.events]
    archive = base / "ledger.jsonl"
    archive.write_text("\n".join(lines[:-1]) + "\n")
    lake = base / "lake.duckdb"
    # `source` makes the notebook sync the archive into a new lake first, then read it.
    result = reports.run_report(
        "balance_timeline",
        lake=lake,
        parameters={"source": str(archive), "top_n": 4, "resample": "1w"},
        out_dir=base / "reports",
        notebooks_dir=NOTEBOOKS,
    )
    return Scene(archive, lines[-1], lake, result)


def test_the_report_writes_notebook_html_and_manifest(scene: Scene) -> None:
    result = scene.result
    assert result.ok
    assert result.directory.parent == scene.lake.parent / "reports" / "balance_timeline"
    assert re.fullmatch(r"\d{8}T\d{6}Z", result.directory.name)
    assert {p.name for p in result.directory.iterdir()} == {
        "balance_timeline.ipynb",
        "balance_timeline.html",
        "manifest.json",
    }
    assert json.loads(result.manifest_path.read_text()) == result.manifest


def test_the_manifest_pins_what_was_read(scene: Scene) -> None:
    m = scene.result.manifest
    with Lake(scene.lake, read_only=True) as lake:
        events = lake.read_events(category="user")
        digest = lake.digest(category="user")
        head = lake.head_position()
    assert m["event_count"] == events.height > 0
    assert m["first_position"] == events["commit_position"].min()
    assert m["last_position"] == events["commit_position"].max() == head
    assert m["digest"] == digest
    assert [r["filters"] for r in m["reads"]] == [{"category": "user"}]
    assert m["lake"]["path"] == str(scene.lake.resolve())
    assert m["lake"]["checkpoints"] and set(m["lake"]["checkpoints"].values()) == {head}
    assert m["source"] == str(scene.archive)
    assert m["parameters"] == {
        "lake": str(scene.lake.resolve()),
        "source": str(scene.archive),
        "top_n": 4,
        "resample": "1w",
    }
    nb_bytes = (NOTEBOOKS / "balance_timeline.ipynb").read_bytes()
    assert m["notebook"]["sha256"] == "sha256:" + hashlib.sha256(nb_bytes).hexdigest()
    assert {"python", "esworkbench", "polars", "duckdb", "papermill", "nbconvert"} <= set(
        m["versions"]
    )
    assert m["timings"]["execute_seconds"] > 0 and m["timings"]["cells"]
    # The report object timed its own stages inside its cell; the manifest keeps them apart.
    assert set(m["timings"]["stages"]) == {"read", "replay", "sections"}
    assert m["outcome"] == {"status": "ok"}


def test_the_html_fetches_no_external_url(scene: Scene) -> None:
    html = scene.result.html.read_text()
    assert reports.external_urls(html) == []
    # Belt and braces: no src/href attribute anywhere points off the page.
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert html.count('class="esw-chart"') == 4  # timeline, small multiples, heatmap, bank total
    assert len(re.findall(r"<script[^>]*data-esw-bundle", html)) == 1  # one inline Vega bundle


def test_the_rendered_charts_show_in_headless_chromium(scene: Scene, tmp_path: Path) -> None:
    dom = offline_dom(scene.result.html.as_uri(), tmp_path)
    charts = dom.count('class="esw-chart"')
    assert charts == 4
    # Every chart was re-rendered by the inline Vega bundle, as SVG with marks in it.
    assert dom.count('data-esw-rendered="true"') == charts, "a chart did not render"
    assert "data-esw-error" not in dom
    assert 'class="esw-chart-static"' not in dom
    assert len(re.findall(r'<svg[^>]*class="marks"', dom)) >= charts
    assert dom.count("<path") > 50
    # What a reader sees: every tooltip reads (no NaN dates), no small-multiple panel is empty.
    tooltips = [int(n) for n in re.findall(r'data-esw-tooltips="(\d+)"', dom)]
    assert len(tooltips) == charts and all(n > 0 for n in tooltips)
    assert re.findall(r'data-esw-unreadable-tooltips="(\d+)"', dom) == ["0"] * charts
    assert re.findall(r'data-esw-empty-panels="(\d+)"', dom) == ["0"] * charts
    panels = [int(n) for n in re.findall(r'data-esw-panels="(\d+)"', dom)]
    assert max(panels) >= 2  # the small multiples were audited panel by panel


def test_no_input_hides_the_code_for_reviewers(scene: Scene, tmp_path: Path) -> None:
    out = reports.render_html(scene.result.notebook, tmp_path / "review.html", no_input=True)
    html = out.read_text()
    assert "timeline.balance_report(" not in html
    assert html.count('class="esw-chart"') == 4
    assert "digest" in html  # the outputs stay


def test_verify_accepts_an_unchanged_lake(scene: Scene) -> None:
    result = reports.verify_manifest(scene.result.manifest_path)
    assert result.ok and result.matches and result.files_intact, result.problems
    assert str(result).startswith("OK")


def test_verify_notices_one_more_synced_event(scene: Scene, tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    shutil.copy(scene.lake, lake)
    archive = tmp_path / "ledger.jsonl"
    archive.write_text(scene.archive.read_text() + scene.last_line + "\n")
    with Lake(lake) as opened:
        assert sync(open_archive(archive), opened).events == 1
    result = reports.verify_manifest(scene.result.manifest_path, lake=lake)
    assert not result.matches and not result.ok
    (check,) = result.checks
    assert check.actual_count == check.expected_count + 1
    assert check.history_unchanged is True
    assert "events were added in scope" in str(result)


def test_verify_notices_an_altered_event(scene: Scene, tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    shutil.copy(scene.lake, lake)
    # Tamper with history the way only raw SQL can: the lake's API never rewrites events.
    with duckdb.connect(str(lake)) as con:
        con.execute(
            'UPDATE events SET data = replace(data, \'"amount":"\', \'"amount":"1\') '
            "WHERE event_id = (SELECT min(event_id) FROM events "
            "WHERE event_type = 'BalanceDeposited')"
        )
    result = reports.verify_manifest(scene.result.manifest_path, lake=lake)
    assert not result.matches
    (check,) = result.checks
    assert check.actual_count == check.expected_count
    assert check.history_unchanged is False
    assert "changed or removed" in str(result)


def test_verify_notices_an_edited_report_file(scene: Scene, tmp_path: Path) -> None:
    copy = tmp_path / "report"
    shutil.copytree(scene.result.directory, copy)
    (copy / "balance_timeline.html").write_text("<p>nothing to see</p>")
    result = reports.verify_manifest(copy, lake=scene.lake)
    assert result.matches and not result.files_intact and not result.ok
    assert "balance_timeline.html" in str(result)


def test_plain_papermill_runs_the_notebook_and_records_the_read(
    scene: Scene, tmp_path: Path
) -> None:
    out = tmp_path / "out.ipynb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(NOTEBOOKS / "balance_timeline.ipynb"),
            str(out),
            "-p",
            "lake",
            str(scene.lake),
            "-p",
            "top_n",
            "3",
            "--no-progress-bar",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (record,) = reports.reads_in_notebook(json.loads(out.read_text()))
    assert record.digest == scene.result.manifest["digest"]
    assert reports.verify_manifest(out).matches  # its read records can be verified too


def test_an_eventstoredb_source_is_synced_before_the_report(tmp_path: Path) -> None:
    from esworkbench import devserver
    from esworkbench.examples.bank.seed import seed_esdb

    # Its own small server: the session's EventStoreDB may be a real, large one.
    with devserver.start() as server:
        seeded = seed_esdb(server.uri, users=5, seed=4, days=14)
        result = reports.run_report(
            "balance_timeline",
            lake=tmp_path / "lake.duckdb",
            parameters={"source": server.uri, "top_n": 3},
            out_dir=tmp_path / "reports",
            notebooks_dir=NOTEBOOKS,
        )
    assert result.ok
    assert 0 < result.manifest["event_count"] <= seeded.events
    assert result.manifest["last_position"] == seeded.last_commit_position
    (key,) = result.manifest["lake"]["checkpoints"]
    assert key.startswith("esdb://127.0.0.1")


def test_unknown_parameters_are_refused_with_the_valid_list(tmp_path: Path) -> None:
    with pytest.raises(ReportError) as caught:
        reports.run_report(
            "balance_timeline",
            lake=tmp_path / "lake.duckdb",
            parameters={"top": 3, "colour": "red"},
            out_dir=tmp_path,
            notebooks_dir=NOTEBOOKS,
        )
    message = str(caught.value)
    assert "unknown parameter(s) ['colour', 'top']" in message
    assert (
        "valid parameters: ['aggregate', 'currency', 'lake', 'on_error', 'resample', 'since', "
        "'source', 'stream_prefix', 'top_n', 'until', 'user_ids']"
    ) in message
    assert "top_n (Optional[int], default 10: chart the N accounts" in message
    assert list(tmp_path.iterdir()) == []  # refused before anything ran


def test_a_failing_cell_keeps_the_partial_report_and_names_the_cell(
    scene: Scene, tmp_path: Path
) -> None:
    with pytest.raises(reports.ReportCellError) as caught:
        reports.run_report(
            "balance_timeline",
            lake=scene.lake,
            parameters={"resample": "fortnightly"},
            out_dir=tmp_path,
            notebooks_dir=NOTEBOOKS,
        )
    error = caught.value
    source = nbformat.read(NOTEBOOKS / "balance_timeline.ipynb", as_version=4)
    failing = next(
        i
        for i, c in enumerate(source.cells)
        if c.source.startswith("report = balance_timeline.balance_report(")
    )
    assert error.cell_index == failing
    assert error.ename == "ConfigError" and "fortnightly" in error.evalue
    assert f"failed in cell {failing}" in str(error) and "report = balance_timeline" in str(error)
    result = error.result
    executed = nbformat.read(result.notebook, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    broken = next(i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs))
    assert code[broken].source == source.cells[failing].source
    assert all(c.execution_count for c in code[:broken])  # the cells before it ran
    assert all(not c.outputs and not c.execution_count for c in code[broken + 1 :])  # never ran
    assert "ConfigError" in result.html.read_text()
    outcome = result.manifest["outcome"]
    assert outcome["status"] == "failed" and outcome["cell_index"] == failing
    assert result.manifest["reads"] == []


def test_credentials_reach_the_kernel_but_no_file(tmp_path: Path) -> None:
    uri = f"esdb://admin:{SECRET}@127.0.0.1:2113?tls=false"
    before = os.environ.get(reports.URI_ENV)
    result = reports.run_report(
        str(TINY),
        lake=tmp_path / "unused.duckdb",
        parameters={"source": uri, "points": 6},
        out_dir=tmp_path,
    )
    assert os.environ.get(reports.URI_ENV) == before
    notebook = result.notebook.read_text()
    assert hashlib.sha256(uri.encode()).hexdigest() in notebook  # the kernel had the real URI
    assert "esdb://admin:***@127.0.0.1:2113" in notebook
    assert result.manifest["source"] == "esdb://admin:***@127.0.0.1:2113?tls=false"
    for path in result.directory.iterdir():
        assert SECRET not in path.read_text(), path.name


def test_render_refuses_html_that_would_fetch_a_url(tmp_path: Path) -> None:
    import altair as alt

    # A chart shown with altair's own renderer loads Vega from a CDN: not a report output.
    chart = alt.Chart(alt.Data(values=[{"x": 1}])).mark_point().encode(x="x:Q")
    with alt.renderers.enable("default"):
        bundle = chart._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    nb = nbformat.v4.new_notebook(
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        }
    )
    nb.cells = [
        nbformat.v4.new_code_cell(
            "chart", outputs=[nbformat.v4.new_output("display_data", data=data)]
        )
    ]
    path = tmp_path / "cdn.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ReportError, match="would fetch"):
        reports.render_html(path, tmp_path / "cdn.html")


def committed_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb")) + sorted(TINY.parent.glob("*.ipynb"))


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs_and_one_parameters_cell(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "lake" in reports.notebook_parameters(path)


def test_the_balance_timeline_notebook_is_thin() -> None:
    # Library calls only: no function, class, loop or import of anything but esworkbench.
    nb = nbformat.read(NOTEBOOKS / "balance_timeline.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"^\s*(def|class|for|while|with|lambda)\b", code, re.M)
    imports = re.findall(r"^(?:from|import) (\S+)", code, re.M)
    assert imports and all(i.split(".")[0] == "esworkbench" for i in imports)


def test_parse_parameters_reads_json_else_text() -> None:
    assert reports.parse_parameters(
        [
            ("top_n", "5"),
            ("user_ids", '["1"]'),
            ("since", "None"),
            ("until", "2024-02-01"),
            ("resample", "1d"),
        ]
    ) == {"top_n": 5, "user_ids": ["1"], "since": None, "until": "2024-02-01", "resample": "1d"}


def test_a_masked_uri_without_the_real_one_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(reports.URI_ENV, raising=False)
    with pytest.raises(ConfigError, match="ESWORKBENCH_ESDB_URI"):
        reports.resolve_masked_uri("esdb://admin:***@host:2113")
    real = "esdb://admin:pw@host:2113"
    monkeypatch.setenv(reports.URI_ENV, real)
    assert reports.resolve_masked_uri("esdb://admin:***@host:2113") == real
    assert reports.resolve_masked_uri("esdb://host:2113") == "esdb://host:2113"


@pytest.fixture(autouse=True)
def _no_stray_files() -> Iterator[None]:
    # Reports go where the tests say; nothing may land in the repository's reports/.
    before = set((ROOT / "reports").glob("*/*")) if (ROOT / "reports").exists() else set()
    yield
    after = set((ROOT / "reports").glob("*/*")) if (ROOT / "reports").exists() else set()
    assert after == before


def test_the_page_shows_its_provenance_and_no_path_it_was_not_given(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(scene.lake, tmp_path / "lake.duckdb")
    result = reports.run_report(
        "balance_timeline",
        lake="lake.duckdb",
        parameters={"top_n": 3, "resample": "1w"},
        out_dir="out",
        no_input=True,
        notebooks_dir=NOTEBOOKS,
    )
    html = result.html.read_text()
    # Reviewers see where the page came from, with the code hidden ...
    assert "report = balance_timeline.balance_report(" not in html
    assert "Provenance" in html and 'href="manifest.json"' in html
    assert result.manifest["digest"] in html and '"top_n": 3' in html
    # ... and the page names paths as they were given, never this machine's absolute ones.
    assert str(tmp_path) not in html
    assert str(tmp_path) not in result.manifest_path.read_text()
    assert result.manifest["lake"]["path"] == "lake.duckdb"


@pytest.mark.parametrize("name", ["../outside", "sub/../../outside", "..", "nested/inside"])
def test_a_report_name_cannot_reach_outside_the_report_directory(tmp_path: Path, name: str) -> None:
    from esworkbench.reports._parameters import _notebook_path

    reports_dir = tmp_path / "notebooks"
    (reports_dir / "nested").mkdir(parents=True)
    for notebook in (tmp_path / "outside.ipynb", reports_dir / "nested" / "inside.ipynb"):
        notebook.write_text("{}")
    with pytest.raises(ReportError, match="not a plain name"):
        _notebook_path(name, reports_dir)


def test_charts_render_in_plain_nbconvert_with_no_network(tmp_path: Path) -> None:
    # The analyst's path: a notebook executed as is (papermill here, JupyterLab alike), then
    # exported by plain nbconvert, not the report runner, and opened with the network blocked.
    import papermill
    from nbconvert import HTMLExporter

    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(TINY), str(executed), progress_bar=False)
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    charts = [o for o in outputs if "image/svg+xml" in o.get("data", {})]
    assert charts, "the chart has a static SVG"
    assert all("text/html" not in o["data"] for o in charts)  # no CDN-loading HTML
    body, _ = HTMLExporter().from_notebook_node(nb)
    page = tmp_path / "plain.html"
    page.write_text(body)
    dom = offline_dom(page.as_uri(), tmp_path)
    # The chart is on the page as an image that needs no network: inline SVG, drawn marks.
    images = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', dom)
    assert len(images) == len(charts)
    import base64

    svg = base64.b64decode(images[0]).decode()
    assert svg.startswith("<svg") and svg.count("<path") > 10
    assert "http" not in re.sub(r'xmlns(:\w+)?="[^"]*"', "", svg)  # nothing it would fetch


def test_a_cell_that_times_out_still_leaves_the_partial_notebook(tmp_path: Path) -> None:
    # The runner writes the executed notebook once, when the run ends; a run cut short by a
    # timeout (or a dead kernel) still ends, and keeps what ran.
    nb = nbformat.v4.new_notebook(
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        }
    )
    nb.cells = [
        nbformat.v4.new_code_cell('lake = ""', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('print("first cell ran")'),
        nbformat.v4.new_code_cell("import time\ntime.sleep(60)"),
    ]
    source = tmp_path / "slow.ipynb"
    nbformat.write(nb, source)

    with pytest.raises(ReportError, match="timeout"):
        reports.run_report(str(source), lake="unused", out_dir=tmp_path / "out", timeout=3)

    (directory,) = (tmp_path / "out" / "slow").iterdir()
    executed = nbformat.read(directory / "slow.ipynb", as_version=4)
    assert "first cell ran" in executed.cells[2].outputs[0]["text"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["outcome"]["status"] == "failed"
    assert (directory / "slow.html").exists()


def test_html_outputs_are_placed_whole_and_script_outputs_left_to_nbconvert(
    tmp_path: Path,
) -> None:
    # HTML outputs skip nbconvert's rewrite (placed into the finished page); an output that
    # nbconvert shows as a script instead of its HTML keeps nbconvert's choice.
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("shown()")
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data", data={"text/html": "<table><tr><td>kept whole</td></tr></table>"}
        ),
        nbformat.v4.new_output(
            "display_data",
            data={"application/javascript": "console.log('ran')", "text/html": "<b>not shown</b>"},
        ),
    ]
    nb.cells = [cell]
    source = tmp_path / "outputs.ipynb"
    nbformat.write(nb, source)

    page = reports.render_html(source, tmp_path / "outputs.html").read_text()

    assert page.count("<table><tr><td>kept whole</td></tr></table>") == 1
    assert "console.log('ran')" in page and "not shown" not in page
    assert "data-esw-slot" not in page


def test_the_vega_bundle_is_kept_between_runs_and_remade_when_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from esworkbench.reports import _html

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _html._vega_bundle.cache_clear()
    made = _html._vega_bundle((6, 4))
    (kept,) = (tmp_path / "esworkbench").glob("vega-bundle-*.js")
    assert "eswRendered" in made and kept.read_text().startswith(made)

    kept.write_text(made[: len(made) // 2] + kept.read_text()[len(made) :])  # cut short
    _html._vega_bundle.cache_clear()
    assert _html._vega_bundle((6, 4)) == made  # the damaged copy was not used
    _html._vega_bundle.cache_clear()
    assert _html._vega_bundle((6, 4)) == made  # and was made again whole
    _html._vega_bundle.cache_clear()


def test_kernels_the_runner_starts_skip_the_iri_grammar_and_still_validate_charts() -> None:
    from jupyter_client.manager import start_new_kernel

    from esworkbench.reports._runner import _KERNEL_ARGUMENTS

    km, kc = start_new_kernel(extra_arguments=_KERNEL_ARGUMENTS)
    try:
        outputs: list[str] = []
        code = (
            "import sys, altair as alt\n"
            "print(sys.modules['rfc3987_syntax'] is None, 'jsonschema' in sys.modules)\n"
            "try:\n"
            "    alt.Chart({'values': [{'a': 1}]}).mark_point().encode(x='a:Q').to_dict()\n"
            "    alt.Chart({'values': []}).mark_point(size='big').to_dict()\n"
            "except Exception as e:\n"
            "    print(type(e).__name__)\n"
        )
        kc.execute_interactive(
            code,
            timeout=60,
            output_hook=lambda msg: outputs.append(msg["content"].get("text", "")),
        )
        # Skipped, while jsonschema itself still loads and still rejects an invalid spec.
        assert "".join(outputs).split() == ["True", "True", "SchemaValidationError"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_table_cells_read_left_aligned_and_money_right_aligned(
    scene: Scene, tmp_path: Path
) -> None:
    # The page's own CSS (nbconvert's JupyterLab theme) right-aligns table cells; what a reader
    # sees is the computed style, so ask the browser for it.
    page = tmp_path / "report.html"
    audit = """<script>window.addEventListener("load", function () {
      var seen = {};
      document.querySelectorAll(".ewb-table td, .ewb-table th").forEach(function (cell) {
        var key = cell.tagName + (cell.classList.contains("ewb-money") ? ".money" : "") + ":" +
          getComputedStyle(cell).textAlign;
        seen[key] = (seen[key] || 0) + 1;
      });
      var out = document.createElement("pre");
      out.id = "alignment"; out.textContent = JSON.stringify(seen);
      document.body.appendChild(out);
    });</script>"""
    page.write_text(scene.result.html.read_text(encoding="utf-8") + audit, encoding="utf-8")
    dom = offline_dom(page.as_uri(), tmp_path)
    found = re.search(r'<pre id="alignment">(.*?)</pre>', dom, re.S)
    assert found is not None
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["TD:left"] > 0 and seen["TH:left"] > 0 and seen["TD.money:right"] > 0
    assert set(seen) == {"TD:left", "TH:left", "TD.money:right"}, seen
