"""Benchmark: what a sync's commits cost as the lake grows, beside DuckDB alone doing the same.

    python bench/checkpoints.py                  # the ~3.2M-event sample lake (bench/fold.py)
    python bench/checkpoints.py --lake bench/out/fold-3800u-365d-s1.duckdb

The sample lake is exported once as a Parquet archive (bench/out/, git-ignored) and synced into
a fresh lake in batches of `--batch-size` events (a live sync's default). Each COMMIT is timed
(CPU of the committing thread); the commits that checkpoint a row group are reported apart,
per tenth of the run, with the lake's size at that point.

The reference, in the same run: DuckDB alone appends the same rows, in the same batches, to a
table with the lake's DDL, with the same commit-time checkpoints, memory cap and cache drops.
A lake whose checkpoints grow faster than the reference's spends time on something of its own.

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from esworkbench.lake import Lake, _ingest, _schema, _writer, sync
from esworkbench.sources.files import open_archive

OUT = Path(__file__).resolve().parent / "out"
ROW_GROUP = _writer._ROW_GROUP_SIZE


def lake_commits(archive: Path, target: Path, batch_size: int) -> list[tuple[int, float, bool]]:
    """(rows in the lake, COMMIT CPU seconds, checkpointed) for each batch of a real sync."""
    commits: list[tuple[int, float, bool]] = []
    rows = [0]
    run = _ingest.q

    def timed(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> Any:
        if sql.strip() != "COMMIT":
            return run(con, sql, params)
        threshold = con.execute("SELECT current_setting('checkpoint_threshold')").fetchone()
        started = time.thread_time()
        try:
            return run(con, sql, params)
        finally:
            at_commit = threshold is not None and threshold[0] == "1000 bytes"
            commits.append((rows[0], time.thread_time() - started, at_commit))

    def counted(original: Callable[..., Any]) -> Callable[..., Any]:
        def ingest(con: duckdb.DuckDBPyConnection, batch: pa.RecordBatch, **kw: Any) -> Any:
            counts = original(con, batch, **kw)
            rows[0] += counts.events + counts.rejected
            return counts

        return ingest

    _remove(target)
    saved = _ingest.q, _ingest.ingest_batch
    _ingest.q, _ingest.ingest_batch = timed, counted(_ingest.ingest_batch)
    try:
        with Lake(target) as lake:
            sync(open_archive(archive), lake, batch_size=batch_size)
    finally:
        _ingest.q, _ingest.ingest_batch = saved
        _remove(target)
    return commits


def duckdb_commits(archive: Path, target: Path, batch_size: int) -> list[tuple[int, float, bool]]:
    """The same for DuckDB alone: the lake's rows appended to a table with the lake's DDL."""
    _remove(target)
    con = duckdb.connect(str(target))
    for ddl in _schema._DDL:
        con.execute(ddl)
    memory = (
        f"{max(_writer._SYNC_MEMORY_FLOOR, batch_size * _writer._SYNC_MEMORY_PER_EVENT) >> 20}MB"
    )
    con.execute(f"SET checkpoint_threshold = '{_writer._SYNC_CHECKPOINT_THRESHOLD}'")
    con.execute(f"SET memory_limit = '{memory}'")
    con.execute(f"SET threads = {max(1, (os.cpu_count() or 2) - 1)}")
    source = duckdb.connect()
    commits: list[tuple[int, float, bool]] = []
    rows = unflushed = 0
    try:
        for batch in _batches(source, archive, batch_size):
            con.register("batch", batch)
            con.execute("BEGIN TRANSACTION")
            con.execute("INSERT INTO events SELECT * FROM batch")
            at_commit = unflushed + batch.num_rows >= ROW_GROUP
            if at_commit:
                con.execute(f"SET checkpoint_threshold = '{_writer._COMMIT_CHECKPOINT_THRESHOLD}'")
            started = time.thread_time()
            con.execute("COMMIT")
            commits.append((rows, time.thread_time() - started, at_commit))
            if at_commit:
                con.execute(f"SET checkpoint_threshold = '{_writer._SYNC_CHECKPOINT_THRESHOLD}'")
            con.unregister("batch")
            rows += batch.num_rows
            unflushed += batch.num_rows
            if unflushed >= ROW_GROUP:  # as the lake's writer does after a row group
                unflushed = 0
                con.execute("CHECKPOINT")
                con.execute("SET memory_limit = '32MB'")
                con.execute(f"SET memory_limit = '{memory}'")
    finally:
        con.close()
        _remove(target)
    return commits


def _batches(
    source: duckdb.DuckDBPyConnection, archive: Path, batch_size: int
) -> Iterator[pa.Table]:
    # The archive's rows in the lake's column order, the derived columns computed the simple
    # way (the lake's own rules add flags and rejects, which do not matter for storage).
    relation = source.sql(
        f"""
        SELECT commit_position, prepare_position, stream_name, stream_revision,
               event_id::UUID AS event_id, event_type, created, content_type,
               decode(data) AS data, decode(metadata) AS metadata,
               split_part(stream_name, '-', 1) AS category,
               coalesce(try_cast(json_extract_string(decode(metadata), '$.occurredAt')
                                 AS TIMESTAMPTZ), created) AS occurred_at,
               json_extract_string(decode(metadata), '$."$correlationId"') AS correlation_id,
               json_extract_string(decode(metadata), '$."$causationId"') AS causation_id
        FROM read_parquet('{archive}')
        WHERE try(decode(data)) IS NOT NULL AND try(decode(metadata)) IS NOT NULL
        ORDER BY commit_position
        """
    )
    reader = relation.to_arrow_reader(batch_size)
    for batch in reader:
        yield pa.Table.from_batches([batch])


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def report(label: str, commits: list[tuple[int, float, bool]]) -> None:
    print(f"  {label}")
    tenth = max(1, len(commits) // 10)
    for start in range(0, len(commits), tenth):
        part = commits[start : start + tenth]
        checkpointing = [s for _, s, at in part if at]
        plain = [s for _, s, at in part if not at]
        print(
            f"    lake at {part[0][0] / 1e6:4.2f}M events: checkpointing commits "
            f"{_mean(checkpointing) * 1e3:7.1f} ms (x{len(checkpointing)}), "
            f"other commits {_mean(plain) * 1e3:5.1f} ms (x{len(plain)})"
        )
    rows = commits[-1][0] if commits else 0
    total = sum(s for _, s, _ in commits)
    print(f"    all commits: {total:.1f} s CPU, {total / max(rows, 1) * 1e6:.2f} us per event")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lake", type=Path, default=OUT / "fold-11400u-365d-s1.duckdb")
    parser.add_argument("--batch-size", type=int, default=25_000)
    args = parser.parse_args()
    if not args.lake.exists():
        raise SystemExit(f"no lake at {args.lake}: run bench/fold.py --rss 3800 11400 first")
    archive = OUT / f"archive-{args.lake.stem}.parquet"
    if not archive.exists():
        with Lake(args.lake, read_only=True) as lake:
            lake.export_archive(archive)
    print(f"load average {os.getloadavg()[0]:.2f}; {pq.read_metadata(archive).num_rows:,} events")
    target = OUT / "checkpoints-target.duckdb"
    report("sync(open_archive) into a lake", lake_commits(archive, target, args.batch_size))
    report(
        "DuckDB alone, same rows, DDL and commits", duckdb_commits(archive, target, args.batch_size)
    )
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
