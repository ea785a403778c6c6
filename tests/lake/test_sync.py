"""Exactly-once sync: interruptions of every kind leave a lake the next sync completes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from esworkbench.errors import SourceError
from esworkbench.events import RAW_SCHEMA
from esworkbench.examples.bank.sample import write_archive
from esworkbench.lake import Lake, SyncInterrupted, TqdmProgress, _ingest, _writer, sync
from esworkbench.sources import SourceBatch
from esworkbench.sources.files import TableSource, open_archive

AUDIT = ("source_key", "run_id", "rejected_at")


def tables(lake: Lake) -> dict[str, pl.DataFrame]:
    return {
        "events": lake.read_events(include_system=True),
        "rejected": lake.read_rejected().drop(AUDIT),
        "checkpoints": lake.read_checkpoints().select("source_key", "position"),
        **{t: lake.read_typed(t) for t in lake.typed_event_types()},
    }


def assert_same_tables(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert_frame_equal(a[name], b[name], check_exact=True), name


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, small_ledger: Any) -> dict[str, Any]:
    """One uninterrupted sync of the small ledger: what every other way must end with."""
    with Lake(tmp_path_factory.mktemp("clean") / "clean.duckdb") as lake:
        sync(TableSource(small_ledger.to_arrow(), name="ledger"), lake)
        return tables(lake)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch_size=st.integers(min_value=7, max_value=400),
    stop_after=st.integers(min_value=1, max_value=12),
    resume_batch_size=st.integers(min_value=7, max_value=1000),
)
def test_interrupted_anywhere_then_resumed_is_one_clean_sync(
    tmp_path_factory: pytest.TempPathFactory,
    small_ledger: Any,
    clean: dict[str, Any],
    batch_size: int,
    stop_after: int,
    resume_batch_size: int,
) -> None:
    source = TableSource(small_ledger.to_arrow(), name="ledger")
    with Lake(tmp_path_factory.mktemp("h") / "l.duckdb") as lake:
        first = sync(source, lake, batch_size=batch_size, stop_after_batches=stop_after)
        assert first.outcome in ("stopped", "ok")
        second = sync(source, lake, batch_size=resume_batch_size)
        assert second.outcome == "ok" and second.from_position == first.to_position
        assert first.events + second.events + first.rejected + second.rejected == len(small_ledger)
        assert_same_tables(tables(lake), clean)


@pytest.mark.parametrize(("batch_size", "stop_after"), [(50, 1), (50, 3), (130, 2), (333, 1)])
def test_commits_that_checkpoint_then_an_interruption_resume_as_one_clean_sync(
    tmp_path: Path,
    small_ledger: Any,
    clean: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    batch_size: int,
    stop_after: int,
) -> None:
    # A batch that completes a row group is checkpointed by its own COMMIT (no WAL). With a
    # tiny row group, most commits here do that, in every position relative to the stop.
    monkeypatch.setattr(_writer, "_ROW_GROUP_SIZE", 120)
    source = TableSource(small_ledger.to_arrow(), name="ledger")
    with Lake(tmp_path / "l.duckdb") as lake:
        first = sync(source, lake, batch_size=batch_size, stop_after_batches=stop_after)
        assert first.outcome == "stopped"
    with Lake(tmp_path / "l.duckdb") as lake:
        assert sync(source, lake, batch_size=batch_size).outcome == "ok"
        assert_same_tables(tables(lake), clean)


def test_a_failure_between_the_parts_of_a_cut_batch_resumes_as_one_clean_sync(
    tmp_path: Path,
    small_ledger: Any,
    clean: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With 120-row groups a 333-event batch commits as 120 + 120 + 93 events, and only its
    # last part moves the checkpoint: a failure after the first part leaves events past the
    # checkpoint, which the next sync must skip as re-deliveries, not count twice.
    monkeypatch.setattr(_writer, "_ROW_GROUP_SIZE", 120)
    parts: list[tuple[int, int | None]] = []
    ingest = _ingest.ingest_batch

    def failing_second_part(con: Any, batch: Any, **kw: Any) -> Any:
        parts.append((batch.num_rows, kw["checkpoint"]))
        if len(parts) == 2:
            raise OSError("No space left on device")
        return ingest(con, batch, **kw)

    source = TableSource(small_ledger.to_arrow(), name="ledger")
    with Lake(tmp_path / "l.duckdb") as lake:
        monkeypatch.setattr(_ingest, "ingest_batch", failing_second_part)
        with pytest.raises(OSError, match="No space"):
            sync(source, lake, batch_size=333)
        assert parts == [(120, None), (120, None)]
        first = lake.read_events().height + lake.read_rejected().height
        assert first == 120 and lake.read_checkpoints().is_empty()
        monkeypatch.setattr(_ingest, "ingest_batch", ingest)
        result = sync(source, lake, batch_size=333)
        assert result.outcome == "ok" and result.duplicates >= first
        assert result.events + result.rejected + first == len(small_ledger)
        assert_same_tables(tables(lake), clean)
        runs = lake.read_sync_runs()
        assert runs["batches"].to_list() == [0, -(-len(small_ledger) // 333)]


def test_each_checkpoint_writes_whole_row_groups_and_rewrites_none(tmp_path: Path) -> None:
    # DuckDB starts a new row group after a checkpoint, and its vacuum merges a part-filled
    # one into the next: checkpoints that ended mid-group rewrote the carried-over rows at
    # every next checkpoint. Here every row group must be written once and never again.
    n = 2 * _writer._ROW_GROUP_SIZE + 5_000
    created = pa.array(np.full(n, 1_700_000_000_000_000), pa.int64())
    events = pa.RecordBatch.from_arrays(
        [
            pa.array(np.arange(1, n + 1), pa.uint64()),
            pa.array(np.arange(1, n + 1), pa.uint64()),
            pa.array([f"user-{i % 1000}" for i in range(n)], pa.string()),
            pa.array(np.arange(n) // 1000, pa.uint64()),
            pa.array([str(uuid.UUID(int=i + 1)) for i in range(n)], pa.string()),
            pa.array(["Deposited"] * n, pa.string()),
            created.cast(RAW_SCHEMA.field("created").type),
            pa.array(["application/json"] * n, pa.string()),
            pa.array([b'{"amount": "%d.50"}' % i for i in range(n)], pa.binary()),
            pa.array([b""] * n, pa.binary()),
        ],
        schema=RAW_SCHEMA,
    )
    blocks: dict[int, set[int]] = {}

    class StorageWatch:
        def start(self, **_: Any) -> None: ...

        def advance(self, **_: Any) -> None:  # between batches, in the committing thread
            for group, block in lake.read_sql(
                "SELECT row_group_id, min(block_id) FROM pragma_storage_info('events') "
                "WHERE column_name = 'data' AND block_id >= 0 GROUP BY ALL"
            ).iter_rows():
                blocks.setdefault(group, set()).add(block)

        def close(self) -> None: ...

    with Lake(tmp_path / "l.duckdb") as lake:
        source = TableSource(pa.Table.from_batches([events]), name="synthetic")
        assert sync(source, lake, batch_size=25_000, progress=StorageWatch()).events == n
        counts = lake.read_sql(  # a group's column may span segments: sum them
            "SELECT row_group_id, sum(count)::BIGINT AS n FROM pragma_storage_info('events') "
            "WHERE column_name = 'commit_position' AND segment_type <> 'VALIDITY' "
            "GROUP BY 1 ORDER BY 1"
        )["n"].to_list()
    assert counts == [_writer._ROW_GROUP_SIZE, _writer._ROW_GROUP_SIZE, 5_000]
    assert blocks.keys() == {0, 1} and all(len(b) == 1 for b in blocks.values())


class Flaky:
    """A source that fails (or is interrupted) after some batches."""

    def __init__(self, inner: TableSource, fail_after: int, error: BaseException) -> None:
        self.inner, self.fail_after, self.error = inner, fail_after, error
        self.key = inner.key

    def describe(self) -> str:
        return "flaky " + self.inner.describe()

    def read_batches(self, after: int | None, *, batch_size: int) -> Iterator[SourceBatch]:
        for i, batch in enumerate(self.inner.read_batches(after, batch_size=batch_size)):
            if i == self.fail_after:
                raise self.error
            yield batch


def test_a_failing_source_leaves_a_lake_the_next_sync_completes(
    lake: Lake, small_ledger: Any, clean: dict[str, Any]
) -> None:
    source = TableSource(small_ledger.to_arrow(), name="ledger")
    boom = SourceError("EventStoreDB at esdb://admin:***@db:2113 went away")
    with pytest.raises(SourceError, match="went away") as caught:
        sync(Flaky(source, 3, boom), lake, batch_size=50)
    result = caught.value.sync_result  # type: ignore[attr-defined]
    assert result.outcome == "failed" and result.batches == 3 and result.to_position
    assert any("run the sync again to resume" in n for n in caught.value.__notes__)
    run = lake.read_sync_runs().row(0, named=True)
    assert run["outcome"] == "failed" and "went away" in run["error"]
    assert lake.read_events().height == result.events
    assert sync(source, lake).outcome == "ok"
    assert_same_tables(tables(lake), clean)


def test_ctrl_c_stops_cleanly_and_says_how_far_it_got(
    lake: Lake, small_ledger: Any, clean: dict[str, Any]
) -> None:
    source = TableSource(small_ledger.to_arrow(), name="ledger")

    class CtrlCAfterTwo:
        calls = 0

        def start(self, **_: Any) -> None: ...

        def advance(self, **_: Any) -> None:
            self.calls += 1
            if self.calls == 2:  # in the committing (main) thread, like a real Ctrl-C
                raise KeyboardInterrupt

        def close(self) -> None: ...

    with pytest.raises(SyncInterrupted) as caught:
        sync(source, lake, batch_size=100, progress=CtrlCAfterTwo())
    assert isinstance(caught.value, KeyboardInterrupt)
    assert caught.value.result.outcome == "interrupted" and caught.value.result.batches == 2
    assert lake.read_sync_runs()["outcome"].to_list() == ["interrupted"]
    sync(source, lake)
    assert_same_tables(tables(lake), clean)


def test_a_stop_request_ends_a_sync_between_batches(lake: Lake, small_ledger: Any) -> None:
    stop = threading.Event()
    stop.set()
    result = sync(TableSource(small_ledger.to_arrow(), name="l"), lake, stop=stop)
    assert result.outcome == "stopped" and result.batches == 0


def test_progress_shows_events_rate_position_and_eta(lake: Lake, small_ledger: Any) -> None:
    out = io.StringIO()
    progress = TqdmProgress(file=out, mininterval=0)

    class WithHead(TableSource):
        def head_position(self) -> int:
            return int(small_ledger.commit_position[-1])

    result = sync(
        WithHead(small_ledger.to_arrow(), name="l"), lake, batch_size=200, progress=progress
    )
    text = out.getvalue()
    assert f"{result.events + result.rejected:,} events" in text
    assert "events/s" in text and f"position {result.to_position}" in text
    assert "100%" in text  # the bar's total is the head position read at the start
    line = result.summary()
    assert line.startswith("sync ok: ") and "events/s" in line and "table l" in line


_KILLED_SYNC = """
import sys
from esworkbench.lake import Lake, sync
from esworkbench.sources.files import open_archive

class Tell:
    n = 0
    def start(self, **_): pass
    def advance(self, **_):
        self.n += 1
        print("batch", self.n, flush=True)
    def close(self): pass

with Lake(sys.argv[1]) as lake:
    sync(open_archive(sys.argv[2]), lake, batch_size=40, progress=Tell())
print("done", flush=True)
"""


def test_kill_9_mid_sync_leaves_a_consistent_lake(
    tmp_path: Path, small_ledger: Any, clean: dict[str, Any]
) -> None:
    archive, _ = write_archive(small_ledger, tmp_path / "ledger.jsonl")
    lake_path = tmp_path / "killed.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SYNC, str(lake_path), str(archive)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("batch 5"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with Lake(lake_path) as lake:
        assert lake.read_sync_runs()["outcome"].to_list() == ["interrupted"]
        # every committed batch is whole: no event twice, nothing half-written
        events = lake.read_events()
        assert events["event_id"].n_unique() == events.height >= 5 * 40 - 10
        sync(open_archive(archive), lake)
        got = tables(lake)
    for name in ("events", "rejected"):
        assert_frame_equal(got[name], clean[name], check_exact=True)
