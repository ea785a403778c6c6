"""Benchmark the balance-timeline report end to end on a large lake.

    python bench/report.py                        # the ~1M-event lake of bench/fold.py
    python bench/report.py --users 400 --days 90  # a quick run

Runs `esworkbench report balance_timeline` (papermill + replay + charts + HTML + manifest) on
the lake that bench/fold.py builds (built here too when missing) and prints the wall time, the
events read and the size of the HTML. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from esworkbench.lake import Lake
from esworkbench.reports import run_report

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=3800)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    lake = OUT / f"fold-{args.users}u-{args.days}d-s{args.seed}.duckdb"
    if not lake.exists():
        import fold  # the sibling benchmark builds the same lake

        OUT.mkdir(parents=True, exist_ok=True)
        fold.build_lake(lake, users=args.users, days=args.days, seed=args.seed)
    with Lake(lake, read_only=True) as opened:
        events = opened.summary().events
    with tempfile.TemporaryDirectory() as out_dir:
        started = time.perf_counter()
        result = run_report("balance_timeline", lake=lake, out_dir=out_dir)
        seconds = time.perf_counter() - started
        html_mb = result.html.stat().st_size / 1e6
        timings = result.manifest["timings"]
    print(f"lake: {lake.name}, {events:,} events")
    print(
        f"report balance_timeline end to end: {seconds:.1f} s "
        f"(execute {timings['execute_seconds']:.1f} s, render {timings['render_seconds']:.1f} s)"
    )
    print(f"events read by the notebook: {result.manifest['event_count']:,}; HTML {html_mb:.1f} MB")


if __name__ == "__main__":
    main()
