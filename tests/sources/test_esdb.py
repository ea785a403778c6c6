"""EventStoreDB as a source: both readers, every filter, follow mode, and a server that dies.

Runs against the session's EventStoreDB (`esdb_uri`: the dev server, or a real one named by
ESWORKBENCH_ESDB_URI). Tests that kill or restart a server start their own dev server.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from esdbclient import EventStoreDBClient, NewEvent, StreamState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from esworkbench import devserver
from esworkbench.errors import SourceError
from esworkbench.examples.bank.seed import write_esdb
from esworkbench.lake import EventFilter, Lake, sync
from esworkbench.sources.esdb import EsdbSource, created_from_tick_strings

READERS = ("fast", "plain")
AUDIT = ("source_key", "run_id", "rejected_at")


def snapshot(lake: Lake) -> dict[str, pl.DataFrame]:
    return {
        "events": lake.read_events(include_system=True),
        "rejected": lake.read_rejected().drop(AUDIT),
        **{t: lake.read_typed(t) for t in lake.typed_event_types()},
    }


def assert_same(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert_frame_equal(a[name], b[name], check_exact=True), name


@pytest.fixture(scope="module")
def seeded(esdb_uri: str, small_ledger: Any) -> str:
    """The session's EventStoreDB with the small ledger in it (idempotent)."""
    write_esdb(small_ledger, esdb_uri)
    return esdb_uri


@pytest.fixture(scope="module")
def full_lakes(seeded: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One unfiltered lake per reader (small batches, so many of them)."""
    paths = {}
    for reader in READERS:
        path = tmp_path_factory.mktemp(reader) / "full.duckdb"
        with Lake(path) as lake:
            result = sync(EsdbSource(seeded, reader=reader), lake, batch_size=64)
            assert result.outcome == "ok" and result.batches > 5
        paths[reader] = path
    return paths


def test_fast_and_plain_readers_make_identical_lakes(full_lakes: dict[str, Path]) -> None:
    with (
        Lake(full_lakes["fast"], read_only=True) as fast,
        Lake(full_lakes["plain"], read_only=True) as plain,
    ):
        assert_same(snapshot(fast), snapshot(plain))
        assert fast.digest() == plain.digest()
        assert (
            fast.read_checkpoints()["position"].to_list()
            == plain.read_checkpoints()["position"].to_list()
        )


def test_the_whole_ledger_arrives_with_its_anomalies(
    full_lakes: dict[str, Path], small_ledger: Any
) -> None:
    with Lake(full_lakes["fast"], read_only=True) as lake:
        ids = set(lake.read_events()["event_id"].to_list())
        rejected = {r["event_id"]: r["reason"] for r in lake.read_rejected().to_dicts()}
    assert set(small_ledger.event_id) <= ids | set(rejected)
    for anomaly in small_ledger.truth:
        if anomaly.kind in ("malformed_json", "binary_payload"):
            assert rejected[anomaly.event_id].startswith(anomaly.kind + ":"), anomaly
        else:
            assert anomaly.event_id in ids, anomaly


def test_a_second_sync_reads_nothing_new(
    seeded: str, full_lakes: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(full_lakes["fast"], copy)
    with Lake(copy) as lake:
        before = snapshot(lake)
        for reader in READERS:
            result = sync(EsdbSource(seeded, reader=reader), lake)
            assert (result.events, result.rejected) == (0, 0)
        assert_same(snapshot(lake), before)


def _filter_cases(events: pl.DataFrame) -> list[dict[str, Any]]:
    streams = sorted(events.filter(pl.col("category") == "user")["stream_name"].unique())[:2]
    positions = events["commit_position"].to_list()
    created = events["created"].sort().to_list()
    return [
        {"streams": streams},
        {"stream_prefix": streams[0][:8]},
        {"stream_regex": "^user-[0-7]"},
        {"category": "user", "event_types": ["UserCreated", "EmailChanged"]},
        {"event_types": ["BalanceDeposited"]},
        {"event_types": ["NoSuchType"]},
        {
            "from_position": positions[len(positions) // 3],
            "to_position": positions[2 * len(positions) // 3],
        },
        {"since": created[len(created) // 4], "until": created[len(created) // 2]},
        {"include_system": True},
    ]


@pytest.mark.parametrize("reader", READERS)
def test_every_filter_reads_what_the_lake_would_select(
    seeded: str, full_lakes: dict[str, Path], tmp_path: Path, reader: str
) -> None:
    with Lake(full_lakes[reader], read_only=True) as full:
        everything = full.read_events()
        head = full.checkpoint(EsdbSource(seeded).key)
        for i, options in enumerate(_filter_cases(everything)):
            expected = full.read_events(**options)
            source = EsdbSource(seeded, reader=reader, filter=EventFilter.of(**options))
            with Lake(tmp_path / f"f{i}.duckdb") as lake:
                result = sync(source, lake, batch_size=50)
                if options.get("include_system"):  # the full lake has no system events
                    assert_frame_equal(lake.read_events(), everything)
                    system = lake.read_events(include_system=True).filter(
                        pl.col("event_type").str.starts_with("$")
                    )
                    assert system.height > 0
                else:
                    assert_frame_equal(lake.read_events(include_system=True), expected), options
                # the cursor moved to where the filter was read through, matches or not
                end = options.get("to_position")
                checkpoint = lake.checkpoint(source.key)
                assert checkpoint is not None and result.to_position == checkpoint
                assert checkpoint == end if end is not None else checkpoint >= head, options


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    reader=st.sampled_from(READERS),
    filtered=st.booleans(),
    batch_size=st.integers(min_value=20, max_value=200),
    stop_after=st.integers(min_value=1, max_value=8),
)
def test_interrupted_after_any_batch_then_resumed_is_one_clean_sync(
    seeded: str,
    full_lakes: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    reader: str,
    filtered: bool,
    batch_size: int,
    stop_after: int,
) -> None:
    options = (
        {"category": "user", "event_types": ["BalanceDeposited", "UserCreated"]}
        if (filtered)
        else {}
    )
    source = EsdbSource(seeded, reader=reader, filter=EventFilter.of(**options))
    with Lake(tmp_path_factory.mktemp("h") / "l.duckdb") as lake:
        first = sync(source, lake, batch_size=batch_size, stop_after_batches=stop_after)
        second = sync(source, lake, batch_size=batch_size)
        assert second.from_position == first.to_position and second.outcome == "ok"
        with Lake(full_lakes[reader], read_only=True) as full:
            assert_frame_equal(lake.read_events(include_system=True), full.read_events(**options))
            if not filtered:
                assert_same(snapshot(lake), snapshot(full))


def test_a_filter_that_matches_nothing_still_moves_the_cursor(seeded: str, lake: Lake) -> None:
    head = EsdbSource(seeded).head_position()
    for reader in READERS:
        source = EsdbSource(
            seeded, reader=reader, filter=EventFilter.of(event_types="NothingHasThisType")
        )
        result = sync(source, lake, batch_size=20)
        assert result.events == 0 and result.to_position is not None
        assert head is not None and result.to_position >= head - 1000  # near the head


def test_credentials_never_show(seeded: str) -> None:
    secret = "s3cr3t-pa55"
    host = seeded.split("//", 1)[1]
    source = EsdbSource(f"esdb://admin:{secret}@{host}")
    assert secret not in source.key and "admin@" in source.key
    assert secret not in source.describe() and "admin:***@" in source.describe()
    assert secret not in repr(source)


@pytest.mark.parametrize("reader", READERS)
def test_an_unreachable_server_is_named_with_the_password_masked(lake: Lake, reader: str) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"esdb://admin:hunter2@127.0.0.1:{port}?tls=false"
    with pytest.raises(SourceError) as caught:
        sync(EsdbSource(uri, reader=reader), lake)
    message = str(caught.value)
    assert f"esdb://admin:***@127.0.0.1:{port}" in message and "hunter2" not in message
    assert "resumes" in message
    assert lake.read_sync_runs()["outcome"].to_list() == ["failed"]


def test_created_is_rounded_exactly_as_esdbclient_does() -> None:
    rng = random.Random(3)
    ticks = [17_000_000_000_000_000 + k for k in range(0, 40)] + [
        rng.randrange(16 * 10**15, 18 * 10**15) for _ in range(5000)
    ]
    ours = created_from_tick_strings([str(t) for t in ticks]).to_pylist()
    theirs = [dt.datetime.fromtimestamp(t / 10000000.0, tz=dt.UTC) for t in ticks]
    assert ours == theirs


# -- follow mode ------------------------------------------------------------------------------


def _append(uri: str, stream: str, n: int, start: int = 0) -> None:
    client = EventStoreDBClient(uri)
    try:
        client.append_to_stream(
            stream,
            current_version=StreamState.ANY,
            events=[
                NewEvent(type="Ticked", data=f'{{"i": {start + i}}}'.encode(), id=uuid.uuid4())
                for i in range(n)
            ],
        )
    finally:
        client.close()


class Counter:
    """A SyncProgress that lets a test wait for a number of events."""

    def __init__(self) -> None:
        self.events = 0
        self.changed = threading.Condition()

    def start(self, **_: Any) -> None: ...

    def advance(self, *, events: int, **_: Any) -> None:
        with self.changed:
            self.events += events
            self.changed.notify_all()

    def close(self) -> None: ...

    def wait_for(self, n: int, timeout: float = 20) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.events >= n, timeout=timeout)


@pytest.mark.parametrize("reader", READERS)
def test_follow_mode_keeps_syncing_until_stopped(tmp_path: Path, reader: str) -> None:
    with devserver.start() as server:
        _append(server.uri, "tick-1", 30)
        counter, stop = Counter(), threading.Event()
        results: list[Any] = []
        with Lake(tmp_path / "follow.duckdb") as lake:
            worker = threading.Thread(
                target=lambda: results.append(
                    sync(
                        EsdbSource(server.uri, reader=reader, follow=True),
                        lake,
                        batch_size=25,
                        progress=counter,
                        stop=stop,
                    )
                )
            )
            worker.start()
            assert counter.wait_for(30)
            _append(server.uri, "tick-2", 3, start=30)  # live, after catching up
            assert counter.wait_for(33)
            _append(server.uri, "tick-1", 1, start=33)
            assert counter.wait_for(34)
            stop.set()
            worker.join(timeout=20)
            assert not worker.is_alive()
            assert results[0].outcome == "stopped" and results[0].events == 34
            assert lake.read_events()["stream_name"].to_list()[-4:] == [
                "tick-2",
                "tick-2",
                "tick-2",
                "tick-1",
            ]


# -- a server that goes away ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(data: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "esworkbench.devserver", "--port", str(port), "--data", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the dev server did not start")


@pytest.fixture(scope="module")
def server_data(tmp_path_factory: pytest.TempPathFactory, small_ledger: Any) -> Path:
    """A dev-server data directory holding the small ledger and 20 MB of filler events (more
    than gRPC and the sockets buffer, so that killing the server mid-read is noticed)."""
    data = tmp_path_factory.mktemp("esdb-data")
    port = _free_port()
    proc = _serve(data, port)
    uri = f"esdb://127.0.0.1:{port}?tls=false"
    try:
        write_esdb(small_ledger, uri)
        client = EventStoreDBClient(uri)
        filler = b'{"pad": "' + b"x" * 1000 + b'"}'
        for chunk in range(40):
            client.append_to_stream(
                f"filler-{chunk}",
                current_version=StreamState.ANY,
                events=[NewEvent(type="Filler", data=filler) for _ in range(500)],
            )
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return data


@pytest.mark.parametrize("reader", READERS)
def test_a_server_killed_mid_sync_gives_a_clear_error_and_a_resumable_lake(
    server_data: Path, tmp_path: Path, reader: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(server_data, data)
    port = _free_port()
    uri = f"esdb://admin:topsecret@127.0.0.1:{port}?tls=false"
    proc = _serve(data, port)

    class KillAfterTwoBatches:
        n = 0

        def start(self, **_: Any) -> None: ...

        def advance(self, **_: Any) -> None:
            self.n += 1
            if self.n == 2:
                proc.kill()  # kill -9
                proc.wait()

        def close(self) -> None: ...

    try:
        with Lake(tmp_path / "l.duckdb") as lake:
            with pytest.raises(SourceError) as caught:
                sync(
                    EsdbSource(uri, reader=reader),
                    lake,
                    batch_size=200,
                    progress=KillAfterTwoBatches(),
                )
            message = str(caught.value)
            assert f"esdb://admin:***@127.0.0.1:{port}" in message
            assert "topsecret" not in message
            partial = caught.value.sync_result  # type: ignore[attr-defined]
            assert partial.outcome == "failed" and partial.batches >= 2
            assert lake.read_events().height == partial.events
            proc = _serve(data, port)  # the server comes back
            resumed = sync(EsdbSource(uri, reader=reader), lake, batch_size=2000)
            assert resumed.outcome == "ok" and resumed.from_position == partial.to_position
            with Lake(tmp_path / "clean.duckdb") as clean:
                sync(EsdbSource(uri, reader=reader), clean, batch_size=5000)
                assert_same(snapshot(lake), snapshot(clean))
    finally:
        proc.kill()
        proc.wait()


# -- events as large as the server accepts ----------------------------------------------------


@pytest.fixture(scope="module")
def big_event_server() -> Any:
    """A dev server that accepts 24 MiB appends, holding an 18 MiB event between two small."""
    with devserver.start(max_append_size=24 << 20) as server:
        client = EventStoreDBClient(server.uri)
        try:
            big = json.dumps({"blob": "x" * (18 << 20)}).encode()
            for data in (b'{"i":1}', big, b'{"i":3}'):
                client.append_to_stream(
                    "big-1",
                    current_version=StreamState.ANY,
                    events=[NewEvent(type="Big", data=data, id=uuid.uuid4())],
                )
        finally:
            client.close()
        yield server


@pytest.mark.parametrize("reader", READERS)
def test_an_event_as_large_as_the_server_accepts_is_synced(
    big_event_server: Any, lake: Lake, reader: str
) -> None:
    result = sync(EsdbSource(big_event_server.uri, reader=reader), lake, batch_size=2)
    assert (result.outcome, result.events, result.rejected) == ("ok", 3, 0)
    sizes = lake.read_events()["data"].str.len_bytes().to_list()
    assert max(sizes) > 18 << 20


# -- a different store at the same address ----------------------------------------------------


def test_a_reset_store_at_the_same_address_stops_the_sync(tmp_path: Path) -> None:
    port = _free_port()
    with devserver.start(port=port) as server:
        _append(server.uri, "tick-1", 20)
        uri = server.uri
        with Lake(tmp_path / "lake.duckdb") as lake:
            first = sync(EsdbSource(uri), lake)
            assert (first.outcome, first.events) == ("ok", 20)
    with devserver.start(port=port) as server:  # restarted in memory, reseeded with others
        _append(server.uri, "tock-1", 50)
        with Lake(tmp_path / "lake.duckdb") as lake:
            before = lake.read_events()
            with pytest.raises(SourceError, match="the source changed") as caught:
                sync(EsdbSource(uri), lake)
            assert "new lake" in str(caught.value) and "run the sync again" not in str(
                getattr(caught.value, "__notes__", "")
            )
            assert_frame_equal(lake.read_events(), before)
            assert lake.read_sync_runs()["outcome"].to_list() == ["ok", "failed"]
        with Lake(tmp_path / "new.duckdb") as fresh:
            assert sync(EsdbSource(uri), fresh).events == 50


@pytest.mark.parametrize("filtered", [False, True])
def test_the_same_store_resumes_after_a_restart(tmp_path: Path, filtered: bool) -> None:
    data = tmp_path / "data"
    port = _free_port()
    f = EventFilter(stream_prefix="tick-") if filtered else None
    with devserver.start(port=port, data_dir=data) as server:
        _append(server.uri, "tick-1", 20)
        _append(server.uri, "other-1", 5)  # the filtered checkpoint passes these
        with Lake(tmp_path / "lake.duckdb") as lake:
            sync(EsdbSource(server.uri, filter=f), lake)
    with devserver.start(port=port, data_dir=data) as server:  # the same log, reopened
        _append(server.uri, "tick-1", 7)
        with Lake(tmp_path / "lake.duckdb") as lake:
            assert sync(EsdbSource(server.uri, filter=f), lake).events == 7


def test_a_schema_version_1_lake_is_migrated_and_resumes(tmp_path: Path) -> None:
    import duckdb

    with devserver.start() as server:
        _append(server.uri, "tick-1", 10)
        path = tmp_path / "old.duckdb"
        with Lake(path) as lake:
            sync(EsdbSource(server.uri), lake)
        con = duckdb.connect(str(path))  # as a version 1 lake was: no anchor, no _flags
        for column in ("anchor_event_id", "anchor_position"):
            con.execute(f"ALTER TABLE _checkpoints DROP COLUMN {column}")
        con.execute("DROP TABLE _flags")
        con.execute("UPDATE _lake_info SET value = '1' WHERE key = 'schema_version'")
        con.close()
        _append(server.uri, "tick-1", 3)
        with Lake(path) as lake:
            assert sync(EsdbSource(server.uri), lake).events == 3
            cp = lake.read_checkpoints().row(0, named=True)
            assert cp["anchor_event_id"] == lake.read_events()["event_id"][-1]
            assert lake.summary().flags == {}
