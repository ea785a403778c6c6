"""Partitioned export: whole streams per hash bucket, a manifest, and incremental rewrites."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from esworkbench.errors import ConfigError
from esworkbench.examples.bank.sample import generate, write_archive
from esworkbench.lake import (
    PARTITION_SCHEMA,
    Lake,
    bucket_of,
    read_manifest,
    read_partition,
    sync,
)
from esworkbench.sources.files import open_archive


@pytest.fixture(scope="module")
def ledger_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("partitions")
    archive, _ = write_archive(generate(users=40, seed=5, days=30), base / "ledger.jsonl")
    path = base / "lake.duckdb"
    with Lake(path) as lake:
        sync(open_archive(archive), lake)
    return path


def all_rows(manifest_paths: list[str]) -> pl.DataFrame:
    frames = [pl.from_arrow(read_partition(p)) for p in manifest_paths]
    return pl.concat([f for f in frames if isinstance(f, pl.DataFrame)])


def test_each_partition_holds_whole_streams_of_its_bucket_sorted(
    ledger_lake: Path, tmp_path: Path
) -> None:
    with Lake(ledger_lake, read_only=True) as lake:
        manifest = lake.export_partitions(tmp_path / "parts", buckets=5)
        events = lake.read_events(include_system=True)
        rejected = lake.read_rejected()
    assert manifest.events == events.height + rejected.height
    seen: set[str] = set()
    for entry, path in zip(manifest.partitions, manifest.paths(), strict=True):
        table = read_partition(path)
        assert table.schema == PARTITION_SCHEMA
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        assert frame.height == entry.events
        assert frame["rejected"].is_not_null().sum() == entry.rejected
        assert (entry.first_position, entry.last_position) == (
            frame["commit_position"].min(),
            frame["commit_position"].max(),
        )
        streams = set(frame["stream_name"])
        assert {bucket_of(s, 5) for s in streams} == {entry.bucket}
        assert not streams & seen  # a stream is in one partition only
        seen |= streams
        assert_frame_equal(frame, frame.sort("stream_name", "stream_revision", "commit_position"))
    assert seen == set(events["stream_name"]) | set(rejected["stream_name"])


def test_partitions_hold_the_lake_row_for_row(ledger_lake: Path, tmp_path: Path) -> None:
    with Lake(ledger_lake, read_only=True) as lake:
        manifest = lake.export_partitions(tmp_path / "parts", buckets=3)
        events = lake.read_events(include_system=True)
        rejected = lake.read_rejected()
    rows = all_rows(manifest.paths())
    kept = rows.filter(pl.col("rejected").is_null()).drop("rejected")
    assert_frame_equal(
        kept.sort("commit_position"), events, check_dtypes=False, check_column_order=True
    )
    refused = rows.filter(pl.col("rejected").is_not_null())
    assert sorted(refused["event_id"]) == sorted(rejected["event_id"])
    assert refused["data"].is_null().all()
    assert_frame_equal(
        refused.sort("commit_position", "event_id").select("rejected", "occurred_at"),
        rejected.select(pl.col("reason").alias("rejected"), "occurred_at"),
    )


def test_a_second_export_rewrites_only_the_partitions_whose_streams_changed(
    ledger_lake: Path, tmp_path: Path, make_event
) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    from esworkbench.events import RAW_SCHEMA
    from esworkbench.sources import SourceBatch

    lake_path = tmp_path / "lake.duckdb"
    lake_path.write_bytes(ledger_lake.read_bytes())
    out = tmp_path / "parts"
    with Lake(lake_path) as lake:
        first = lake.export_partitions(out, buckets=8)
        assert first.rewritten == tuple(p.bucket for p in first.partitions)
        again = lake.export_partitions(out, buckets=8)
        assert again.rewritten == ()
        mtimes = {p: Path(p).stat().st_mtime_ns for p in first.paths()}

        # New events in one existing stream, after the lake's head.
        stream = "user-zz-new"
        head = lake.head_position()
        assert head is not None
        rows = [make_event(head + 10 + i, stream=stream, revision=i) for i in range(3)]

        class Source:
            key = "test:more"

            def describe(self) -> str:
                return "three more events"

            def read_batches(self, after, *, batch_size):  # type: ignore[no-untyped-def]
                batch = pa.RecordBatch.from_pylist(rows, schema=RAW_SCHEMA)
                yield SourceBatch(batch, rows[-1]["commit_position"])

        sync(Source(), lake)  # type: ignore[arg-type]
        third = lake.export_partitions(out, buckets=8)
    assert third.rewritten == (bucket_of(stream, 8),)
    assert read_manifest(out) == third
    for entry, path in zip(third.partitions, third.paths(), strict=True):
        if entry.bucket != bucket_of(stream, 8) and path in mtimes:
            assert Path(path).stat().st_mtime_ns == mtimes[path]
    assert third.events == first.events + 3


def test_a_missing_file_is_written_again(ledger_lake: Path, tmp_path: Path) -> None:
    with Lake(ledger_lake, read_only=True) as lake:
        first = lake.export_partitions(tmp_path / "parts", buckets=4)
        Path(first.paths()[1]).unlink()
        again = lake.export_partitions(tmp_path / "parts", buckets=4)
    assert again.rewritten == (first.partitions[1].bucket,)
    assert pq.read_metadata(first.paths()[1]).num_rows == first.partitions[1].events


def test_another_bucket_count_rewrites_everything_and_drops_old_files(
    ledger_lake: Path, tmp_path: Path
) -> None:
    with Lake(ledger_lake, read_only=True) as lake:
        lake.export_partitions(tmp_path / "parts", buckets=6)
        fewer = lake.export_partitions(tmp_path / "parts", buckets=2)
    assert fewer.rewritten == (0, 1)
    files = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert files == ["manifest.json", "part-00000.parquet", "part-00001.parquet"]


def test_export_to_an_fsspec_url(ledger_lake: Path) -> None:
    with Lake(ledger_lake, read_only=True) as lake:
        manifest = lake.export_partitions("memory://esworkbench-test/parts", buckets=3)
        local = lake.export_partitions(f"{ledger_lake}.parts-compare", buckets=3)
    assert read_manifest("memory://esworkbench-test/parts") == manifest
    assert [p.digest for p in manifest.partitions] == [p.digest for p in local.partitions]
    assert_frame_equal(all_rows(manifest.paths()), all_rows(local.paths()))


def test_the_bucket_count_is_checked(ledger_lake: Path, tmp_path: Path) -> None:
    with (
        Lake(ledger_lake, read_only=True) as lake,
        pytest.raises(ConfigError, match="buckets=0"),
    ):
        lake.export_partitions(tmp_path, buckets=0)
