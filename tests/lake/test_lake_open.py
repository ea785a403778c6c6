"""Opening a lake while someone else holds it: wait, say for whom, give up with the fix.

Given a lake that another process (an analyst's notebook, a running sync) holds open, when a
writer opens it, then it waits with one message naming the holder's PID, and either gets the
lake once the holder lets go or, after its timeout, fails with the fix. A missing lake and a
lake without write permission are reported as what they are, not as locks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from esworkbench.errors import LakeError
from esworkbench.lake import Lake, opened

ROOT = Path(__file__).resolve().parents[2]


def _hold(path: Path, seconds: float, *, read_only: bool = True) -> subprocess.Popen[str]:
    """Another process holding the lake open for `seconds`; returns once it holds it."""
    code = (
        "import sys, time\n"
        "from esworkbench.lake import Lake\n"
        f"lake = Lake({str(path)!r}, read_only={read_only})\n"
        "print('holding', flush=True)\n"
        f"time.sleep({seconds})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


@pytest.fixture
def lake_file(tmp_path: Path) -> Path:
    path = tmp_path / "lake.duckdb"
    Lake(path).close()
    return path


def test_a_writer_waits_for_a_reader_and_names_it(lake_file: Path) -> None:
    holder = _hold(lake_file, 2.0)
    said: list[str] = []
    started = time.monotonic()
    try:
        with Lake(lake_file, lock_timeout=30, on_wait=said.append) as lake:
            assert lake.head_position() is None
    finally:
        holder.wait(timeout=30)
    assert time.monotonic() - started >= 0.5  # it did wait for the holder to let go
    (message,) = said
    assert f"PID {holder.pid}" in message and "waiting for the lake" in message


def test_a_writer_gives_up_after_its_timeout_with_the_fix(lake_file: Path) -> None:
    holder = _hold(lake_file, 20.0)
    try:
        with pytest.raises(LakeError) as caught:
            Lake(lake_file, lock_timeout=0.5, on_wait=lambda _: None)
    finally:
        holder.kill()
        holder.wait()
    message = str(caught.value)
    assert f"still locked by PID {holder.pid}" in message
    assert "close the lake there" in message


def test_the_wait_message_goes_to_stderr_by_default(
    lake_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = _hold(lake_file, 1.0)
    try:
        Lake(lake_file, lock_timeout=30).close()
    finally:
        holder.wait(timeout=30)
    assert f"locked by PID {holder.pid}" in capsys.readouterr().err


def test_a_missing_lake_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match=r"make demo.*esworkbench sync"):
        Lake(tmp_path / "none.duckdb", read_only=True)
    with pytest.raises(LakeError, match="make demo"):
        Lake(tmp_path / "none.duckdb", create=False)
    assert not (tmp_path / "none.duckdb").exists()


def test_opened_finds_the_project_lake_from_a_subdirectory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    lake = tmp_path / "data" / "lake" / "demo.duckdb"
    Lake(lake).close()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.delenv("ESWORKBENCH_LAKE", raising=False)
    with opened("data/lake/demo.duckdb") as found:
        assert found.path == lake and found.read_only


def test_a_read_only_lake_file_is_a_permission_problem_not_a_lock(lake_file: Path) -> None:
    # pytest's temporary directories are private to their owner: the ordinary user below needs
    # one it can enter.
    shared = Path(tempfile.mkdtemp(prefix="esw-perm-"))
    try:
        shared.chmod(0o755)
        lake = shared / "lake.duckdb"
        shutil.copy(lake_file, lake)
        lake.chmod(0o444)
        code = (
            "from esworkbench.lake import Lake\n"
            "from esworkbench.errors import LakeError\n"
            f"try:\n    Lake({str(lake)!r}, lock_timeout=5)\n"
            "except LakeError as e:\n    print(e)\n"
            f"with Lake({str(lake)!r}, read_only=True) as opened:\n"
            "    print('read ok', opened.head_position())\n"
        )
        command = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            # Root may write any file: run as an ordinary user, as a scheduled job would.
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
            probe = subprocess.run(
                [*command[:-1], "import esworkbench"], capture_output=True, cwd=ROOT, timeout=60
            )
            if probe.returncode != 0:
                pytest.skip(
                    "the ordinary user cannot reach this checkout or its .venv (a directory on "
                    "the way is private, as `mktemp -d` makes it): the permission case needs one"
                )
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 0, done.stderr
    finally:
        shutil.rmtree(shared)
    out = done.stdout
    assert "no permission to write the lake" in out and "not a lock" in out
    assert "chmod u+w" in out and "read_only=True" in out
    assert "read ok None" in out
