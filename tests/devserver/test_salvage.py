"""--salvage: a log damaged in the middle is copied aside, then kept wherever it still verifies.

Given a log of interleaved appends to two streams, when one byte of a middle frame flips, then
a plain start refuses (the file untouched), and a start with --salvage keeps every other frame
at its old position, except the later frames of the damaged stream, and says what it dropped.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from esdbclient import EventStoreDBClient, NewEvent, StreamState

from esworkbench import devserver
from esworkbench.devserver.log import LOG_FILE_NAME
from esworkbench.devserver.records import ANY
from esworkbench.devserver.server import open_store
from tests.devserver.conftest import needs_devserver
from tests.devserver.test_log import damage, proposed

pytestmark = needs_devserver


@dataclass
class Ledger:
    """A log on disk and what was in it before any damage."""

    path: Path
    frames: dict[str, int]
    """Frame offset per append label, e.g. "a2" is the append of a@2."""
    positions: dict[tuple[str, int], int]
    """Position per (stream, revision), as clients read them."""


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    store = open_store(tmp_path)
    frames: dict[str, int] = {}
    for i, (stream, revision) in enumerate(
        [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]
    ):
        frames[f"{stream}{revision}"] = (tmp_path / LOG_FILE_NAME).stat().st_size
        store.append(stream, ANY, [proposed(100 + i)])
    positions = {(e.stream, e.revision): e.position for e in store.events if e.stream in ("a", "b")}
    store.close()
    return Ledger(tmp_path, frames, positions)


def read_all(client: EventStoreDBClient) -> dict[tuple[str, int], int]:
    return {
        (e.stream_name, e.stream_position): e.commit_position
        for e in client.read_all()
        if e.stream_name in ("a", "b")
    }


@pytest.fixture
def run_server() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def serve(started: list[subprocess.Popen[str]], *args: str) -> tuple[str, str]:
    """Start a server process; return (what it printed before serving, its connection string)."""
    process = subprocess.Popen(
        [sys.executable, *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started.append(process)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "connection string:" in line:
            return "".join(lines), line.split("connection string:")[1].strip()
    process.wait(10)
    raise AssertionError(f"the server exited with {process.returncode}:\n{''.join(lines)}")


def test_a_plain_start_refuses_a_log_damaged_in_the_middle(ledger: Ledger) -> None:
    log_file = ledger.path / LOG_FILE_NAME
    damaged = damage(log_file, ledger.frames["a2"] + 30)
    result = subprocess.run(
        [sys.executable, "-m", "esworkbench.devserver", "--port", "0", "--data", str(ledger.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"damaged at offset {ledger.frames['a2']} " in result.stderr
    assert "--salvage" in result.stderr
    assert log_file.read_bytes() == damaged
    assert [p.name for p in ledger.path.iterdir()] == [LOG_FILE_NAME]


@pytest.mark.parametrize(
    "command",
    [["-m", "esworkbench.devserver"], ["-m", "esworkbench", "devserver"]],
    ids=["python-m-devserver", "esworkbench-devserver"],
)
def test_salvage_keeps_every_frame_that_still_verifies_at_its_position(
    ledger: Ledger, run_server: list[subprocess.Popen[str]], command: list[str]
) -> None:
    log_file = ledger.path / LOG_FILE_NAME
    damaged = damage(log_file, ledger.frames["a2"] + 30)
    printed, uri = serve(run_server, *command, "--data", str(ledger.path), "--salvage")

    copies = [p for p in ledger.path.iterdir() if p.name.startswith("events.log.damaged-")]
    assert len(copies) == 1 and copies[0].read_bytes() == damaged
    assert f"copied {log_file} to {copies[0]}" in printed
    assert f"offset {ledger.frames['a2']} " in printed and "CRC-32" in printed
    assert f"offset {ledger.frames['a3']} " in printed and "'a'@3 Happened" in printed
    assert "streams that lost events" in printed and "'a'" in printed

    expected = {k: v for k, v in ledger.positions.items() if k not in (("a", 2), ("a", 3))}
    with EventStoreDBClient(uri) as client:
        assert read_all(client) == expected
        new = client.append_to_stream(
            "b", current_version=2, events=[NewEvent(type="After", data=b"{}")]
        )
        assert new > max(ledger.positions.values())  # no position is handed out twice
        assert client.get_current_version("a") == 1
    process = run_server[-1]
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0

    # The salvaged log opens normally from now on.
    with devserver.start(data_dir=ledger.path) as server, EventStoreDBClient(server.uri) as c:
        assert read_all(c) == {**expected, ("b", 3): new}


def test_salvage_finds_the_frames_after_a_damaged_length(ledger: Ledger) -> None:
    damage(ledger.path / LOG_FILE_NAME, ledger.frames["b1"] + 3)  # now runs past the end
    server = devserver.DevServer(data_dir=ledger.path, salvage=True).start()
    try:
        report = server.salvage_report
        assert report is not None and report.copy is not None
        assert [(d.offset, d.length) for d in report.dropped] == [
            (ledger.frames["b1"], ledger.frames["a2"] - ledger.frames["b1"]),
            (ledger.frames["b2"], ledger.frames["a3"] - ledger.frames["b2"]),
        ]
        assert [str(e) for e in report.dropped[1].events] == [
            f"'b'@2 Happened {proposed(105).event_id}"
        ]
        assert report.streams_with_losses == ("b",)
        with EventStoreDBClient(server.uri) as client:
            assert read_all(client) == {
                k: v for k, v in ledger.positions.items() if k not in (("b", 1), ("b", 2))
            }
            client.append_to_stream(
                "a", current_version=StreamState.ANY, events=[NewEvent(type="After", data=b"{}")]
            )
    finally:
        server.stop()


def test_salvage_leaves_a_sound_log_alone(ledger: Ledger) -> None:
    before = (ledger.path / LOG_FILE_NAME).read_bytes()
    server = devserver.DevServer(data_dir=ledger.path, salvage=True).start()
    server.stop()
    report = server.salvage_report
    assert report is not None and report.copy is None and not report.dropped
    assert (ledger.path / LOG_FILE_NAME).read_bytes() == before
    assert [p.name for p in ledger.path.iterdir()] == [LOG_FILE_NAME]


def test_salvage_also_cuts_a_torn_tail(ledger: Ledger) -> None:
    log_file = ledger.path / LOG_FILE_NAME
    damage(log_file, ledger.frames["a1"] + 30)
    log_file.write_bytes(log_file.read_bytes()[:-3])
    store = open_store(ledger.path, salvage=True)
    store.close()
    assert {(e.stream, e.revision) for e in store.events if e.stream in ("a", "b")} == {
        ("a", 0),
        ("b", 0),
        ("b", 1),
        ("b", 2),
    }
    assert log_file.stat().st_size == ledger.frames["a3"]
