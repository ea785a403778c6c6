"""The command line, as a person uses it."""

from __future__ import annotations

import gzip
import json
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from click.testing import CliRunner
from esdbclient import EventStoreDBClient, NewEvent, StreamState
from polars.testing import assert_frame_equal

from esworkbench.cli import main
from esworkbench.examples.bank.sample import truth_path
from esworkbench.lake import Lake


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


def test_devserver_serves_until_sigterm() -> None:
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
    written = re.search(r": ([\d,]+) of \1 events written \(0 already there\)", first.output)
    assert written, first.output
    n = written.group(1)
    assert f": 0 of {n} events written ({n} already there)" in again.output


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


SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "ledger.jsonl.gz"


def test_sync_archive_then_again_adds_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    lake = str(tmp_path / "lake.duckdb")
    first = runner.invoke(main, ["sync", "--archive", str(SAMPLE), "--lake", lake])
    assert first.exit_code == 0, first.output
    # Ground truth from the archive itself: every line is an event; the malformed and binary
    # payloads its truth file lists are the ones the lake rejects.
    total = len(gzip.decompress(SAMPLE.read_bytes()).splitlines())
    undecodable = sum(
        json.loads(line)["kind"] in ("malformed_json", "binary_payload")
        for line in truth_path(SAMPLE).read_text().splitlines()
    )
    assert f"sync ok: {total - undecodable:,} events added, {undecodable} rejected" in first.output
    again = runner.invoke(main, ["sync", "--archive", str(SAMPLE), "--lake", lake])
    assert again.exit_code == 0, again.output
    assert "sync ok: 0 events added, 0 rejected" in again.output


def test_sync_from_eventstoredb_with_filters(esdb_uri: str, tmp_path: Path) -> None:
    runner = CliRunner()
    seeded = runner.invoke(main, ["seed", "--uri", esdb_uri, "--users", "20", "--seed", "5"])
    assert seeded.exit_code == 0, seeded.output
    lake = tmp_path / "lake.duckdb"
    args = [
        "sync",
        "--uri",
        esdb_uri,
        "--lake",
        str(lake),
        "--event-type",
        "UserCreated",
        "--reader",
        "plain",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    with Lake(lake, read_only=True) as opened:
        types = set(opened.read_events()["event_type"].unique())
    assert types == {"UserCreated"}


def test_export_round_trips_through_sync(tmp_path: Path) -> None:
    runner = CliRunner()
    lake, copy = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    archive = tmp_path / "out" / "export.jsonl.gz"
    assert (
        runner.invoke(main, ["sync", "--archive", str(SAMPLE), "--lake", str(lake)]).exit_code == 0
    )
    exported = runner.invoke(main, ["export", "--lake", str(lake), "--out", str(archive)])
    assert exported.exit_code == 0, exported.output
    assert (
        runner.invoke(main, ["sync", "--archive", str(archive), "--lake", str(copy)]).exit_code == 0
    )
    with Lake(lake, read_only=True) as a, Lake(copy, read_only=True) as b:
        assert_frame_equal(a.read_events(), b.read_events())
        assert a.read_rejected().height == b.read_rejected().height == 6
    parts = runner.invoke(
        main,
        [
            "export",
            "--lake",
            str(lake),
            "--out",
            str(tmp_path / "p"),
            "--partitioned",
            "--category",
            "user",
        ],
    )
    assert parts.exit_code == 0, parts.output
    assert list((tmp_path / "p").glob("category=user/month=*/*.parquet"))


def test_sync_needs_exactly_one_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["sync", "--lake", str(tmp_path / "x.duckdb")], env={"ESWORKBENCH_ESDB_URI": None}
    )
    assert result.exit_code == 2
    assert "exactly one of --uri" in result.output


def test_sync_from_unreachable_server_masks_the_password(tmp_path: Path) -> None:
    uri = f"esdb://admin:s3cret@127.0.0.1:{_free_port()}?tls=false"
    result = CliRunner().invoke(main, ["sync", "--uri", uri, "--lake", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 1
    assert "s3cret" not in result.output
    assert "admin:***@127.0.0.1" in result.output


def test_rebuild_and_compare_from_the_command_line(tmp_path: Path) -> None:
    from esworkbench.examples.bank.sample import generate, write_archive
    from esworkbench.lake import Lake, sync
    from esworkbench.sources.files import open_archive

    archive, _ = write_archive(generate(users=12, seed=5, days=20), tmp_path / "l.jsonl")
    lake = tmp_path / "lake.duckdb"
    with Lake(lake) as opened:
        sync(open_archive(archive), opened)
    bank = "esworkbench.examples.bank.projections:"
    runner = CliRunner()
    done = runner.invoke(
        main, ["rebuild", "--lake", str(lake), "--projection", bank + "AccountSummaryV1"]
    )
    assert done.exit_code == 0, done.output
    assert "rebuilt rm_account_summary_v1" in done.output
    compared = runner.invoke(
        main,
        [
            "rebuild",
            "--lake",
            str(lake),
            "--projection",
            bank + "AccountSummaryV1",
            "--compare",
            bank + "AccountSummaryV2",
        ],
    )
    assert compared.exit_code == 0, compared.output
    assert "changed" in compared.output
    bad = runner.invoke(main, ["rebuild", "--lake", str(lake), "--projection", "nope"])
    assert bad.exit_code == 1 and "import path" in bad.output
