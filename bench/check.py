"""Benchmark the anomaly check on a ~1M-event lake: every rule, end to end, and by hand.

    python bench/check.py                        # ~1M sample events (lake built once, reused)
    python bench/check.py --users 400 --days 90  # a quick run

Prints, in one run: the throughput of each rule and of the set-based rules together (the
generic and bank rules that run in DuckDB), the whole sweep with replay, and beside them what a
user would write by hand for one of them (duplicates: one DuckDB query over the lake's events).
Shares the lake of bench/fold.py. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from fold import build_lake  # bench/fold.py: the same lake, built once

from esworkbench.anomalies import ReplayRule, check
from esworkbench.examples.bank.rules import RULES
from esworkbench.lake import Lake

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3_800)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    path = OUT / f"fold-{args.users}u-{args.days}d-s{args.seed}.duckdb"
    if not path.exists():
        build_lake(path, users=args.users, days=args.days, seed=args.seed)
    print(f"load average {os.getloadavg()[0]:.2f}; lake {path.name}")

    set_based = [
        r for r in RULES if not isinstance(r, ReplayRule) and r.name != "negative_without_facility"
    ]
    with Lake(path, read_only=True) as lake:
        started = time.perf_counter()
        found = check(lake, set_based)
        wall = time.perf_counter() - started
        n = found.events_checked
        print(f"events in the lake: {n:,}")
        print(
            f"set-based rules ({len(set_based)}), end to end: {wall:.2f}s = "
            f"{n / wall:,.0f} events/s, {found.frame.height:,} findings"
        )
        for name, seconds in found.seconds.items():
            print(f"  {name:<26} {seconds:6.2f}s  {n / seconds:>14,.0f} events/s")

        started = time.perf_counter()
        by_hand = lake.read_sql(
            "SELECT event_id FROM (SELECT event_id::VARCHAR AS event_id, row_number() OVER "
            "(PARTITION BY stream_name, event_type, data, metadata ORDER BY commit_position) "
            "AS copy "
            "FROM events) WHERE copy > 1"
        )
        hand = time.perf_counter() - started
        print(
            f"by hand, duplicates as one DuckDB query: {hand:.2f}s = {n / hand:,.0f} events/s "
            f"({by_hand.height:,} rows; the rule: {found.seconds['duplicate_payload']:.2f}s)"
        )

        started = time.perf_counter()
        everything = check(lake, RULES)
        wall = time.perf_counter() - started
        print(
            f"every rule with replay ({len(RULES)}), end to end: {wall:.2f}s = "
            f"{n / wall:,.0f} events/s, {everything.frame.height:,} findings "
            f"(replay {everything.seconds['replay']:.2f}s)"
        )


if __name__ == "__main__":
    main()
