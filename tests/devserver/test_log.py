"""The on-disk log: framing, positions as offsets, and recovery from torn writes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from esdbclient.protos.Grpc import streams_pb2

from esworkbench.devserver.log import HEADER, LOG_FILE_NAME, FileLog, LogDamagedError, MemoryLog
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


# -- files that are not logs of this version: refused, never overwritten --------------------


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"", "holds 0 byte"),
        (HEADER[:5], "holds 5 byte"),
        (b"this is not an event log at all", "not a development-server event log"),
        (b"ESWBLOG2" + bytes(8) + b"frames of a future format", "format version '2'"),
        (HEADER[:8] + b"\x01" + bytes(7), "header flags"),
    ],
    ids=["empty", "short", "foreign", "other-version", "unknown-flags"],
)
def test_a_file_that_is_not_a_log_of_this_version_is_refused_untouched(
    tmp_path: Path, content: bytes, complaint: str
) -> None:
    log_file = tmp_path / LOG_FILE_NAME
    log_file.write_bytes(content)
    with pytest.raises(DevServerError, match=complaint) as info:
        open_store(tmp_path)
    assert "left untouched" in str(info.value)
    assert log_file.read_bytes() == content


def test_a_new_log_appears_with_its_whole_header(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    assert (tmp_path / LOG_FILE_NAME).read_bytes().startswith(HEADER)
    assert [p.name for p in tmp_path.iterdir()] == [LOG_FILE_NAME]  # no temporary file left


# -- damage before the last frame: refused, nothing cut ----------------------------------------


@pytest.fixture
def three_frames(tmp_path: Path) -> tuple[Path, list[int]]:
    """A log of three appends to "s" (two events each); returns the frames' offsets."""
    store = open_store(tmp_path)
    offsets = []
    for first in (1, 3, 5):
        offsets.append((tmp_path / LOG_FILE_NAME).stat().st_size)
        store.append("s", ANY, [proposed(first), proposed(first + 1)])
    store.close()
    return tmp_path, offsets


def damage(log_file: Path, at: int, xor: int = 0x55) -> bytes:
    """Flip bits of one byte; return the file's bytes after the damage."""
    data = bytearray(log_file.read_bytes())
    data[at] ^= xor
    log_file.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        (30, "fails its CRC-32 checksum"),  # inside the payload
        (5, "fails its CRC-32 checksum"),  # the checksum itself
        (3, "more than the"),  # the length's high byte: runs past the end of the file
        (0, "fails its CRC-32 checksum"),  # the length's low byte: a shorter frame
    ],
    ids=["payload", "checksum", "length-too-long", "length-too-short"],
)
def test_one_flipped_byte_in_a_middle_frame_refuses_to_open_and_cuts_nothing(
    three_frames: tuple[Path, list[int]], where: int, problem: str
) -> None:
    path, offsets = three_frames
    log_file = path / LOG_FILE_NAME
    damaged = damage(log_file, offsets[1] + where)
    with pytest.raises(LogDamagedError, match=problem) as info:
        open_store(path)
    error = info.value
    assert error.offset == offsets[1]
    assert f"damaged at offset {offsets[1]} " in str(error)
    assert (error.frames_after, error.events_after) == (1, 2)
    assert "--salvage" in str(error) and "left untouched" in str(error)
    assert log_file.read_bytes() == damaged


def test_the_error_names_the_events_the_damaged_frame_appears_to_hold(
    three_frames: tuple[Path, list[int]],
) -> None:
    path, offsets = three_frames
    damage(path / LOG_FILE_NAME, offsets[1] + 5)  # the checksum: the records still decode
    with pytest.raises(LogDamagedError) as info:
        open_store(path)
    assert f"'s'@2 Happened {proposed(3).event_id}" in str(info.value)
    assert f"'s'@3 Happened {proposed(4).event_id}" in str(info.value)


def test_a_zeroed_header_in_the_middle_is_damage_not_a_torn_write(
    three_frames: tuple[Path, list[int]],
) -> None:
    path, offsets = three_frames
    log_file = path / LOG_FILE_NAME
    data = bytearray(log_file.read_bytes())
    data[offsets[1] : offsets[1] + 8] = bytes(8)
    log_file.write_bytes(bytes(data))
    with pytest.raises(LogDamagedError, match="zero frame header"):
        open_store(path)
    assert log_file.read_bytes() == bytes(data)


def test_a_damaged_frame_with_more_bytes_after_it_is_not_a_torn_write(
    three_frames: tuple[Path, list[int]],
) -> None:
    # A crash tears only the frame being written; the one before it was fsync-ed first.
    path, offsets = three_frames
    log_file = path / LOG_FILE_NAME
    damage(log_file, offsets[1] + 30)
    data = log_file.read_bytes()
    log_file.write_bytes(data[:-5])  # and the last frame torn as well
    with pytest.raises(LogDamagedError):
        open_store(path)
    assert log_file.read_bytes() == data[:-5]


def test_a_zeroed_tail_is_a_torn_write(three_frames: tuple[Path, list[int]]) -> None:
    # A crash can leave the file longer with the last write's blocks never written (zeros).
    path, _ = three_frames
    log_file = path / LOG_FILE_NAME
    intact = log_file.stat().st_size
    with log_file.open("ab") as f:
        f.write(bytes(40))
    assert len(reopen(path)) == 6
    assert log_file.stat().st_size == intact
