"""The newer client, kurrentdbclient 1.3, reads the newer protocol's caught-up and checkpoints.

kurrentdbclient needs a newer grpcio than esdbclient 1.1.x pins, so it lives in its own
virtual environment: created once under the user's cache directory
(``$XDG_CACHE_HOME/esworkbench/kurrentdbclient-1.3``, reused afterwards) by a session fixture,
and driven as a subprocess (``clients/kurrentdb_caught_up.py``) against an in-process dev server.
The test is skipped, with pip's error, only when the package index cannot provide the client.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
import venv
from pathlib import Path

import pytest

from esworkbench import devserver
from tests.devserver.conftest import needs_devserver

REQUIREMENT = "kurrentdbclient>=1.3,<1.4"
SCRIPT = Path(__file__).parent / "clients" / "kurrentdb_caught_up.py"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "esworkbench" / "kurrentdbclient-1.3"


@pytest.fixture(scope="session")
def kurrentdb_python() -> Path:
    """An interpreter that can import kurrentdbclient 1.3 (its venv is made once, then reused)."""
    env_dir = _cache_dir()
    python = env_dir / "bin" / "python"
    probe = [str(python), "-c", "import kurrentdbclient"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", REQUIREMENT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        pytest.skip(f"the package index cannot provide {REQUIREMENT}: {install.stderr[-500:]}")
    return python


@needs_devserver
def test_kurrentdbclient_sees_positions_and_timestamps(kurrentdb_python: Path) -> None:
    stream = f"kurrent-{uuid.uuid4().hex[:8]}"
    with devserver.start() as server:
        before = time.time()
        run = subprocess.run(
            [str(kurrentdb_python), str(SCRIPT), server.uri, stream],
            capture_output=True,
            text=True,
            timeout=60,
        )
        after = time.time()
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    last = result["last_commit_position"]

    *stream_events, stream_caught_up = result["stream"]
    assert [e["stream_position"] for e in stream_events] == [0, 1, 2]
    assert stream_caught_up["kind"] == "CaughtUp"
    assert stream_caught_up["stream_position"] == 2  # where a resume would start from
    assert before - 1 <= stream_caught_up["recorded_at"] <= after + 1

    *all_events, checkpoint, all_caught_up = result["all"]
    assert [e["stream_position"] for e in all_events] == [0, 1, 2]
    assert checkpoint["kind"] == "Checkpoint"
    assert all_caught_up["kind"] == "CaughtUp"
    assert checkpoint["commit_position"] == all_caught_up["commit_position"] == last
    for message in (checkpoint, all_caught_up):
        assert before - 1 <= message["recorded_at"] <= after + 1
