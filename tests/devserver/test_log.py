"""The on-disk log: framing, positions as offsets, and recovery from torn writes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from esdbclient.protos.Grpc import streams_pb2

from esworkbench.devserver.log import HEADER, LOG_FILE_NAME, FileLog, MemoryLog
from esworkbench.devserver.records import ANY, ProposedEvent
from esworkbench.devserver.server import open_store
from esworkbench.devserver.store import EventStore
from esworkbench.errors import DevServerError


def proposed(i: int, size: int = 10) -> ProposedEvent:
    return ProposedEvent(
        event_id=f"00000000-0000-4000-8000-{i:012d}",
        type="Happened",
        is_json=True,
        custom_metadata=b"",
        data=b"x" * size,
    )


def fixed_clock() -> int:
    return 1_700_000_000_000_000_000


def write(store: EventStore, batches: list[list[int]]) -> list[int]:
    for batch in batches:
        store.append("s", ANY, [proposed(i) for i in batch])
    return [e.position for e in store.events]


def test_positions_are_offsets_of_records_in_the_file(tmp_path: Path) -> None:
    log = FileLog(tmp_path / LOG_FILE_NAME)
    store = EventStore(log, seed=False, clock_ns=fixed_clock)
    positions = write(store, [[1, 2], [3]])
    store.close()
    raw = (tmp_path / LOG_FILE_NAME).read_bytes()
    assert raw.startswith(HEADER)
    for position, stored in zip(positions, store.events, strict=True):
        (length,) = struct.unpack_from("<I", raw, position)
        record = streams_pb2.ReadResp.ReadEvent.RecordedEvent.FromString(
            raw[position + 4 : position + 4 + length]
        )
        assert record.commit_position == record.prepare_position == position
        assert record.id.string == stored.event_id


def test_memory_and_file_logs_number_events_identically(tmp_path: Path) -> None:
    batches = [[1, 2, 3], [4], [5, 6]]
    in_memory = write(EventStore(MemoryLog(), seed=False, clock_ns=fixed_clock), batches)
    on_disk = EventStore(FileLog(tmp_path / LOG_FILE_NAME), seed=False, clock_ns=fixed_clock)
    assert write(on_disk, batches) == in_memory
    on_disk.close()


def reopen(path: Path) -> list[str]:
    store = open_store(path)
    try:
        return [e.event_id for e in store.events if e.stream == "s"]
    finally:
        store.close()


@pytest.fixture
def two_frames(tmp_path: Path) -> tuple[Path, int]:
    store = open_store(tmp_path)
    store.append("s", ANY, [proposed(1), proposed(2)])
    end_of_first = (tmp_path / LOG_FILE_NAME).stat().st_size
    store.append("s", ANY, [proposed(3), proposed(4)])
    store.close()
    return tmp_path, end_of_first


@pytest.mark.parametrize("cut", [1, 7, 8, 20, 60])
def test_a_torn_last_frame_is_dropped_whole(two_frames: tuple[Path, int], cut: int) -> None:
    path, end_of_first = two_frames
    log_file = path / LOG_FILE_NAME
    data = log_file.read_bytes()
    log_file.write_bytes(data[: len(data) - cut])
    assert reopen(path) == [proposed(1).event_id, proposed(2).event_id]
    assert log_file.stat().st_size == end_of_first


def test_a_corrupt_last_frame_is_dropped(two_frames: tuple[Path, int]) -> None:
    path, end_of_first = two_frames
    log_file = path / LOG_FILE_NAME
    data = bytearray(log_file.read_bytes())
    data[-3] ^= 0xFF
    log_file.write_bytes(bytes(data))
    assert len(reopen(path)) == 2
    assert log_file.stat().st_size == end_of_first


def test_trailing_garbage_is_dropped_and_writing_resumes(two_frames: tuple[Path, int]) -> None:
    path, _ = two_frames
    log_file = path / LOG_FILE_NAME
    intact = log_file.stat().st_size
    with log_file.open("ab") as f:
        f.write(b"\xff\x00\x00\x00garbage")
    store = open_store(path)
    assert log_file.stat().st_size == intact
    store.append("s", ANY, [proposed(5)])
    store.close()
    assert len(reopen(path)) == 5


def test_a_header_cut_short_is_a_new_log(tmp_path: Path) -> None:
    (tmp_path / LOG_FILE_NAME).write_bytes(HEADER[:5])
    store = open_store(tmp_path)
    assert store.events  # seeded afresh
    store.close()


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOG_FILE_NAME).write_bytes(b"this is not an event log at all")
    with pytest.raises(DevServerError, match="not a development-server event log"):
        open_store(tmp_path)
