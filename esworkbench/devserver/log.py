"""The development server's append-only log: in memory, or one file on disk.

On-disk format (all integers little-endian)::

    file    := header frame*
    header  := b"ESWBLOG" + format version b"1" + 8 zero bytes  (16 bytes)
    frame   := u32 payload_length, u32 crc32(payload), payload
    payload := record+ | padding
    record  := u32 record_length, RecordedEvent               (record_length bytes)
    padding := u32 0xFFFFFFFF, zero bytes                     (written by salvage only)

``RecordedEvent`` is a serialized ``event_store.client.streams.ReadResp.ReadEvent.RecordedEvent``
(the generated class in ``esdbclient.protos.Grpc.streams_pb2`` reads it), byte-for-byte what
reads send, so a dump of the file is readable with the client's own message classes.

One frame holds everything one write call commits (the events, plus any ``$metadata`` event
the server writes alongside them), so a frame is the unit of atomicity. A write returns only
after the frame has been written and ``fdatasync``-ed, so every acknowledged append survives
``kill -9``. On open, frames are checked in order:

- a damaged *last* frame (cut short, zeroed, or failing its CRC-32, with no frame after it that
  still verifies) is a torn write from a crash: it was never acknowledged, so it is cut off;
- damage anywhere else is not a torn write, and cutting there would delete acknowledged events
  and let later appends reuse positions clients have already read. Opening fails with
  ``LogDamagedError`` (offset, what is wrong, what still verifies after it) and leaves the file
  untouched; ``salvage`` (``--salvage``) repairs it explicitly.

A frame whose payload starts with ``PADDING`` holds no records: salvage writes such frames over
damaged bytes so that every frame after them keeps its offset, and with it its positions.

The position (commit == prepare) of an event is the file offset of its record, so positions
are byte-offset-like, strictly increasing, never 0 and the same after a restart. The in-memory
log computes the very same offsets without keeping any bytes, so both modes number events
identically.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from esdbclient.protos.Grpc import streams_pb2
from google.protobuf.message import DecodeError

from esworkbench.errors import DevServerError

_log = logging.getLogger(__name__)

MAGIC_PREFIX = b"ESWBLOG"
FORMAT_VERSION = b"1"
MAGIC = MAGIC_PREFIX + FORMAT_VERSION
HEADER = MAGIC + bytes(8)
HEADER_SIZE = len(HEADER)
FRAME_HEADER_SIZE = 8
RECORD_HEADER_SIZE = 4
LOG_FILE_NAME = "events.log"
PADDING = 0xFFFF_FFFF
"""First u32 of a padding frame's payload: no record is that long, so it cannot be misread."""

SALVAGE_HINT = (
    "Restore the log from a backup, or restart the server with --salvage: it copies the log "
    "aside first, then keeps every frame that still verifies (positions unchanged) and lists "
    "exactly what it drops."
)

_FRAME_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")
_PADDING_MARK = _U32.pack(PADDING)
_MIN_PADDING_FRAME = FRAME_HEADER_SIZE + len(_PADDING_MARK)
_MAX_PADDING_FRAME = 1 << 20
# Every record starts with its event id, RecordedEvent.id = UUID{string: 36 characters}
# (the server stores ids in canonical form): tags and lengths 0x0a 0x26 0x12 0x24. A frame
# start after damage is looked for only where these bytes sit, not at every offset.
_RECORD_START = b"\x0a\x26\x12\x24"
_RECORD_START_IN_FRAME = FRAME_HEADER_SIZE + RECORD_HEADER_SIZE
_MAX_NAMED_EVENTS = 5


class LogCorruptError(DevServerError):
    """The log file is not a development-server log, or is damaged before its tail."""


@dataclass(frozen=True, slots=True)
class EventName:
    """Enough of an event to name it in a report of what was damaged or dropped."""

    stream: str
    revision: int
    type: str
    event_id: str

    def __str__(self) -> str:
        return f"{self.stream!r}@{self.revision} {self.type} {self.event_id}"


@dataclass(frozen=True, slots=True)
class Damage:
    """A stretch of the log that does not verify, from a frame boundary to the next good frame.

    Attributes:
        offset: Where the damaged frame starts.
        length: Bytes up to the next frame that verifies (or to the end of the file).
        problem: What is wrong with the frame at ``offset``.
        torn: True if it is the last frame, cut short by a crash: safe to cut off.
        events: The events it appears to hold, as far as they can still be read.
    """

    offset: int
    length: int
    problem: str
    torn: bool
    events: tuple[EventName, ...] = ()

    def describe(self) -> str:
        """``offset N (M bytes): problem (it appears to hold ...)``."""
        text = f"offset {self.offset} ({self.length} bytes): {self.problem}"
        return text + (f" ({holds(self.events)})" if self.events else "")


class LogDamagedError(LogCorruptError):
    """The log is damaged before its last frame: not a torn write, so nothing was cut.

    Attributes:
        path: The log file, left untouched.
        damage: Every damaged stretch, in file order (the first is where reading stopped).
        frames_after: Frames after the first damage that still verify.
        events_after: Events those frames hold.
    """

    def __init__(
        self, path: Path, damage: Sequence[Damage], frames_after: int, events_after: int
    ) -> None:
        self.path = path
        self.damage = tuple(damage)
        self.offset = damage[0].offset
        self.frames_after = frames_after
        self.events_after = events_after
        more = f" ({len(damage)} damaged stretches in all)" if len(damage) > 1 else ""
        super().__init__(
            f"event log {path} is damaged at {damage[0].describe()}. {frames_after} later "
            f"frame(s) holding {events_after} event(s) still verify, so this is not a write "
            f"cut short by a crash{more}; nothing was cut and the file was left untouched. "
            + SALVAGE_HINT
        )


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
    """An append-only log file, fsync-ed per frame and locked against a second server.

    Opening never writes to an existing file: a file that is not a complete log of this format
    version is refused and left as it is.

    Raises:
        DevServerError: The file cannot be opened or is in use by another server.
        LogCorruptError: The file is empty, foreign, or of another format version.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = _open_or_create(path)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DevServerError(
                f"{path} is in use by another development server; stop it or pick another --data"
            ) from None
        try:
            self._end = _check_header(self._fd, path)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def end(self) -> int:
        """Offset of the next frame (the current file size)."""
        return self._end

    def scan(self) -> Iterator[tuple[int, bytes] | Damage]:
        """Yield ``(offset, payload)`` per verified frame and a ``Damage`` per bad stretch.

        Changes nothing. A ``Damage`` with ``torn`` set is always the last item.
        """
        if self._end <= HEADER_SIZE:
            return
        with mmap.mmap(self._fd, self._end, access=mmap.ACCESS_READ) as mm:
            yield from _scan(mm, self._end)

    def read_records(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(position, record)`` for every committed record, cutting off a torn tail.

        Must be called once, right after opening, before any ``append``.

        Raises:
            LogDamagedError: Damage before the last frame; the file is left untouched.
        """
        tail: Damage | None = None
        items = self.scan()
        for item in items:
            if isinstance(item, Damage):
                if item.torn:
                    tail = item
                    break
                raise self._damaged(item, items)
            offset, payload = item
            yield from split_records(payload, offset)
        if tail is not None:
            _log.warning(
                "event log %s: cutting off the last %d bytes at offset %d, a torn last write "
                "(a crash before it was acknowledged): %s",
                self.path,
                tail.length,
                tail.offset,
                tail.problem,
            )
            self.truncate(tail.offset)

    def _damaged(
        self, first: Damage, rest: Iterator[tuple[int, bytes] | Damage]
    ) -> LogDamagedError:
        damage = [first]
        frames = events = 0
        for item in rest:
            if isinstance(item, Damage):
                damage.append(item)
            else:
                frames += 1
                events += sum(1 for _ in split_records(item[1], item[0]))
        return LogDamagedError(self.path, damage, frames, events)

    def append(self, records: Sequence[bytes]) -> None:
        """Write one frame and fdatasync it before returning."""
        parts = []
        for record in records:
            parts.append(_U32.pack(len(record)))
            parts.append(record)
        self._write_at(self._end, _frame(b"".join(parts)))
        _fsync(self._fd)

    def pad(self, offset: int, length: int) -> None:
        """Overwrite ``length`` bytes at ``offset`` with padding frames, and fdatasync.

        Frames after the stretch keep their offsets (the positions of their events).
        """
        if length < _MIN_PADDING_FRAME:
            raise LogCorruptError(
                f"cannot pad {length} bytes at offset {offset} of {self.path}: a padding frame "
                f"needs {_MIN_PADDING_FRAME}"
            )
        while length:
            size = min(length, _MAX_PADDING_FRAME)
            if 0 < length - size < _MIN_PADDING_FRAME:
                size -= _MIN_PADDING_FRAME  # leave room for one more padding frame
            payload = _PADDING_MARK + bytes(size - _MIN_PADDING_FRAME)
            self._write_at(offset, _frame(payload), extend=False)
            offset += size
            length -= size
        _fsync(self._fd)

    def truncate(self, offset: int) -> None:
        """Cut the file at ``offset`` (a frame boundary), durably."""
        os.ftruncate(self._fd, offset)
        _fsync(self._fd)
        self._end = offset

    def copy_to(self, destination: Path) -> None:
        """Copy the file, as it is now, to a new file ``destination`` (never overwritten)."""
        with os.fdopen(os.dup(self._fd), "rb") as src, destination.open("xb") as dst:
            src.seek(0)
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        _fsync_dir(destination.parent)

    def close(self) -> None:
        """Close the file (which also drops the lock)."""
        os.close(self._fd)

    def _write_at(self, offset: int, data: bytes, *, extend: bool = True) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written
        if extend:
            self._end = max(self._end, offset)


def split_records(payload: bytes, frame_offset: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(position, record)`` for the records of a verified frame (none for padding).

    Raises:
        LogCorruptError: A record runs past the end of its frame.
    """
    if payload.startswith(_PADDING_MARK):
        return
    view = memoryview(payload)
    i = 0
    while i < len(payload):
        if i + RECORD_HEADER_SIZE > len(payload):
            raise LogCorruptError(
                f"record header overruns the frame at offset {frame_offset}. {SALVAGE_HINT}"
            )
        (size,) = _U32.unpack_from(view, i)
        start = i + RECORD_HEADER_SIZE
        if start + size > len(payload):
            raise LogCorruptError(
                f"record overruns the frame at offset {frame_offset}. {SALVAGE_HINT}"
            )
        yield frame_offset + FRAME_HEADER_SIZE + i, bytes(view[start : start + size])
        i = start + size


def parse_record(position: int, record: bytes) -> streams_pb2.ReadResp.ReadEvent.RecordedEvent:
    """Decode one record and check that it sits where it says it does.

    Raises:
        LogCorruptError: It does not decode, or claims another position.
    """
    try:
        msg: streams_pb2.ReadResp.ReadEvent.RecordedEvent = (
            streams_pb2.ReadResp.ReadEvent.RecordedEvent.FromString(record)
        )
    except DecodeError as e:
        raise LogCorruptError(f"the record at offset {position} does not decode: {e}") from None
    if msg.commit_position != position:
        raise LogCorruptError(f"record at offset {position} claims position {msg.commit_position}")
    return msg


def name_event(msg: streams_pb2.ReadResp.ReadEvent.RecordedEvent) -> EventName:
    """The name of a decoded record."""
    return EventName(
        msg.stream_identifier.stream_name.decode("utf-8", "replace"),
        msg.stream_revision,
        msg.metadata["type"],
        msg.id.string,
    )


def holds(events: Sequence[EventName]) -> str:
    """``it appears to hold N event(s): a, b, ...`` (at most a few named)."""
    named = ", ".join(str(e) for e in events[:_MAX_NAMED_EVENTS])
    more = f" and {len(events) - _MAX_NAMED_EVENTS} more" if len(events) > _MAX_NAMED_EVENTS else ""
    return f"it appears to hold {len(events)} event(s): {named}{more}"


def _frame(payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _open_or_create(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise DevServerError(
            f"cannot open the event log {path}: {e.strerror}; check the path and its permissions"
        ) from e
    try:
        _create(path)
        return os.open(path, os.O_RDWR)
    except OSError as e:
        raise DevServerError(
            f"cannot create the event log {path}: {e.strerror}; check the directory's permissions"
        ) from e


def _create(path: Path) -> None:
    # The header is written to a temporary file and linked into place, so the log appears
    # complete or not at all: an empty or short events.log is never one of ours, and is refused.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    try:
        os.write(fd, HEADER)
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another server created it first: open theirs
        except OSError:
            # No hard links on this file system: create in place (exclusively, never over a file).
            new = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(new, HEADER)
                os.fsync(new)
            finally:
                os.close(new)
    finally:
        os.unlink(tmp)
    _fsync_dir(path.parent)


def _check_header(fd: int, path: Path) -> int:
    size = os.fstat(fd).st_size
    keep = "It was left untouched: move it away, or choose another --data directory."
    if size < HEADER_SIZE:
        raise LogCorruptError(
            f"{path} is not a development-server event log: it holds {size} byte(s), less "
            f"than the {HEADER_SIZE}-byte header every log starts with (a log that an older "
            f"version began to create when it crashed holds no events, and can be deleted). " + keep
        )
    head = os.pread(fd, HEADER_SIZE, 0)
    if not head.startswith(MAGIC_PREFIX):
        raise LogCorruptError(
            f"{path} is not a development-server event log: it starts with {head[:8]!r}, "
            f"not {MAGIC!r}. " + keep
        )
    version = head[len(MAGIC_PREFIX) : len(MAGIC)]
    if version != FORMAT_VERSION:
        raise LogCorruptError(
            f"{path} was written in event-log format version "
            f"{version.decode('ascii', 'replace')!r}; this server reads only version "
            f"{FORMAT_VERSION.decode()!r}. Serve it with the esworkbench version that wrote it. "
            + keep
        )
    if head[len(MAGIC) :] != bytes(HEADER_SIZE - len(MAGIC)):
        raise LogCorruptError(
            f"{path} has header flags this server does not know ({head[len(MAGIC) :].hex()}): "
            "written by another version, or a damaged header. " + keep
        )
    return size


def _scan(mm: mmap.mmap, end: int) -> Iterator[tuple[int, bytes] | Damage]:
    offset = HEADER_SIZE
    while offset < end:
        payload, problem, declared = _frame_at(mm, offset, end)
        if payload is not None:
            yield offset, payload
            offset += FRAME_HEADER_SIZE + len(payload)
            continue
        resume = _resync(mm, offset, declared, end)
        # A crash tears only the frame being written, the last one: its header is cut short
        # or never reached the disk (zeros), or its declared extent reaches the end of the file.
        last_frame = not declared or offset + FRAME_HEADER_SIZE + declared >= end
        stop = end if resume is None else resume
        yield Damage(
            offset,
            stop - offset,
            problem,
            torn=resume is None and last_frame,
            events=_readable_events(mm, offset, stop),
        )
        if resume is None:
            return
        offset = resume


def _frame_at(mm: mmap.mmap, offset: int, end: int) -> tuple[bytes | None, str, int | None]:
    """``(payload, "", length)`` if a frame verifies at ``offset``, else ``(None, why, length)``."""
    left = end - offset
    if left < FRAME_HEADER_SIZE:
        return None, f"a frame header cut short ({left} of {FRAME_HEADER_SIZE} bytes)", None
    length, crc = _FRAME_HEADER.unpack_from(mm, offset)
    if length == 0:
        return None, "a zero frame header (the frame never reached the disk)", 0
    if FRAME_HEADER_SIZE + length > left:
        return (
            None,
            f"a frame header declaring {length} bytes, more than the "
            f"{left - FRAME_HEADER_SIZE} left in the file",
            length,
        )
    payload = mm[offset + FRAME_HEADER_SIZE : offset + FRAME_HEADER_SIZE + length]
    if zlib.crc32(payload) != crc:
        return None, f"a frame of {length} bytes that fails its CRC-32 checksum", length
    return payload, "", length


def _resync(mm: mmap.mmap, damaged: int, declared: int | None, end: int) -> int | None:
    """The offset of the next frame after ``damaged`` that verifies, or None."""
    if declared:
        natural = damaged + FRAME_HEADER_SIZE + declared
        if natural < end and _is_frame_start(mm, natural, end):
            return natural
    at = mm.find(_RECORD_START, damaged + 1 + _RECORD_START_IN_FRAME, end)
    while at >= 0:
        candidate = at - _RECORD_START_IN_FRAME
        if _is_frame_start(mm, candidate, end):
            return candidate
        at = mm.find(_RECORD_START, at + 1, end)
    return None


def _is_frame_start(mm: mmap.mmap, offset: int, end: int) -> bool:
    # Beyond the checksum, the first record must name this very offset as its position: bytes
    # that merely look like a frame (inside an event's data, say) never do.
    payload, _, _ = _frame_at(mm, offset, end)
    if payload is None or payload.startswith(_PADDING_MARK):
        return False
    try:
        position, record = next(split_records(payload, offset))
        parse_record(position, record)
    except (LogCorruptError, StopIteration):
        return False
    return True


def _readable_events(mm: mmap.mmap, start: int, stop: int) -> tuple[EventName, ...]:
    """The events whose records still decode, in place, in a damaged stretch (best effort)."""
    found = []
    at = mm.find(_RECORD_START, start + RECORD_HEADER_SIZE, stop)
    while at >= 0:
        position = at - RECORD_HEADER_SIZE
        (size,) = _U32.unpack_from(mm, position)
        if at + size <= stop:
            with contextlib.suppress(LogCorruptError):
                found.append(name_event(parse_record(position, mm[at : at + size])))
        at = mm.find(_RECORD_START, at + 1, stop)
    return tuple(found)


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
