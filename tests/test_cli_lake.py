"""What a lake holds and how syncs fail, from the command line.

Given the committed sample archive synced into a lake, `esworkbench lake info` shows its counts,
positions, checkpoints, sync runs and views, and `esworkbench lake rejected` what was rejected
and why (with the raw bytes on request). A first sync that fails leaves no lake behind; a URI
that asks for TLS of a plaintext server says to add tls=false; kurrentdb:// works as esdb://.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from esworkbench.cli import main
from esworkbench.examples.bank.sample import truth_path
from esworkbench.lake import Lake

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "ledger.jsonl.gz"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("lake") / "sample.duckdb"
    result = CliRunner().invoke(main, ["sync", "--archive", str(SAMPLE), "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    return lake


def test_lake_info_shows_counts_positions_checkpoints_runs_and_views(sample_lake: Path) -> None:
    result = CliRunner().invoke(main, ["lake", "info", str(sample_lake)])
    assert result.exit_code == 0, result.output
    # Ground truth from the archive itself, read with a plain loop.
    lines = [json.loads(line) for line in gzip.decompress(SAMPLE.read_bytes()).splitlines()]
    kinds = [json.loads(t)["kind"] for t in truth_path(SAMPLE).read_text().splitlines()]
    rejected = sum(k in ("malformed_json", "binary_payload") for k in kinds)
    last = max(e["commit_position"] for e in lines)
    out = result.output
    assert f"{len(lines) - rejected:,} events" in out and f"..{last}" in out
    assert f"rejected: {rejected}" in out
    assert f"file:{SAMPLE} -> {last}" in out  # the checkpoint
    assert "latest sync runs (of 1):" in out and f"ok: {len(lines) - rejected:,} events" in out
    types = {e["event_type"] for e in lines}
    assert "typed.BalanceDeposited" in out and f"typed views ({len(types)})" in out


def test_lake_rejected_says_what_and_why_with_the_raw_bytes(sample_lake: Path) -> None:
    truth = [json.loads(t) for t in truth_path(SAMPLE).read_text().splitlines()]
    undecodable = [t for t in truth if t["kind"] in ("malformed_json", "binary_payload")]
    result = CliRunner().invoke(main, ["lake", "rejected", str(sample_lake), "--raw"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"{len(undecodable)} rejected event(s)" in out
    assert out.count("malformed_json:") == sum(t["kind"] == "malformed_json" for t in undecodable)
    assert out.count("binary_payload:") == sum(t["kind"] == "binary_payload" for t in undecodable)
    assert "data (" in out and "b'\\x" in out  # binary payloads shown escaped
    short = CliRunner().invoke(main, ["lake", "rejected", str(sample_lake), "--limit", "1"])
    assert "data (" not in short.output and f"{len(undecodable) - 1:,} more" in short.output


def test_a_missing_lake_says_how_to_make_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["lake", "info", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 1
    assert "make demo" in result.output and "esworkbench sync" in result.output


def test_a_failed_first_sync_leaves_no_lake_but_a_later_one_keeps_it(
    sample_lake: Path, tmp_path: Path
) -> None:
    uri = f"esdb://admin:s3cret@127.0.0.1:{_free_port()}?tls=false"
    lake = tmp_path / "new.duckdb"
    result = CliRunner().invoke(main, ["sync", "--uri", uri, "--lake", str(lake)])
    assert result.exit_code == 1 and "s3cret" not in result.output
    assert list(tmp_path.iterdir()) == []
    again = CliRunner().invoke(main, ["sync", "--uri", uri, "--lake", str(sample_lake)])
    assert again.exit_code == 1
    with Lake(sample_lake, read_only=True) as opened:
        assert opened.summary().events > 0


def test_a_uri_without_tls_false_against_a_plaintext_server_names_the_fix(tmp_path: Path) -> None:
    from esworkbench import devserver

    with devserver.start() as server:
        plain = server.uri.replace("?tls=false", "")
        no_credentials = CliRunner().invoke(
            main, ["sync", "--uri", plain, "--lake", str(tmp_path / "a.duckdb")]
        )
        assert no_credentials.exit_code == 1
        assert f"add tls=false: {plain}?tls=false" in no_credentials.output
        secret = plain.replace("esdb://", "esdb://admin:s3cret@")
        with_credentials = CliRunner().invoke(
            main, ["sync", "--uri", secret, "--lake", str(tmp_path / "b.duckdb")]
        )
    assert with_credentials.exit_code == 1
    out = with_credentials.output
    assert "did not answer the TLS handshake" in out and "s3cret" not in out
    assert plain.replace("esdb://", "esdb://admin:***@") + "?tls=false" in out
    assert list(tmp_path.iterdir()) == []


def test_kurrentdb_uris_seed_and_sync_like_esdb_ones(tmp_path: Path) -> None:
    from esworkbench import devserver

    with devserver.start() as server:
        uri = server.uri.replace("esdb://", "kurrentdb://")
        seeded = CliRunner().invoke(
            main, ["seed", "--uri", uri, "--users", "20", "--days", "5", "--seed", "3"]
        )
        assert seeded.exit_code == 0, seeded.output
        assert "seeded kurrentdb://127.0.0.1" in seeded.output
        lake = tmp_path / "k.duckdb"
        synced = CliRunner().invoke(main, ["-q", "sync", "--uri", uri, "--lake", str(lake)])
    assert synced.exit_code == 0, synced.output
    assert "sync ok" in synced.output
    with Lake(lake, read_only=True) as opened:
        assert opened.summary().events > 0
        (key,) = opened.summary().checkpoints
    assert key.startswith("esdb://127.0.0.1")


def test_a_sync_waits_for_an_analyst_holding_the_lake_and_logs_no_bars(
    sample_lake: Path, tmp_path: Path
) -> None:
    lake = tmp_path / "held.duckdb"
    lake.write_bytes(sample_lake.read_bytes())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from esworkbench.lake import Lake; "
            "lake = Lake(sys.argv[1], read_only=True); print('ready', flush=True); time.sleep(2)",
            str(lake),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "esworkbench",
            "sync",
            "--archive",
            str(SAMPLE),
            "--lake",
            str(lake),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    holder.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"waiting for the lake {lake}: it is locked by PID {holder.pid}" in done.stderr
    assert "sync ok: 0 events added" in done.stdout
    assert "%|" not in done.stderr and "it/s" not in done.stderr  # no progress bars in logs
