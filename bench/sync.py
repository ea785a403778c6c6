"""Benchmark: EventStoreDB (dev server) -> event lake, fast and plain readers in the same run.

    python bench/sync.py                       # 1,000,000 events
    python bench/sync.py --events 1000000 3000000
    python bench/sync.py --events 100000 --readers fast

For each size: a dev server runs in its own process, holding a sample ledger of about that many
events (seeded straight into its store, no gRPC). Each sync runs in a fresh client process so
that its CPU time and peak RSS are its own. Printed per reader:

- events/s end to end (server read -> decode -> DuckDB commit);
- client CPU per event (user + sys of the client process, DuckDB threads included): this does
  not depend on how fast the server is, and the Python dev server is slow (~30k events/s);
- where the client's CPU went, per event: the sync's own timers (SyncResult.timings), by phase;
- peak RSS of the client process (should be set by the batch size, not the lake size);
- an incremental sync after adding 1% new events (its time should be ~1% of the full sync's).

With ``--archive``, the source is a file instead: the fold bench's sample lake (built by
bench/fold.py, reused) is exported as JSONL.gz, JSONL and Parquet archives, and each is synced
into a fresh lake (``sync(open_archive(path), lake)``: validation, ``_rejected``, checkpoints)
next to DuckDB reading the same file straight into a table, in the same process:

    python bench/sync.py --archive                       # the 1,100-user, 365-day sample lake
    python bench/sync.py --archive --archive-lake bench/out/fold-3800u-365d-s1.duckdb

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _memory import peak_rss_mb  # bench/_memory.py

HERE = Path(__file__).resolve().parent
EVENTS_PER_USER_DAY = 0.78  # measured on the sample generator (90 days)
DAYS = 90


# -- server process ---------------------------------------------------------------------------


def _seed(store: Any, users: int, seed: int) -> int:
    from esworkbench.devserver.store import ANY, ProposedEvent
    from esworkbench.examples.bank.sample import generate

    ledger = generate(users=users, seed=seed, days=DAYS)
    for first, stop, _raw in ledger.batches():
        store.append(
            ledger.stream_name[first],
            ANY,
            [
                ProposedEvent(
                    ledger.event_id[i],
                    ledger.event_type[i],
                    ledger.content_type[i] == "application/json",
                    ledger.metadata[i],
                    ledger.data[i],
                )
                for i in range(first, stop)
            ],
        )
    return len(ledger)


def serve(events: int) -> None:
    """Run a dev server with ~`events` sample events; answer 'append N' on stdin."""
    import gc

    from esworkbench.devserver import DevServer

    gc.disable()  # millions of long-lived objects, no cycles
    server = DevServer().start()
    users = max(2, round(events / EVENTS_PER_USER_DAY / DAYS))
    count = _seed(server.store, users, seed=1)
    gc.freeze()
    print(json.dumps({"uri": server.uri, "events": count}), flush=True)
    seed = 2
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "append":
            n = int(cmd[1])
            added = _seed(server.store, max(2, round(n / EVENTS_PER_USER_DAY / DAYS)), seed)
            seed += 1
            print(json.dumps({"added": added}), flush=True)
        elif cmd and cmd[0] == "quit":
            break
    server.stop()


# -- client process ---------------------------------------------------------------------------


def client(uri: str, lake_path: str, reader: str, batch_size: int) -> None:
    """One sync in this process; print its figures as JSON."""
    from esworkbench.lake import Lake, sync
    from esworkbench.sources.esdb import EsdbSource

    source = EsdbSource(uri, reader=reader)  # type: ignore[arg-type]
    # Measured: opening the lake, the sync and closing the lake (its last checkpoint), so the
    # figures include everything the lake costs; not the imports.
    before = os.times()
    t0 = time.perf_counter()
    with Lake(lake_path) as lake:
        result = sync(source, lake, batch_size=batch_size)
    wall = time.perf_counter() - t0
    after = os.times()
    with Lake(lake_path, read_only=True) as lake:
        rows = lake.summary().events
    cpu = (after.user - before.user) + (after.system - before.system)
    n = result.events + result.rejected + result.duplicates
    print(
        json.dumps(
            {
                "reader": reader,
                "events": n,
                "lake_events": rows,
                "wall": wall,
                "cpu": cpu,
                "rss_mb": peak_rss_mb(),
                "outcome": result.outcome,
                "timings": dict(result.timings),
            }
        ),
        flush=True,
    )


def _run_client(uri: str, lake: Path, reader: str, batch_size: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--client", uri, str(lake), reader, str(batch_size)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _line(label: str, r: dict[str, Any]) -> str:
    per_event = r["cpu"] / r["events"] * 1e6 if r["events"] else float("nan")
    rate = r["events"] / r["wall"] if r["wall"] else float("nan")
    return (
        f"  {label:<22} {r['events']:>10,} events  {r['wall']:7.1f} s  {rate:>9,.0f} ev/s  "
        f"client CPU {r['cpu']:7.1f} s = {per_event:6.2f} us/event  "
        f"peak RSS {r['rss_mb']:6.0f} MB"
    )


def _breakdown(r: dict[str, Any]) -> str:
    """Client CPU per event by phase (the sync's own timers), and what they leave out."""
    from esworkbench.lake._timings import PHASES

    n = max(r["events"], 1)
    parts = [f"{p} {r['timings'].get(p, 0.0) / n * 1e6:.2f}" for p in PHASES]
    other = r["cpu"] - sum(r["timings"].values())
    return (
        "      us/event: " + ", ".join(parts) + f", other {other / n * 1e6:.2f} "
        "(gRPC and DuckDB threads, opening and closing the lake)"
    )


def bench(events: int, readers: list[str], batch_size: int, workdir: Path) -> None:
    print(f"\n== {events:,} events (batch size {batch_size:,}) ==", flush=True)
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(events)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        info = json.loads(server.stdout.readline())
        print(
            f"  dev server with {info['events']:,} events ready in "
            f"{time.perf_counter() - t0:.0f} s ({info['uri']})",
            flush=True,
        )
        full: dict[str, dict[str, Any]] = {}
        for reader in readers:
            lake = workdir / f"lake-{events}-{reader}.duckdb"
            lake.unlink(missing_ok=True)
            full[reader] = _run_client(info["uri"], lake, reader, batch_size)
            print(_line(f"{reader} full sync", full[reader]), flush=True)
            print(_breakdown(full[reader]), flush=True)
        if len(readers) == 2 and all(r in full for r in ("fast", "plain")):
            ratio = (full["fast"]["cpu"] / full["fast"]["events"]) / (
                full["plain"]["cpu"] / full["plain"]["events"]
            )
            print(
                f"  fast/plain client CPU per event: {ratio:.2f} (plain / fast: {1 / ratio:.1f}x)",
                flush=True,
            )
        server.stdin.write(f"append {max(1, events // 100)}\n")
        server.stdin.flush()
        added = json.loads(server.stdout.readline())["added"]
        print(f"  appended {added:,} new events (1%)", flush=True)
        for reader in readers:
            lake = workdir / f"lake-{events}-{reader}.duckdb"
            inc = _run_client(info["uri"], lake, reader, batch_size)
            share = inc["wall"] / full[reader]["wall"] * 100
            print(
                _line(f"{reader} incremental", inc) + f"  ({share:.1f}% of full time)", flush=True
            )
        size = sum((workdir / f"lake-{events}-{r}.duckdb").stat().st_size for r in readers[:1])
        print(f"  lake file: {size / 2**20:,.0f} MB", flush=True)
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()


def archive_bench(
    lake_path: Path, workdir: Path, batch_size: int | None, *, profile: bool = False
) -> None:
    """Sync archives of `lake_path` into fresh lakes, beside DuckDB reading them directly."""
    import duckdb

    from esworkbench.lake import Lake, sync
    from esworkbench.sources.files import open_archive

    if not lake_path.exists():
        sys.exit(f"no lake at {lake_path}: run bench/fold.py first (it builds and keeps it)")
    print(f"load average {_load()}; archives of {lake_path.name}", flush=True)
    archives = []
    with Lake(lake_path, read_only=True) as lake:
        for suffix in (".jsonl.gz", ".jsonl", ".parquet"):
            path = workdir / f"archive-{lake_path.stem}{suffix}"
            if not path.exists():
                lake.export_archive(path)
            archives.append(path)
    for path in archives:
        reader = (
            f"read_parquet('{path}')"
            if path.suffix == ".parquet"
            else f"read_json('{path}', format='newline_delimited', columns={_JSONL_COLUMNS})"
        )
        target = workdir / "archive-target.duckdb"
        _remove_lake(target)
        cpu0, t0 = _cpu(), time.perf_counter()
        con = duckdb.connect(str(target))
        con.execute(f"CREATE TABLE events AS SELECT * FROM {reader}")
        (rows,) = con.execute("SELECT count(*) FROM events").fetchone() or (0,)
        con.close()
        direct = (time.perf_counter() - t0, _cpu() - cpu0)
        _remove_lake(target)
        cpu0, t0 = _cpu(), time.perf_counter()
        with Lake(target) as new, _statement_profile(profile) as statements:
            result = sync(open_archive(path), new, batch_size=batch_size)
        synced = (time.perf_counter() - t0, _cpu() - cpu0)
        n = result.events + result.rejected
        _remove_lake(target)
        size = path.stat().st_size / 2**20
        print(f"  {path.name} ({size:,.0f} MB, {rows:,} events)")
        print(
            f"    DuckDB reads it into a table   {direct[0]:6.2f} s wall {direct[1]:6.2f} s cpu "
            f"{rows / direct[0]:>10,.0f} ev/s"
        )
        print(
            f"    sync(open_archive) into a lake {synced[0]:6.2f} s wall {synced[1]:6.2f} s cpu "
            f"{n / synced[0]:>10,.0f} ev/s  ({result.events:,} events, "
            f"{result.rejected:,} rejected, {result.batches} batches)"
        )
        print(
            "      us/event: "
            + ", ".join(f"{k} {v / n * 1e6:.2f}" for k, v in result.timings.items()),
        )
        print(f"    sync / DuckDB time: {synced[0] / direct[0]:.2f}x wall", flush=True)
        for sql, (calls, seconds) in sorted(statements.items(), key=lambda kv: -kv[1][1])[:12]:
            print(f"      {seconds / n * 1e6:6.3f} us/event {calls:4d}x  {sql}")
    print(f"load average after: {_load()}")


@contextlib.contextmanager
def _statement_profile(on: bool) -> Iterator[dict[str, list[Any]]]:
    """CPU seconds per SQL statement of the ingest (the calling thread's), when `on`.

    Wraps the lake's `q` / `rows` helpers where the ingest and the writer call them; the
    typed-view queries (`_views`, which call DuckDB directly) show as the phase "views" only.
    """
    from esworkbench.lake import _ingest, _writer

    found: dict[str, list[Any]] = {}
    if not on:
        yield found
        return

    def timed(run: Any) -> Any:
        def wrapper(con: Any, sql: str, params: Any = None) -> Any:
            started = time.thread_time()
            try:
                return run(con, sql, params)
            finally:
                entry = found.setdefault(" ".join(sql.split())[:80], [0, 0.0])
                entry[0] += 1
                entry[1] += time.thread_time() - started

        return wrapper

    saved = [(m, m.q, m.rows) for m in (_ingest, _writer)]
    for module, q, rows in saved:
        module.q, module.rows = timed(q), timed(rows)
    try:
        yield found
    finally:
        for module, q, rows in saved:
            module.q, module.rows = q, rows


# The archive_line format, typed as the sync types it (DuckDB would otherwise sample the file).
_JSONL_COLUMNS = (
    "{commit_position: 'UBIGINT', prepare_position: 'UBIGINT', stream_name: 'VARCHAR', "
    "stream_revision: 'UBIGINT', event_id: 'VARCHAR', event_type: 'VARCHAR', "
    "created: 'TIMESTAMPTZ', content_type: 'VARCHAR', data: 'VARCHAR', metadata: 'VARCHAR', "
    "data_base64: 'VARCHAR', metadata_base64: 'VARCHAR'}"
)


def _remove_lake(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--readers", default="fast,plain")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="events per batch (default: the library's DEFAULT_BATCH_SIZE, or for --archive the "
        "sync's own choice for archives)",
    )
    parser.add_argument("--workdir", type=Path, default=HERE / "out")
    parser.add_argument("--keep", action="store_true", help="keep the lakes")
    parser.add_argument(
        "--archive", action="store_true", help="sync JSONL(.gz) and Parquet archives instead"
    )
    parser.add_argument(
        "--archive-lake", type=Path, default=HERE / "out" / "fold-1100u-365d-s1.duckdb"
    )
    parser.add_argument(
        "--profile", action="store_true", help="with --archive: CPU per SQL statement of the ingest"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    if args.client is not None:
        uri, lake, reader, batch_size = args.client
        client(uri, lake, reader, int(batch_size))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.archive:  # the sync's own default unless --batch-size says otherwise
        archive_bench(args.archive_lake, args.workdir, args.batch_size, profile=args.profile)
        return
    if args.batch_size is None:
        from esworkbench.lake import DEFAULT_BATCH_SIZE

        args.batch_size = DEFAULT_BATCH_SIZE
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for n in args.events:
        print(f"load average {_load()}", flush=True)
        bench(n, args.readers.split(","), args.batch_size, args.workdir)
    print(f"load average {_load()}", flush=True)
    if not args.keep:
        for lake in args.workdir.glob("lake-*.duckdb*"):
            lake.unlink()
        shutil.rmtree(args.workdir / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
