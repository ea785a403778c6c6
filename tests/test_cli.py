"""The command line, as a person uses it."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import uuid

from click.testing import CliRunner
from esdbclient import EventStoreDBClient, NewEvent, StreamState

from esworkbench.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_lists_the_stages() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1]
    for stage in ("devserver", "seed", "sync", "export", "fold", "report", "verify", "demo"):
        assert f"  {stage} " in commands, stage


def test_devserver_serves_until_sigterm(tmp_path: object) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "esworkbench", "devserver", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(3)]
        text = "".join(banner)
        uri = f"esdb://127.0.0.1:{port}?tls=false"
        assert uri in text
        assert "not a production event store" in text
        client = EventStoreDBClient(uri)
        stream = f"cli-{uuid.uuid4()}"
        client.append_to_stream(
            stream, current_version=StreamState.ANY, events=[NewEvent(type="Pinged", data=b"{}")]
        )
        assert [e.type for e in client.get_stream(stream)] == ["Pinged"]
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_seed_into_eventstoredb_twice_writes_once(esdb_uri: str) -> None:
    runner = CliRunner()
    args = ["seed", "--uri", esdb_uri, "--users", "20", "--seed", "11", "--days", "20"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert re.search(r": 3\d\d of 3\d\d events written \(0 already there\)", first.output)
    assert re.search(r": 0 of 3\d\d events written \(3\d\d already there\)", again.output)


def test_seed_needs_exactly_one_target() -> None:
    result = CliRunner().invoke(main, ["seed", "--users", "3"])
    assert result.exit_code == 2
    assert "exactly one of --out" in result.output


def test_unreachable_server_is_a_clear_error_without_the_password() -> None:
    uri = f"esdb://admin:s3cret@127.0.0.1:{_free_port()}?tls=false"
    result = CliRunner().invoke(main, ["seed", "--uri", uri, "--users", "20", "--days", "20"])
    assert result.exit_code == 1
    assert "s3cret" not in result.output
    assert "esdb://admin:***@127.0.0.1" in result.output
    assert "server is running" in result.output
