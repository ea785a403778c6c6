"""Archives as sources: JSONL(.gz) and Parquet, and the export -> import round trip."""

from __future__ import annotations

import gzip
import uuid
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


# -- hostile archives: the archive path decides every event as the in-memory reference does ---


def _hostile_events() -> list[dict[str, Any]]:
    """Ordinary events with every hostile case of tests/lake/test_hostile.py among them.

    Plus what only an archive can carry oddly: bytes that are not UTF-8 (base64 in JSONL), an
    event id that is not a UUID, an id reused at another position, and a repeated line.
    """
    from tests.lake.test_hostile import CASES, ordinary, raw

    events = [ordinary(p) for p in range(1, 40)]
    for i, (payload, _) in enumerate(CASES.values()):
        events.insert(2 * i + 1, raw(0, payload))
    events.insert(5, raw(0, b"\xff\xfe not text", metadata=b"\x80"))
    events.insert(9, raw(0, b'{"a":1}', metadata=b"{not json"))
    events.insert(13, {**raw(0, b'{"a":1}'), "event_id": "not-a-uuid"})
    for i, event in enumerate(events):  # positions in order, each event its own id
        event.update(commit_position=100 + i, prepare_position=100 + i, stream_revision=i)
        if event["event_id"] != "not-a-uuid":
            event["event_id"] = str(uuid.uuid5(uuid.NAMESPACE_OID, f"hostile/{i}"))
    # An id reused from an accepted event, and one reused from a rejected event: both are
    # duplicates whether or not the first use is in the same batch.
    accepted = next(e for e in events[20:] if e["data"].startswith(b'{"userId"'))
    events.append({**accepted, "commit_position": 900, "prepare_position": 900})
    ordinary_data = accepted["data"]
    events.append(
        {
            **events[5],
            "data": ordinary_data,
            "metadata": b"",
            "commit_position": 901,
            "prepare_position": 901,
        }
    )
    events.append(dict(events[3]))  # the same line twice
    return events


def _lake_contents(lake: Lake) -> dict[str, Any]:
    return {
        "events": lake.read_events(include_system=True),
        "rejected": lake.read_rejected().drop(AUDIT),
        "flags": lake.read_flags().drop("source_key", "run_id", "flagged_at"),
        "checkpoints": lake.read_checkpoints().select("position"),
        **{t: lake.read_typed(t) for t in lake.typed_event_types()},
    }


@pytest.mark.parametrize("batch_size", [None, 1, 7, 1000])
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_hostile_archives_make_the_same_lake_as_the_reference(
    tmp_path: Path, suffix: str, batch_size: int | None
) -> None:
    events = _hostile_events()
    table = pa.Table.from_pylist(events, schema=RAW_SCHEMA)
    path = tmp_path / f"hostile{suffix}"
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        text = "".join(archive_line(e) + "\n" for e in events)
        if suffix.endswith(".gz"):
            with gzip.open(path, "wt") as f:
                f.write(text)
        else:
            path.write_text(text)
    with Lake(tmp_path / "ref.duckdb") as ref, Lake(tmp_path / "a.duckdb") as lake:
        expected = sync(TableSource(table, name="ref"), ref, batch_size=len(events))
        got = sync(open_archive(path), lake, batch_size=batch_size)
        assert got.outcome == "ok"
        assert (got.events, got.rejected, got.duplicates) == (
            expected.events,
            expected.rejected,
            expected.duplicates,
        )
        assert got.rejected > 10 and got.duplicates >= 1
        want, have = _lake_contents(ref), _lake_contents(lake)
        assert want.keys() == have.keys()
        for name in want:
            assert_frame_equal(have[name], want[name], check_exact=True)
        again = sync(open_archive(path), lake)
        assert (again.events, again.rejected) == (0, 0)
