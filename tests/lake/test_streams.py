"""Whole streams in batches: the same rows as reading the lake whole and merging in memory."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from esworkbench.errors import LakeError
from esworkbench.events import RAW_SCHEMA
from esworkbench.examples.bank.sample import generate
from esworkbench.filters import EventFilter
from esworkbench.fold import with_rejected
from esworkbench.fold._engine import INPUT_COLUMNS, REJECTED
from esworkbench.lake import Lake, sync
from esworkbench.lake._streams import FOLD_INPUT_SCHEMA, StreamBatches
from esworkbench.sources.files import TableSource


@pytest.fixture(scope="module")
def hostile_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The sample holds binary and malformed payloads (rejected) and duplicate ids.
    path = tmp_path_factory.mktemp("streams") / "lake.duckdb"
    with Lake(path) as lake:
        sync(TableSource(generate(users=60, seed=4, days=45).to_arrow(), name="s"), lake)
        assert lake.read_rejected().height > 0
    return path


def _ground_truth(lake: Lake, **filters: str) -> pl.DataFrame:
    """The lake read whole and merged in memory, sorted as a fold reads it."""
    events = lake.read_events(**filters).select(INPUT_COLUMNS)  # type: ignore[arg-type]
    merged = with_rejected(lake, events, **filters)  # type: ignore[arg-type]
    if REJECTED not in merged.columns:
        merged = merged.with_columns(pl.lit(None, pl.String).alias(REJECTED))
    return merged.sort("stream_name", "stream_revision", "commit_position", maintain_order=True)


@pytest.mark.parametrize("batch_size", [1, 97, 100_000])
@pytest.mark.parametrize("filters", [{"category": "user"}, {"stream_prefix": "user-1"}, {}])
def test_stream_batches_hold_the_lake_merged_with_its_rejected_events(
    hostile_lake: Path, batch_size: int, filters: dict[str, str]
) -> None:
    with Lake(hostile_lake, read_only=True) as lake:
        batches = lake.iter_streams(batch_size=batch_size, **filters)  # type: ignore[arg-type]
        tables = list(batches)
        counted = batches.rows  # counted by the lake, on first use: while it is open
        expected = _ground_truth(lake, **filters)
    got = pl.concat([pl.from_arrow(t) for t in tables])  # type: ignore[misc]
    assert isinstance(got, pl.DataFrame)
    assert got.height == counted == expected.height
    if "stream_prefix" not in filters:
        assert got.filter(pl.col(REJECTED).is_not_null()).height > 0
    assert_frame_equal(got, expected.select(got.columns).cast(got.schema))  # type: ignore[arg-type]
    assert all(t.schema == FOLD_INPUT_SCHEMA for t in tables)


def test_no_stream_is_split_between_batches_and_batches_keep_near_their_size(
    hostile_lake: Path,
) -> None:
    with Lake(hostile_lake, read_only=True) as lake:
        tables = list(lake.iter_streams(batch_size=200))
        longest = lake.read_sql(
            "SELECT max(n) AS n FROM (SELECT count(*) AS n FROM events GROUP BY stream_name)"
        )["n"][0]
    seen: set[str] = set()
    for table in tables:
        streams = set(table.column("stream_name").to_pylist())
        assert not streams & seen, "a stream came in two batches"
        seen |= streams
    # Each batch but the last reaches the size, and passes it by less than one stream plus a
    # read chunk (the reader's chunks are a quarter of the batch, at least 2,048 rows).
    for table in tables[:-1]:
        assert 200 <= table.num_rows <= 200 + longest + 2_048


def test_a_stream_longer_than_a_batch_comes_whole(tmp_path: Path, make_event) -> None:  # type: ignore[no-untyped-def]
    with Lake(tmp_path / "lake.duckdb") as lake:
        rows = [make_event(i, stream="user-long", revision=i) for i in range(30)]
        rows += [make_event(30 + i, stream="user-short", revision=i) for i in range(3)]
        sync(TableSource(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), name="t"), lake)
        tables = list(lake.iter_streams(batch_size=5))
    assert [t.num_rows for t in tables] == [30, 3]


def test_the_sort_memory_limit_is_set_back_after_reading(hostile_lake: Path) -> None:
    with Lake(hostile_lake, read_only=True) as lake:
        before = lake.read_sql("SELECT current_setting('memory_limit') AS m")["m"][0]
        for _ in lake.iter_streams(batch_size=50):
            during = lake.read_sql("SELECT current_setting('memory_limit') AS m")["m"][0]
        after = lake.read_sql("SELECT current_setting('memory_limit') AS m")["m"][0]
    assert during != before
    assert after == before


def test_a_sort_that_cannot_spill_says_where_and_what_to_do(hostile_lake: Path) -> None:
    with Lake(hostile_lake, read_only=True) as lake:
        # A file is no directory: DuckDB cannot spill under it.
        lake.read_sql(f"SET temp_directory = '{hostile_lake}/spill'")
        batches = StreamBatches(lake._con, EventFilter.of(), batch_size=100, memory_limit="1MB")
        with pytest.raises(LakeError) as caught:
            list(batches)
    message = str(caught.value)
    assert f"{hostile_lake}/spill" in message
    assert "SET temp_directory" in message
