"""Durability across restarts (including kill -9) and concurrent writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from esdbclient import EventStoreDBClient, NewEvent, StreamState
from esdbclient.exceptions import NotFound, StreamIsDeleted, WrongCurrentVersion

from esworkbench import devserver
from esworkbench.errors import DevServerError
from tests.devserver.conftest import event, events, needs_devserver


def snapshot(client: EventStoreDBClient) -> list[tuple[object, ...]]:
    return [
        (e.commit_position, e.stream_name, e.stream_position, e.id, e.type, e.data, e.recorded_at)
        for e in client.read_all(filter_exclude=())
    ]


@needs_devserver
def test_restart_keeps_everything(tmp_path: Path) -> None:
    with devserver.start(data_dir=tmp_path) as server, EventStoreDBClient(server.uri) as c:
        c.append_to_stream("kept", current_version=StreamState.NO_STREAM, events=events(3))
        c.append_to_stream("kept", current_version=2, events=event())
        c.set_stream_metadata("kept", metadata={"$maxCount": 3, "owner": "me"})
        c.append_to_stream("soft", current_version=StreamState.ANY, events=events(2))
        c.delete_stream("soft", current_version=1)
        c.append_to_stream("hard", current_version=StreamState.ANY, events=events(1))
        c.tombstone_stream("hard", current_version=0)
        before = snapshot(c)
    with devserver.start(data_dir=tmp_path) as server, EventStoreDBClient(server.uri) as c:
        assert snapshot(c) == before
        assert [e.stream_position for e in c.get_stream("kept")] == [1, 2, 3]
        assert c.get_stream_metadata("kept") == ({"$maxCount": 3, "owner": "me"}, 0)
        with pytest.raises(NotFound):
            c.get_stream("soft")
        with pytest.raises(StreamIsDeleted):
            c.get_stream("hard")
        batch = events(2)
        position = c.append_to_stream("kept", current_version=3, events=batch)
        assert position > max(p for p, *_ in before)  # type: ignore[operator]
        assert c.append_to_stream("kept", current_version=3, events=batch) == position


@needs_devserver
def test_system_events_are_seeded_once(tmp_path: Path) -> None:
    for _ in range(2):
        with devserver.start(data_dir=tmp_path) as server:
            seeded = [e for e in server.store.events if e.type.startswith("$")]
    assert len(seeded) == len({e.stream for e in seeded})


@needs_devserver
def test_a_data_dir_serves_one_server_at_a_time(tmp_path: Path) -> None:
    with devserver.start(data_dir=tmp_path), pytest.raises(DevServerError, match="in use by"):
        devserver.DevServer(data_dir=tmp_path).start()


@dataclass
class Attempt:
    stream: str
    ids: list[uuid.UUID]
    acked_position: int | None = None


@dataclass
class Writer:
    client: EventStoreDBClient
    batched: bool
    attempts: list[Attempt] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        revision_of: dict[str, int] = {}
        i = 0
        while not self.stop.is_set():
            stream = f"{'batch' if self.batched else 'single'}-{i % 3}"
            new = events(5) if self.batched else [event()]
            attempt = Attempt(stream, [e.id for e in new])
            self.attempts.append(attempt)
            expected = revision_of.get(stream, StreamState.NO_STREAM)
            try:
                if self.batched:
                    position = self.client.append_to_stream(
                        stream, current_version=expected, events=new
                    )
                else:
                    position = self.client.append_to_stream(
                        stream, current_version=expected, events=new[0]
                    )
            except Exception:  # the server was killed: this append may or may not have landed
                return
            attempt.acked_position = position
            revision_of[stream] = (expected if isinstance(expected, int) else -1) + len(new)
            i += 1


@pytest.fixture
def killable_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "esworkbench.devserver", "--port", "0", "--data", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        uri = ""
        for line in process.stdout:
            if "esdb://" in line:
                uri = line[line.index("esdb://") :].strip()
                break
        assert uri, "the server printed no connection string"
        yield process, uri
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@needs_devserver
def test_kill_9_mid_append_keeps_every_acknowledged_append_and_nothing_partial(
    tmp_path: Path, killable_server: tuple[subprocess.Popen[str], str]
) -> None:
    process, uri = killable_server
    clients = [EventStoreDBClient(uri) for _ in range(2)]
    writers = [Writer(clients[0], batched=True), Writer(clients[1], batched=False)]
    threads = [threading.Thread(target=w.run) for w in writers]
    for t in threads:
        t.start()
    try:
        enough_acks = 60
        while sum(a.acked_position is not None for w in writers for a in w.attempts) < enough_acks:
            if not all(t.is_alive() for t in threads):
                break
            threading.Event().wait(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        for w in writers:
            w.stop.set()
        for t in threads:
            t.join(30)
        for c in clients:
            c.close()
    attempts = [a for w in writers for a in w.attempts]
    acked = [a for a in attempts if a.acked_position is not None]
    assert len(acked) >= enough_acks

    with devserver.start(data_dir=tmp_path) as server, EventStoreDBClient(server.uri) as c:
        recorded = {e.id: e for e in c.read_all(filter_exclude=())}
        for attempt in attempts:
            present = [recorded[i] for i in attempt.ids if i in recorded]
            assert len(present) in (0, len(attempt.ids)), "a partial append survived"
            if attempt.acked_position is not None:
                assert len(present) == len(attempt.ids), "an acknowledged append was lost"
                assert present[-1].commit_position == attempt.acked_position
                assert all(e.stream_name == attempt.stream for e in present)
        for stream in {a.stream for a in attempts}:
            try:
                revisions = [e.stream_position for e in c.get_stream(stream)]
            except NotFound:
                continue
            assert revisions == list(range(len(revisions)))
        # The log is usable after recovery.
        c.append_to_stream("batch-0", current_version=StreamState.ANY, events=events(2))


# -- concurrent writers ------------------------------------------------------------------------


def test_concurrent_appenders_never_share_positions_or_revisions(
    client: EventStoreDBClient, stream: str
) -> None:
    results: list[tuple[int, int]] = []
    conflicts: list[int] = []
    lock = threading.Lock()

    def append_any(n: int) -> None:
        for _ in range(n):
            batch: list[NewEvent] = events(2)
            position = client.append_to_stream(
                stream, current_version=StreamState.ANY, events=batch
            )
            with lock:
                results.append((position, len(batch)))

    def append_exact(n: int) -> None:
        for _ in range(n):
            try:
                current = client.get_current_version(stream)
                position = client.append_to_stream(stream, current_version=current, events=event())
            except WrongCurrentVersion:
                with lock:
                    conflicts.append(1)
                continue
            with lock:
                results.append((position, 1))

    threads = [threading.Thread(target=append_any, args=(15,)) for _ in range(4)]
    threads += [threading.Thread(target=append_exact, args=(15,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorded = client.get_stream(stream)
    assert [e.stream_position for e in recorded] == list(range(len(recorded)))
    assert len(recorded) == sum(n for _, n in results)
    positions = [e.commit_position for e in recorded]
    assert positions == sorted(set(positions))  # type: ignore[type-var]
    returned = [p for p, _ in results]
    assert len(set(returned)) == len(returned)
    assert set(returned) <= set(positions)
