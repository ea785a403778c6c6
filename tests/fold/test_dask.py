"""Replay on Dask: a real LocalCluster folds hash partitions and gives the single-process rows."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from esworkbench.cli import main
from esworkbench.errors import ConfigError
from esworkbench.examples.bank import User
from esworkbench.examples.bank.sample import generate, write_archive
from esworkbench.fold import Replay, replay
from esworkbench.lake import Lake, sync
from esworkbench.sources.files import open_archive

BANK = "esworkbench.examples.bank:User"


@pytest.fixture(scope="module")
def lake_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample ledger with anomalies of every kind and rejected events, synced into a lake."""
    base = tmp_path_factory.mktemp("dask")
    archive, _ = write_archive(generate(users=60, seed=9, days=45), base / "ledger.jsonl")
    path = base / "lake.duckdb"
    with Lake(path) as lake:
        sync(open_archive(archive), lake)
        assert lake.read_rejected().height > 0
    return path


def assert_same(got: Replay, expected: Replay) -> None:
    assert got.events_read == expected.events_read
    assert_frame_equal(got.timeline, expected.timeline)
    assert_frame_equal(got.findings, expected.findings)


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    partitions=st.integers(min_value=1, max_value=9),
    on_error=st.sampled_from(["skip", "stop"]),
    cut=st.sampled_from([None, "position", "time"]),
)
def test_a_dask_replay_equals_the_single_process_replay(
    dask_client: Any, lake_path: Path, tmp_path: Path, partitions: int, on_error: Any, cut: Any
) -> None:
    as_of: int | datetime | None = None
    if cut == "position":
        with Lake(lake_path, read_only=True) as lake:
            head = lake.head_position()
        assert head is not None
        as_of = head // 2
    elif cut == "time":
        as_of = datetime(2024, 1, 20, tzinfo=UTC)

    expected = replay(lake_path, BANK, on_error=on_error, as_of=as_of)
    got = replay(
        lake_path,
        BANK,
        on_error=on_error,
        as_of=as_of,
        engine="dask",
        scheduler=dask_client,
        partitions=partitions,
        workdir=tmp_path / f"work-{partitions}",
        batch_size=100,  # several batches per partition, as on a large lake
    )
    assert_same(got, expected)


def test_only_some_streams_and_results_scanned_lazily(
    dask_client: Any, lake_path: Path, tmp_path: Path
) -> None:
    streams = ["user-3", "user-17", "user-40"]
    expected = replay(lake_path, BANK, streams=streams)
    got = replay(
        lake_path, BANK, streams=streams, engine="dask", scheduler=dask_client, workdir=tmp_path
    )
    scanned = got.scan_timeline().filter(pl.col("stream_name") == "user-17").collect()
    assert_frame_equal(scanned, expected.timeline.filter(pl.col("stream_name") == "user-17"))
    assert_same(got, expected)
    assert_frame_equal(got.states(), expected.states())


def kills_its_worker_once(marker: Path) -> type[User]:
    """The bank's User, except that the first instance made anywhere kills its process.

    The marker file is created exclusively, so exactly one fold, in one worker, dies mid-task;
    the task's rerun (on the restarted worker or the other one) folds normally. Defined in a
    function, the class travels to the workers by value, with its marker.
    """

    class KillsItsWorkerOnce(User):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)  # as a worker dies when the OOM killer or an operator ends it

    return KillsItsWorkerOnce


def test_a_worker_killed_mid_run_still_gives_the_exact_result(
    dask_client: Any, lake_path: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "killed"
    workers_before = set(dask_client.scheduler_info()["workers"])
    got = replay(
        lake_path,
        kills_its_worker_once(marker),
        engine="dask",
        scheduler=dask_client,
        partitions=4,
        workdir=tmp_path / "work",
    )
    assert marker.exists()  # a worker did die, mid-task
    dask_client.wait_for_workers(2, timeout=60)
    assert set(dask_client.scheduler_info()["workers"]) != workers_before  # and was replaced
    expected = replay(lake_path, BANK)
    assert_same(got, expected)


def test_the_cli_folds_on_dask(lake_path: Path, tmp_path: Path, dask_client: Any) -> None:
    address = dask_client.scheduler.address
    out = tmp_path / "timeline.parquet"
    result = CliRunner().invoke(
        main,
        [
            "fold",
            "--lake",
            str(lake_path),
            "--engine",
            "dask",
            "--scheduler",
            address,
            "--partitions",
            "3",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    expected = replay(lake_path, BANK)
    assert f"replayed {expected.timeline.height:,} events" in result.output
    assert_frame_equal(pl.read_parquet(out), expected.timeline)
    findings = pl.read_parquet(out.with_name("timeline.findings.parquet"))
    assert_frame_equal(findings, expected.findings)


def test_a_missing_dask_names_the_extra(lake_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ConfigError, match=r"esworkbench\[dask\]"):
        replay(lake_path, BANK, engine="dask")


def test_options_that_do_not_apply_on_dask_are_refused(lake_path: Path) -> None:
    with pytest.raises(ConfigError, match="workers=2 is for engine='local'"):
        replay(lake_path, BANK, engine="dask", workers=2)
    with pytest.raises(ConfigError, match="engine='spark'"):
        replay(lake_path, BANK, engine="spark")  # type: ignore[arg-type]


def test_one_progress_bar_follows_every_worker(
    dask_client: Any, lake_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replay(
        lake_path,
        BANK,
        engine="dask",
        scheduler=dask_client,
        partitions=4,
        workdir=tmp_path,
        progress=True,
        batch_size=50,
    )
    err = capsys.readouterr().err
    # One bar for all the workers' tasks, ending full.
    assert err.count("\n") == 1
    assert "100%" in err.rsplit("\r", 1)[-1]
