"""Benchmark projection rebuilds on a ~1M-event lake, each beside what a user would write by hand.

    python bench/rebuild.py                      # the 1M-event sample lake (built once, reused)
    python bench/rebuild.py --users 400 --days 90

Prints, for the Python projection (AccountSummaryV1) and the SQL projection (AccountTotals):
the estimate made from a sampled prefix, the measured rebuild time and throughput, and the
estimate's error; next to them, in the same run, the hand-written reference: a plain Python loop
over ``lake.iter_batches`` (json.loads, Decimal, dict updates) and one DuckDB query. Rebuilds run
on a copy of the lake. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from decimal import Decimal
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fold import OUT, build_lake

from esworkbench.lake import Lake
from esworkbench.projections import rebuild

V1 = "esworkbench.examples.bank.projections:AccountSummaryV1"
TOTALS = "esworkbench.examples.bank.projections:AccountTotals"
SIGN = {"BalanceDeposited": 1, "BalanceWithdrawn": -1, "TransferSent": -1, "TransferReceived": 1}


def plain_loop(lake: Lake) -> tuple[float, int]:
    """What a user writes by hand: balances and counts per user from the raw JSON."""
    started = time.perf_counter()
    rows: dict[str, list] = {}
    n = 0
    types = [*SIGN, "UserCreated", "EmailChanged", "UserClosed"]
    for batch in lake.iter_batches(batch_size=100_000, event_types=types):
        for event_type, data in zip(
            batch.column("event_type").to_pylist(), batch.column("data").to_pylist(), strict=True
        ):
            n += 1
            payload = json.loads(data)
            row = rows.setdefault(payload["userId"], [Decimal("0.00"), 0])
            sign = SIGN.get(event_type)
            if sign is not None:
                row[0] += sign * Decimal(payload["amount"])
            row[1] += 1
    return time.perf_counter() - started, n


def one_query(path: Path) -> float:
    """What a user writes by hand in DuckDB: one aggregation over the JSON."""
    con = duckdb.connect(str(path), read_only=True)
    started = time.perf_counter()
    con.execute(
        "SELECT data->>'userId' AS user_id, sum(CASE WHEN event_type IN ('BalanceDeposited', "
        "'TransferReceived') THEN 1 ELSE -1 END * CAST(data->>'amount' AS DECIMAL(18, 2))) "
        "FROM events WHERE event_type IN ('BalanceDeposited', 'BalanceWithdrawn', "
        "'TransferSent', 'TransferReceived') GROUP BY 1"
    ).fetchall()
    seconds = time.perf_counter() - started
    con.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3_800)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    source = OUT / f"fold-{args.users}u-{args.days}d-s{args.seed}.duckdb"
    if not source.exists():
        build_lake(source, users=args.users, days=args.days, seed=args.seed)
    path = OUT / f"rebuild-{args.users}u-{args.days}d-s{args.seed}.duckdb"
    shutil.copyfile(source, path)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    with Lake(path) as lake:
        print(f"lake {source.name}: {lake.summary().events:,} events")
        for label, projection in (("python", V1), ("sql", TOTALS)):
            result = rebuild(lake, projection, estimate=True, resume=False, workers=args.workers)
            assert result.estimate is not None
            print(
                f"{label:>6} projection: {result.events:,} events in {result.seconds:.2f}s = "
                f"{result.events_per_second:,.0f} events/s, {result.rows:,} rows; estimate "
                f"{result.estimate.seconds:.2f}s ({result.estimate.error(result.seconds):+.1%}), "
                f"from {result.estimate.sample_events:,} events in "
                f"{result.estimate.sample_seconds:.2f}s"
            )
        seconds, n = plain_loop(lake)
        print(f" plain loop by hand: {n:,} events in {seconds:.2f}s = {n / seconds:,.0f} events/s")
    seconds = one_query(path)
    print(f"  one DuckDB query by hand: {seconds:.2f}s")
    path.unlink()


if __name__ == "__main__":
    main()
