"""Benchmark the fold: sequential and parallel replay through bank.User, and the vectorized path.

    python bench/fold.py                       # ~1M sample events (lake built once, then reused)
    python bench/fold.py --users 400 --days 90 # a quick run
    python bench/fold.py --rss 3800 11400      # only: peak RSS of replay(out=...) at ~1M and ~3M

The lake is built from the sample generator on first use (bench/out/, git-ignored) and reused.
Replay timings exclude reading the lake (timed separately), so the figures compare the folds;
``replay`` end to end is read + fold. CPU seconds include the worker processes. Prints figures,
asserts nothing.

Two yardsticks from outside the library run on the same lake in the same process:

- the hand loop an analyst would write (DuckDB rows -> json.loads -> Decimal -> a balance per
  event, one output row per event, into a frame), beside ``replay`` end to end, which does far
  more (typed payloads through the aggregate's registry and upcasters, version checks, every
  rule, the whole state after every event);
- one DuckDB window query over the lake's JSON (json_extract_string + sum() over (partition by
  stream order by revision)), beside ``bank_balances(lake)``, with their balances compared.

Each prints "x/y" ratios: above 1.0 the library is the faster.

Peak memory: ``replay(lake, out=DIR)`` (results written batch by batch) runs in a fresh process
per lake size, which prints its own peak RSS, so one run's memory does not hide another's.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
from _memory import peak_rss_mb  # bench/_memory.py

from esworkbench.examples.bank.balances import bank_balances
from esworkbench.examples.bank.sample import generate
from esworkbench.fold import _engine as _fold_engine
from esworkbench.fold import replay, replay_frame
from esworkbench.lake import Lake, sync
from esworkbench.sources import SourceBatch

BANK = "esworkbench.examples.bank:User"
OUT = Path(__file__).resolve().parent / "out"


@dataclass
class LedgerSource:
    """The generated ledger as an EventSource (what a JSONL archive of it would yield)."""

    table: pa.Table
    key: str = "bench:sample-ledger"

    def describe(self) -> str:
        return f"sample ledger ({self.table.num_rows:,} events)"

    def read_batches(self, after: int | None, *, batch_size: int) -> Iterator[SourceBatch]:
        for batch in self.table.to_batches(max_chunksize=batch_size):
            yield SourceBatch(batch, int(batch.column("commit_position")[-1].as_py()))


def build_lake(path: Path, *, users: int, days: int, seed: int) -> None:
    print(f"building {path} from generate(users={users}, days={days}, seed={seed}) ...")
    started = time.perf_counter()
    ledger = generate(users=users, seed=seed, days=days)
    print(f"  generated {len(ledger):,} events in {time.perf_counter() - started:.1f}s")
    table = ledger.to_arrow()
    del ledger
    started = time.perf_counter()
    with Lake(path) as lake:
        result = sync(LedgerSource(table), lake, batch_size=200_000)
    print(
        f"  synced {result.events:,} events ({result.rejected} rejected) "
        f"in {time.perf_counter() - started:.1f}s"
    )


def cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Figure:
    wall: float
    cpu: float
    result: Any


def timed(label: str, events: int, fn: Callable[[], Any], *, repeat: int) -> Figure:
    best: Figure | None = None
    for _ in range(repeat):
        gc.collect()
        wall0, cpu0 = time.perf_counter(), cpu()
        result = fn()
        figure = Figure(time.perf_counter() - wall0, cpu() - cpu0, result)
        if best is None or figure.wall < best.wall:
            best = figure
    assert best is not None
    print(
        f"  {label:<46} {best.wall:7.2f}s wall {best.cpu:7.2f}s cpu "
        f"{events / best.wall:>10,.0f} ev/s {events / best.cpu:>10,.0f} ev/cpu-s"
    )
    return best


SIGNS = {"BalanceDeposited": 1, "TransferReceived": 1, "BalanceWithdrawn": -1, "TransferSent": -1}


def hand_loop(path: Path) -> pl.DataFrame:
    """What an analyst writes without the library: rows, json.loads, Decimal, one row each."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(
            "SELECT stream_name, stream_revision, event_type, data FROM events "
            "WHERE category = 'user' ORDER BY stream_name, stream_revision"
        ).fetchall()
    finally:
        con.close()
    zero = Decimal("0.00")
    balances: dict[str, Decimal] = {}
    out = []
    for stream, revision, event_type, data in rows:
        payload = json.loads(data)
        balance = balances.get(stream, zero)
        sign = SIGNS.get(event_type)
        if sign is not None:
            balance += sign * Decimal(payload["amount"])
        balances[stream] = balance
        out.append((stream, revision, event_type, balance))
    return pl.DataFrame(
        out,
        schema={
            "stream_name": pl.String,
            "stream_revision": pl.UInt64,
            "event_type": pl.String,
            "balance": pl.Decimal(38, 2),
        },
        orient="row",
    )


WINDOW_SQL = """
SELECT stream_name, stream_revision, commit_position, event_type,
       sum(CASE WHEN event_type IN ('BalanceWithdrawn', 'TransferSent') THEN -1 ELSE 1 END
           * TRY_CAST(json_extract_string(data, '$.amount') AS DECIMAL(38, 2)))
         OVER (PARTITION BY stream_name ORDER BY stream_revision) AS balance
FROM events
WHERE category = 'user'
  AND event_type IN ('BalanceDeposited', 'TransferReceived', 'BalanceWithdrawn', 'TransferSent')
ORDER BY commit_position
"""


def window_query(path: Path) -> pl.DataFrame:
    """One DuckDB window query over the lake's JSON: the balances, straight from SQL."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        frame = pl.from_arrow(con.sql(WINDOW_SQL).to_arrow_table())
    finally:
        con.close()
    assert isinstance(frame, pl.DataFrame)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3_800)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per figure")
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument(
        "--no-gc-compare", action="store_true", help="skip the run with the cyclic GC left on"
    )
    parser.add_argument("--no-parallel", action="store_true", help="skip the workers=2 run")
    parser.add_argument(
        "--rss",
        type=int,
        nargs="+",
        metavar="USERS",
        help="only measure peak RSS of replay(out=...) on the lakes of these user counts",
    )
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_out is not None:
        return child_replay_out(args.child_out, args.batch_size)
    if args.rss:
        return peak_rss(args.rss, args.days, args.seed, args.batch_size)

    OUT.mkdir(exist_ok=True)
    path = OUT / f"fold-{args.users}u-{args.days}d-s{args.seed}.duckdb"
    if not path.exists():
        build_lake(path, users=args.users, days=args.days, seed=args.seed)

    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"polars {pl.__version__}, pyarrow {pa.__version__}"
    )
    with Lake(path, read_only=True) as lake:
        n = lake.scan_events(category="user").select(pl.len()).collect().item()
        print(f"lake: {path.name}, {n:,} user events\n")
        events = timed(
            "read lake -> frame (scan_events)",
            n,
            lambda: lake.scan_events(category="user").collect(),
            repeat=args.repeat,
        ).result

        def fold(workers: int) -> Any:
            return replay_frame(
                events, BANK, on_error="skip", workers=workers, batch_size=args.batch_size
            )

        seq = timed("replay_frame, sequential", n, lambda: fold(1), repeat=args.repeat)
        if not args.no_parallel:
            par = timed(
                "replay_frame, workers=2 (fork, Arrow in/out)",
                n,
                lambda: fold(2),
                repeat=args.repeat,
            )
            same = seq.result.timeline.equals(par.result.timeline) and seq.result.findings.equals(
                par.result.findings
            )
            print(
                f"    parallel/sequential wall speed-up {seq.wall / par.wall:.2f}x; "
                f"same frames: {same}; findings: {seq.result.findings.height:,}"
            )
            del par
        if not args.no_gc_compare:
            with gc_left_on():
                timed("replay_frame, sequential, cyclic GC left on", n, lambda: fold(1), repeat=1)
        hand = timed("hand loop (rows, json.loads, Decimal)", n, lambda: hand_loop(path), repeat=2)
        # Rows the lake rejected have a timeline row but no hand-loop row: compare the others.
        keys = ["stream_name", "stream_revision"]
        for workers in (1,) if args.no_parallel else (1, 2):
            end = timed(
                f"replay(lake) end to end, workers={workers}",
                n,
                lambda w=workers: replay(  # type: ignore[misc]
                    lake, BANK, on_error="skip", batch_size=args.batch_size, workers=w
                ),
                repeat=args.repeat,
            )
            paired = hand.result.join(
                end.result.timeline.select(*keys, pl.col("balance").alias("fold")), on=keys
            )
            same = paired.height == hand.result.height and paired["balance"].equals(paired["fold"])
            print(
                f"    replay(lake, workers={workers}) vs hand loop: {hand.wall / end.wall:.2f}x "
                f"wall, {hand.cpu / end.cpu:.2f}x cpu (>= 1.0: replay is as fast); "
                f"same balances: {same}"
            )
            del end, paired
        vec = timed(
            "bank_balances(frame), vectorized", n, lambda: bank_balances(events), repeat=args.repeat
        )
        window = timed("DuckDB window query over the JSON", n, lambda: window_query(path), repeat=2)
        lake_vec = timed(
            "bank_balances(lake) end to end", n, lambda: bank_balances(lake), repeat=args.repeat
        )
        same_window = window.result["balance"].equals(lake_vec.result["balance"])
        print(
            f"    bank_balances(lake) vs window query: {window.wall / lake_vec.wall:.2f}x wall, "
            f"{window.cpu / lake_vec.cpu:.2f}x cpu; same balances: {same_window}"
        )
        print(f"    vectorized/sequential wall speed-up {seq.wall / vec.wall:.1f}x")
        print(
            f"    ({vec.result.height:,} of the {n:,} events move money; ev/s is over all events)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"\npeak RSS of this process: {peak_rss_mb():,.0f} MB")


def peak_rss(user_counts: list[int], days: int, seed: int, batch_size: int) -> None:
    """Peak RSS of replay(out=...) per lake size, each in a fresh process."""
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    for users in user_counts:
        path = OUT / f"fold-{users}u-{days}d-s{seed}.duckdb"
        if not path.exists():
            build_lake(path, users=users, days=days, seed=seed)
        found = subprocess.run(
            [sys.executable, __file__, "--child-out", str(path), "--batch-size", str(batch_size)],
            check=True,
            capture_output=True,
            text=True,
        )
        figures = json.loads(found.stdout.strip().splitlines()[-1])
        print(
            f"  replay(out=DIR) of {figures['events']:>10,} events: peak RSS "
            f"{figures['rss_mb']:>6,.0f} MB, {figures['wall']:6.1f} s wall, "
            f"{figures['cpu']:6.1f} s cpu ({path.name})"
        )


def child_replay_out(path: Path, batch_size: int) -> None:
    """In a fresh process: replay(out=...) and print what it took, as JSON."""
    with tempfile.TemporaryDirectory() as out:
        wall0, cpu0 = time.perf_counter(), cpu()
        result = replay(path, BANK, on_error="skip", batch_size=batch_size, out=out)
        wall, used = time.perf_counter() - wall0, cpu() - cpu0
        print(
            json.dumps(
                {"events": result.events_read, "rss_mb": peak_rss_mb(), "wall": wall, "cpu": used}
            )
        )


@contextlib.contextmanager
def gc_left_on() -> Iterator[None]:
    original = _fold_engine.gc_paused
    _fold_engine.gc_paused = contextlib.nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        _fold_engine.gc_paused = original


if __name__ == "__main__":
    main()
