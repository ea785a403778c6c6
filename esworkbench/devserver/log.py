"""The development server's append-only log: in memory, or one file on disk.

On-disk format (all integers little-endian)::

    file    := header frame*
    header  := b"ESWBLOG1" + 8 zero bytes                      (16 bytes)
    frame   := u32 payload_length, u32 crc32(payload), payload
    payload := record+
    record  := u32 record_length, RecordedEvent               (record_length bytes)

``RecordedEvent`` is a serialized ``event_store.client.streams.ReadResp.ReadEvent.RecordedEvent``
(the generated class in ``esdbclient.protos.Grpc.streams_pb2`` reads it), byte-for-byte what
reads send, so a dump of the file is readable with the client's own message classes.

One frame holds everything one write call commits (the events, plus any ``$metadata`` event
the server writes alongside them), so a frame is the unit of atomicity: on open, a frame that
is incomplete or fails its CRC-32 is a torn write from a crash, and it and everything after it
are truncated away. A write returns only after the frame has been written and ``fdatasync``-ed,
so every acknowledged append survives ``kill -9``.

The position (commit == prepare) of an event is the file offset of its record, so positions
are byte-offset-like, strictly increasing, never 0 and the same after a restart. The in-memory
log computes the very same offsets without keeping any bytes, so both modes number events
identically.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from esworkbench.errors import DevServerError

_log = logging.getLogger(__name__)

MAGIC = b"ESWBLOG1"
HEADER = MAGIC + bytes(8)
HEADER_SIZE = len(HEADER)
FRAME_HEADER_SIZE = 8
RECORD_HEADER_SIZE = 4
LOG_FILE_NAME = "events.log"

_FRAME_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")


class LogCorruptError(DevServerError):
    """The log file is not a development-server log, or is damaged before its tail."""


class EventLog(Protocol):
    """Where committed frames go. ``end`` is the offset the next frame will start at."""

    @property
    def end(self) -> int:
        """Offset of the next frame."""
        ...

    def append(self, records: Sequence[bytes]) -> None:
        """Durably commit one frame holding ``records``."""
        ...

    def close(self) -> None:
        """Release the log."""
        ...


def record_positions(frame_start: int, sizes: Sequence[int]) -> list[int]:
    """Positions of records of the given sizes in a frame starting at ``frame_start``."""
    positions = []
    offset = frame_start + FRAME_HEADER_SIZE
    for size in sizes:
        positions.append(offset)
        offset += RECORD_HEADER_SIZE + size
    return positions


class MemoryLog:
    """A log that keeps nothing: the store's in-memory index is the only copy."""

    def __init__(self) -> None:
        self._end = HEADER_SIZE

    @property
    def end(self) -> int:
        """Offset of the next frame, as if the log were a file."""
        return self._end

    def append(self, records: Sequence[bytes]) -> None:
        """Advance the end offset exactly as a file write would."""
        self._end += FRAME_HEADER_SIZE + sum(RECORD_HEADER_SIZE + len(r) for r in records)

    def close(self) -> None:
        """Nothing to release."""


class FileLog:
    """An append-only log file, fsync-ed per frame and locked against a second server."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise LogCorruptError(
                f"{path} is in use by another development server; stop it or pick another --data"
            ) from None
        size = os.fstat(self._fd).st_size
        if size < HEADER_SIZE:
            # A new log, or a crash while the header was being written: nothing was committed.
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, HEADER, 0)
            _fsync(self._fd)
            _fsync_dir(path.parent)
            size = HEADER_SIZE
        elif os.pread(self._fd, HEADER_SIZE, 0)[: len(MAGIC)] != MAGIC:
            os.close(self._fd)
            raise LogCorruptError(f"{path} is not a development-server event log")
        self._end = size

    @property
    def end(self) -> int:
        """Offset of the next frame (the current file size)."""
        return self._end

    def read_records(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(position, record)`` for every committed record, truncating a torn tail.

        Must be called once, right after opening, before any ``append``.
        """
        with os.fdopen(os.dup(self._fd), "rb") as f:
            f.seek(HEADER_SIZE)
            offset = HEADER_SIZE
            while True:
                payload = _read_frame(f, offset, self._end)
                if payload is None:
                    break
                yield from _split_records(payload, offset)
                offset += FRAME_HEADER_SIZE + len(payload)
        if offset < self._end:
            _log.warning(
                "event log %s: dropping %d bytes of an incomplete write at offset %d",
                self.path,
                self._end - offset,
                offset,
            )
            os.ftruncate(self._fd, offset)
            _fsync(self._fd)
            self._end = offset

    def append(self, records: Sequence[bytes]) -> None:
        """Write one frame and fdatasync it before returning."""
        parts = []
        for record in records:
            parts.append(_U32.pack(len(record)))
            parts.append(record)
        payload = b"".join(parts)
        frame = _FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        view = memoryview(frame)
        offset = self._end
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written
        _fsync(self._fd)
        self._end = offset

    def close(self) -> None:
        """Close the file (which also drops the lock)."""
        os.close(self._fd)


def _read_frame(f: BinaryIO, offset: int, end: int) -> bytes | None:
    header = f.read(FRAME_HEADER_SIZE)
    if len(header) < FRAME_HEADER_SIZE:
        return None
    length, crc = _FRAME_HEADER.unpack(header)
    if offset + FRAME_HEADER_SIZE + length > end:
        return None
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    return payload


def _split_records(payload: bytes, frame_offset: int) -> Iterator[tuple[int, bytes]]:
    view = memoryview(payload)
    i = 0
    while i < len(payload):
        if i + RECORD_HEADER_SIZE > len(payload):
            raise LogCorruptError(f"record header overruns the frame at offset {frame_offset}")
        (size,) = _U32.unpack_from(view, i)
        start = i + RECORD_HEADER_SIZE
        if start + size > len(payload):
            raise LogCorruptError(f"record overruns the frame at offset {frame_offset}")
        yield frame_offset + FRAME_HEADER_SIZE + i, bytes(view[start : start + size])
        i = start + size


def _fsync(fd: int) -> None:
    # fdatasync also persists the file size, which is all a reader needs after a crash.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS
        os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
