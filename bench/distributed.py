"""Benchmark replay and rebuild on Dask: single process vs a LocalCluster, and a planning estimate.

    python bench/distributed.py                        # ~1M sample events (bench/fold.py's lake)
    python bench/distributed.py --users 400 --days 90  # a quick run

The lake is bench/fold.py's (built on first use in bench/out/, then reused). Prints, for one
process and for a LocalCluster of worker processes (one thread each): wall time end to end
(export check, tasks, reading the results back), the tasks' own compute time from Dask's task
stream, speed-up, overhead per event, and from the per-worker rate an estimate of the wall time
of a billion-event replay on clusters of several sizes. Asserts nothing; checks that the
results are equal and says so.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

from esworkbench.fold import replay
from esworkbench.lake import Lake
from esworkbench.projections import rebuild

V1 = "esworkbench.examples.bank.projections:AccountSummaryV1"


def wall(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def task_seconds(stream: list[dict[str, Any]]) -> float:
    """Seconds the workers spent computing tasks (the task stream's compute spans)."""
    total = 0.0
    for task in stream:
        for span in task.get("startstops", ()):
            if span["action"] == "compute":
                total += span["stop"] - span["start"]
    return total


def dask_distributed() -> Any:
    """The `distributed` package: this file's name hides it while bench/ is first on sys.path."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("distributed", None)
    return importlib.import_module("distributed")


def main() -> None:
    from fold import BANK, OUT, build_lake  # bench/fold.py, beside this file

    distributed = dask_distributed()
    Client, LocalCluster = distributed.Client, distributed.LocalCluster
    get_task_stream = distributed.get_task_stream
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3_800)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=16)
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    path = OUT / f"fold-{args.users}u-{args.days}d-s{args.seed}.duckdb"
    if not path.exists():
        build_lake(path, users=args.users, days=args.days, seed=args.seed)
    work = OUT / f"{path.stem}.dask"
    shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")

    with Lake(path, read_only=True) as lake:
        n = lake.scan_events(category="user").select(pl.len()).collect().item()
        total = lake.summary().events
        print(f"lake: {path.name}, {n:,} user events ({total:,} in all)\n")
        first_export, manifest = wall(
            lambda: lake.export_partitions(work / "partitions", buckets=args.partitions)
        )
        again, _ = wall(
            lambda: lake.export_partitions(work / "partitions", buckets=args.partitions)
        )
    size = sum(f.stat().st_size for f in (work / "partitions").glob("*.parquet"))
    print(
        f"  {f'export, {args.partitions} partitions':<36} {first_export:7.2f}s "
        f"({manifest.events / first_export:,.0f} ev/s, {size / 2**20:,.0f} MiB of Parquet)"
    )
    print(f"  {'export again, nothing changed':<36} {again:7.2f}s (digests only)")

    single, local = wall(lambda: replay(path, BANK))
    print(f"  {'replay, one process':<36} {single:7.2f}s ({n / single:,.0f} ev/s)")

    with (
        LocalCluster(
            n_workers=args.workers, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        # Workers import the package once; a cluster that runs replays has done so already.
        client.run(lambda: __import__("esworkbench.fold._dask"))
        with get_task_stream(client) as stream:
            distributed, result = wall(
                lambda: (
                    replay(
                        path,
                        BANK,
                        engine="dask",
                        scheduler=client,
                        partitions=args.partitions,
                        workdir=work,
                    ).timeline
                )
            )
        computed = task_seconds(stream.data)
        same = result.equals(local.timeline)
        print(
            f"  {f'replay, dask, {args.workers} workers':<36} {distributed:7.2f}s "
            f"({n / distributed:,.0f} ev/s); tasks computed {computed:.2f}s; same rows: {same}"
        )
        per_worker = n / computed
        speedup = single / distributed
        overhead_us = (distributed * args.workers - single) / n * 1e6
        print(
            f"    speed-up {speedup:.2f}x on {args.workers} workers; overhead "
            f"{overhead_us:.2f} us/event (worker-seconds beyond one process's)"
        )

        copy_local, copy_dask = work / "local.duckdb", work / "dask.duckdb"
        shutil.copy(path, copy_local)
        shutil.copy(path, copy_dask)
        rebuild_single, _ = wall(lambda: rebuild(copy_local, V1))
        with get_task_stream(client) as stream:
            rebuild_dask, _ = wall(
                lambda: rebuild(
                    copy_dask,
                    V1,
                    engine="dask",
                    scheduler=client,
                    partitions=args.partitions,
                    workdir=work,
                )
            )
        with Lake(copy_local, read_only=True) as a, Lake(copy_dask, read_only=True) as b:
            same_rows = (
                a.read_model("account_summary", 1)
                .read()
                .equals(b.read_model("account_summary", 1).read())
            )
        print(
            f"  rebuild {V1.rsplit(':')[-1]}, one process  {rebuild_single:7.2f}s; dask "
            f"{rebuild_dask:.2f}s (tasks computed {task_seconds(stream.data):.2f}s; "
            f"speed-up {rebuild_single / rebuild_dask:.2f}x); same read model: {same_rows}"
        )

    export_rate = manifest.events / first_export
    print(f"\nplanning a billion-event replay (per-worker rate {per_worker:,.0f} ev/s here):")
    print(f"  export once on the lake's machine: ~{1e9 / export_rate / 3600:.1f} h; then only")
    print("  partitions with new events are rewritten")
    for workers in (2, 16, 64, 256):
        hours = 1e9 / (per_worker * workers) / 3600
        print(f"  {workers:>4} workers: ~{hours:5.2f} h of folding (+ scheduling, I/O)")
    print(
        "  (rate = events / task compute seconds on this machine's cores; aggregates heavier "
        "than the bank's scale it down)"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
