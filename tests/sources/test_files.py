"""Archives as sources: JSONL(.gz) and Parquet, and the export -> import round trip."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from esworkbench.errors import ConfigError, SourceError
from esworkbench.events import RAW_SCHEMA, archive_line
from esworkbench.examples.bank.sample import write_archive
from esworkbench.lake import EventFilter, Lake, sync
from esworkbench.sources import EventSource, open_source
from esworkbench.sources.files import JsonlSource, ParquetSource, TableSource, open_archive

AUDIT = ("source_key", "run_id", "rejected_at")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, small_ledger: Any) -> Path:
    """A lake of the small ledger, synced straight from memory."""
    path = tmp_path_factory.mktemp("ref") / "ref.duckdb"
    with Lake(path) as lake:
        sync(TableSource(small_ledger.to_arrow(), name="ledger"), lake)
    return path


def assert_same_content(a: Lake, b: Lake) -> None:
    assert_frame_equal(a.read_events(include_system=True), b.read_events(include_system=True))
    assert_frame_equal(a.read_rejected().drop(AUDIT), b.read_rejected().drop(AUDIT))
    assert a.typed_event_types() == b.typed_event_types()
    assert a.digest() == b.digest()


@pytest.mark.parametrize("name", ["export.jsonl", "export.jsonl.gz", "export.parquet"])
def test_export_then_import_gives_the_same_lake(reference: Path, tmp_path: Path, name: str) -> None:
    with Lake(reference, read_only=True) as ref:
        archive = ref.export_archive(tmp_path / name)
        assert not list(tmp_path.glob("*.partial"))
        with Lake(tmp_path / "copy.duckdb") as copy:
            result = sync(open_archive(archive), copy, batch_size=128)
            assert result.events == ref.summary().events
            assert result.rejected == ref.read_rejected().height
            assert_same_content(ref, copy)
            again = sync(open_archive(archive), copy)
            assert (again.events, again.rejected, again.duplicates) == (0, 0, 0)


def test_the_sample_archive_format_reads_back(
    small_ledger: Any, reference: Path, tmp_path: Path
) -> None:
    archive, _truth = write_archive(small_ledger, tmp_path / "ledger.jsonl.gz")
    source = open_archive(archive)
    assert isinstance(source, JsonlSource) and isinstance(source, EventSource)
    with Lake(reference, read_only=True) as ref, Lake(tmp_path / "l.duckdb") as lake:
        sync(source, lake, batch_size=100)
        assert_same_content(ref, lake)


def test_binary_payloads_survive_the_jsonl_round_trip(tmp_path: Path, make_event: Any) -> None:
    events = [
        make_event(1),
        make_event(
            2, data=b"\x00\xff\xfe", metadata=b"\x80", content_type="application/octet-stream"
        ),
    ]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(archive_line(e) + "\n" for e in events))
    batches = list(open_archive(path).read_batches(None, batch_size=10))
    rows = [r for b in batches for r in b.events.to_pylist()]
    assert [r["data"] for r in rows] == [e["data"] for e in events]
    assert [r["metadata"] for r in rows] == [e["metadata"] for e in events]
    assert rows == events
    assert batches[-1].checkpoint == 2


def test_archives_promise_a_checkpoint_only_when_read_through(
    tmp_path: Path, make_event: Any
) -> None:
    # out of order on purpose: an archive need not be sorted
    events = [make_event(p, revision=i) for i, p in enumerate([5, 1, 9, 3, 7])]
    path = tmp_path / "a.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(events, schema=RAW_SCHEMA), path)
    batches = list(ParquetSource(path).read_batches(None, batch_size=2))
    assert [b.checkpoint for b in batches] == [None, None, 9]
    assert sum(b.events.num_rows for b in batches) == 5
    after = list(ParquetSource(path).read_batches(6, batch_size=2))
    assert [r["commit_position"] for b in after for r in b.events.to_pylist()] == [9, 7]


def test_filters_apply_to_archives(reference: Path, tmp_path: Path) -> None:
    with Lake(reference, read_only=True) as ref:
        archive = ref.export_archive(tmp_path / "all.parquet")
        expected = ref.read_events(event_types=["UserCreated"])
    f = EventFilter.of(event_types=["UserCreated"])
    source = open_archive(archive, filter=f)
    assert source.key.endswith("|event_types=['UserCreated']")
    assert "event_types=['UserCreated']" in source.describe()
    with Lake(tmp_path / "l.duckdb") as lake:
        sync(source, lake)
        assert_frame_equal(lake.read_events(), expected)


def test_bad_archives_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no archive at"):
        open_archive(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"commit_position": "not a number"}\n')
    with pytest.raises(SourceError, match=r"bad\.jsonl\.gz"):
        list(open_archive(bad).read_batches(None, batch_size=10))
    missing = tmp_path / "missing-field.jsonl"
    missing.write_text('{"commit_position": 1}\n')
    with pytest.raises(SourceError, match="required field was absent"):
        list(open_archive(missing).read_batches(None, batch_size=10))
    with pytest.raises(ConfigError, match="follow mode"):
        open_source(str(missing), follow=True)


def test_open_source_picks_by_location(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"")
    assert isinstance(open_source(str(path)), ParquetSource)
    assert open_source("esdb://127.0.0.1:1?tls=false").describe().startswith("EventStoreDB")
