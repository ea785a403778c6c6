"""`esworkbench sync` as a person runs it: progress, Ctrl-C, kill -9, follow mode."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from esdbclient import EventStoreDBClient, NewEvent, StreamState
from polars.testing import assert_frame_equal

from esworkbench import devserver
from esworkbench.cli import main
from esworkbench.examples.bank.sample import write_archive
from esworkbench.lake import Lake

AUDIT = ("source_key", "run_id", "rejected_at")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, small_ledger: Any) -> Path:
    path, _ = write_archive(small_ledger, tmp_path_factory.mktemp("cli") / "ledger.jsonl")
    return path


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, archive: Path) -> Path:
    lake = tmp_path_factory.mktemp("clean") / "clean.duckdb"
    result = CliRunner().invoke(main, ["sync", "--archive", str(archive), "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    return lake


def assert_same_lake(a: Path, b: Path) -> None:
    with Lake(a, read_only=True) as x, Lake(b, read_only=True) as y:
        assert_frame_equal(x.read_events(), y.read_events())
        assert_frame_equal(x.read_rejected().drop(AUDIT), y.read_rejected().drop(AUDIT))
        assert x.digest() == y.digest()


def test_progress_shows_events_rate_and_position(esdb_uri: str, tmp_path: Path) -> None:
    # CliRunner's stderr is no terminal: --progress asks for the bars all the same.
    result = CliRunner().invoke(
        main, ["--progress", "sync", "--uri", esdb_uri, "--lake", str(tmp_path / "l.duckdb")]
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"[\d,]+ events, [\d,]+ events/s, position \d+", result.stderr)
    assert "%|" in result.stderr  # a bar: the head position read at the start is its total
    assert re.search(r"^sync ok: [\d,]+ events added", result.stdout, re.MULTILINE)


def _sync_process(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "ESWORKBENCH_ESDB_URI"}
    return subprocess.Popen(
        [sys.executable, "-m", "esworkbench", "--progress", "sync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_progress(proc: subprocess.Popen[str]) -> None:
    """Until the progress bar reports committed events (tqdm redraws with '\\r')."""
    assert proc.stderr is not None
    seen = ""
    while not re.search(r"[1-9][\d,]* events", seen):
        chunk = proc.stderr.read(1)
        assert chunk, f"sync ended before any progress: {seen!r}"
        seen += chunk


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_stopping_the_command_mid_sync_leaves_a_lake_the_next_run_completes(
    archive: Path, clean: Path, tmp_path: Path, how: str
) -> None:
    lake = tmp_path / "l.duckdb"
    proc = _sync_process("--archive", str(archive), "--lake", str(lake), "--batch-size", "7")
    _wait_for_progress(proc)
    proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    if how == "ctrl-c":
        assert proc.returncode == 130
        assert "sync interrupted:" in out and "run the same command to resume" in out
    else:
        assert proc.returncode == -signal.SIGKILL
    again = CliRunner().invoke(main, ["sync", "--archive", str(archive), "--lake", str(lake)])
    assert again.exit_code == 0, again.output
    assert_same_lake(lake, clean)


def test_follow_keeps_syncing_until_ctrl_c(tmp_path: Path) -> None:
    with devserver.start() as server:
        client = EventStoreDBClient(server.uri)
        client.append_to_stream(
            "tick-1",
            current_version=StreamState.ANY,
            events=[NewEvent(type="Ticked", data=b'{"i": 0}')],
        )
        lake = tmp_path / "follow.duckdb"
        proc = _sync_process("--uri", server.uri, "--lake", str(lake), "--follow")
        _wait_for_progress(proc)
        client.append_to_stream(
            "tick-2",
            current_version=StreamState.ANY,
            events=[NewEvent(type="Ticked", data=b'{"i": 1}', id=uuid.uuid4())],
        )
        time.sleep(1.5)  # live events are committed within a fraction of a second
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        client.close()
    assert proc.returncode == 130, out
    assert "sync interrupted: 2 events added" in out
    with Lake(lake, read_only=True) as opened:
        assert opened.read_events()["stream_name"].to_list() == ["tick-1", "tick-2"]


@pytest.mark.parametrize("where", ["esworkbench.lake.Lake.__init__", "esworkbench.lake.Lake.close"])
def test_ctrl_c_outside_the_sync_loop_exits_130_quietly(
    tmp_path: Path, archive: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C while the lake opens or closes (the sync loop handles its own) is no failure."""
    method = where.rsplit(".", 1)[1]
    original = getattr(Lake, method)

    def interrupted(self: Lake, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Lake, method, interrupted)
    result = CliRunner().invoke(
        main, ["sync", "--archive", str(archive), "--lake", str(tmp_path / "l.duckdb")]
    )
    monkeypatch.undo()
    assert result.exit_code == 130, result.output
    assert "Aborted" not in result.output and "interrupted: the lake is consistent" in result.output
