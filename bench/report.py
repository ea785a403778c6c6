"""Benchmark the balance-timeline report end to end on a large lake.

    python bench/report.py                        # the ~1M-event lake of bench/fold.py
    python bench/report.py --users 400 --days 90  # a quick run
    python bench/report.py --keep out/report      # keep the report (HTML, notebook, manifest)

Runs `esworkbench report balance_timeline` (papermill + replay + charts + HTML + manifest) on
the lake that bench/fold.py builds (built here too when missing) and prints the wall time, the
events read and the size of the HTML, with a breakdown of the one run: what the notebook's
report object timed inside its cell (read, replay, sections), the chart and table cells, the
rest of the cells, papermill's own overhead (kernel start, saving the notebook), and the HTML
render (nbconvert, chart outputs); then where the HTML's bytes go. The replay (esworkbench.fold)
is printed on its own line, so the figures for everything around it can be read apart from it.
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from esworkbench.lake import Lake
from esworkbench.reports import run_report, skip_iri_grammar

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=3800)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="write the report under this directory")
    args = parser.parse_args()
    lake = OUT / f"fold-{args.users}u-{args.days}d-s{args.seed}.duckdb"
    if not lake.exists():
        import fold  # the sibling benchmark builds the same lake

        OUT.mkdir(parents=True, exist_ok=True)
        fold.build_lake(lake, users=args.users, days=args.days, seed=args.seed)
    with Lake(lake, read_only=True) as opened:
        events = opened.summary().events
    skip_iri_grammar()  # as `esworkbench report` does
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.keep or Path(scratch)
        started = time.perf_counter()
        result = run_report("balance_timeline", lake=lake, out_dir=out_dir)
        seconds = time.perf_counter() - started
        html = result.html.read_text(encoding="utf-8")
        executed = json.loads(result.notebook.read_text())
        if args.keep:
            print(f"report kept in {result.directory}")
    load_after = os.getloadavg()
    timings = result.manifest["timings"]
    print(f"lake: {lake.name}, {events:,} events")
    print(f"load average before {_load(load_before)}, after {_load(load_after)} (2 cores shared)")
    print(
        f"report balance_timeline end to end: {seconds:.1f} s "
        f"(execute {timings['execute_seconds']:.1f} s, render {timings['render_seconds']:.1f} s)"
    )
    for name, value in _breakdown(timings, executed, seconds):
        print(f"  {name:<44} {value:6.1f} s")
    print(
        f"events read by the notebook: {result.manifest['event_count']:,}; "
        f"HTML {len(html.encode()) / 1e6:.1f} MB"
    )
    for name, size in _html_parts(html):
        print(f"  {name:<44} {size / 1e6:6.2f} MB")


def _breakdown(
    timings: dict[str, Any], executed: dict[str, Any], total: float
) -> list[tuple[str, float]]:
    """Seconds by part of the run: stages inside the report cell, then cells by kind."""
    cells = executed.get("cells", [])
    kinds = {"charts": 0.0, "tables": 0.0, "other cells": 0.0}
    report_cell = 0.0
    for cell in timings["cells"]:
        source = "".join(cells[cell["index"]].get("source", ""))
        if "balance_timeline.balance_report(" in source:
            report_cell += cell["seconds"]
        elif source.startswith("charts."):
            kinds["charts"] += cell["seconds"]
        elif source.startswith("reports.table("):
            kinds["tables"] += cell["seconds"]
        else:
            kinds["other cells"] += cell["seconds"]
    stages = timings.get("stages", {})
    in_cells = report_cell + sum(kinds.values())
    rows = [
        ("read the lake (esworkbench.lake)", stages.get("read", 0.0)),
        ("replay (esworkbench.fold)", stages.get("replay", 0.0)),
        ("report sections (balance_timeline)", stages.get("sections", 0.0)),
        ("rest of the report cell", report_cell - sum(stages.values())),
    ]
    if "replay" not in stages:  # a version of the report that did not time its stages
        rows = [("report cell (read + replay + sections)", report_cell)]
    rows += [
        ("chart cells (build + SVG in the kernel)", kinds["charts"]),
        ("table cells", kinds["tables"]),
        ("other cells (set-up, imports, describe)", kinds["other cells"]),
        ("papermill overhead (kernel, saving)", timings["execute_seconds"] - in_cells),
        ("nbconvert render (HTML, charts, bundle)", timings["render_seconds"]),
        (
            "runner (manifest, hashes)",
            total - timings["execute_seconds"] - timings["render_seconds"],
        ),
    ]
    if "replay" in stages:
        rows.append(("total without the replay", total - stages["replay"]))
    return rows


def _html_parts(html: str) -> list[tuple[str, int]]:
    """Bytes of the page by part: each chart (static SVG + spec), tables, the Vega bundle.

    nbconvert rewrites the markup (attributes sorted), so the parts are found by class names.
    """
    parts = []
    starts = [m.start() for m in re.finditer(r'<div class="esw-chart">', html)]
    for start in starts:
        end = html.index("</script></div>", start) + len("</script></div>")
        chart = html[start:end]
        spec = re.search(r'class="esw-chart-spec"[^>]*>(.*?)</script>', chart, re.S)
        title: Any = json.loads(spec.group(1)).get("title", "") if spec else ""
        title = title.get("text", "") if isinstance(title, dict) else title
        parts.append((f"chart: {title or 'untitled'}"[:44], len(chart.encode())))
    tables = re.findall(r'<div[^>]*class="ewb-table"[^>]*>.*?</tbody></table></div>', html, re.S)
    parts.append((f"tables ({len(tables)}, every row)", sum(len(t.encode()) for t in tables)))
    bundle = re.search(r"<script data-esw-bundle[^>]*>.*?</script>", html, re.S)
    parts.append(("Vega bundle (once)", len(bundle.group(0).encode()) if bundle else 0))
    rest = len(html.encode()) - sum(size for _, size in parts)
    parts.append(("the rest (nbconvert page, code, text)", rest))
    return parts


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
