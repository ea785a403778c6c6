"""Salvaging a damaged event log (``--salvage``): copy it aside, keep what still verifies.

Opening a log that is damaged before its last frame fails and leaves the file alone (see
``log``). Salvage is the explicit way on, for a user who has no better copy:

1. copy the log, byte for byte, to ``events.log.damaged-<UTC time>`` beside it;
2. overwrite each damaged stretch with padding frames, so every frame after it keeps its
   offset and its events keep the positions clients have already seen;
3. drop (pad over) every intact frame that can no longer be replayed because an event of its
   stream was lost before it: stream revisions must follow one another, so ``s@7`` cannot be
   kept once ``s@6`` is gone. A frame is one write, so it goes whole;
4. cut off a torn last frame, as a normal start does.

The report names every dropped stretch by offset and length, and every event in it that can
still be read. Stream revisions lost at the end of a stream will be reused by new appends:
the report says which streams lost events.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

from esworkbench.devserver.log import (
    Damage,
    EventName,
    FileLog,
    LogCorruptError,
    holds,
    name_event,
    parse_record,
    split_records,
)
from esworkbench.devserver.records import MAX_REVISION

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Dropped:
    """One stretch of the log that salvage padded over or cut off.

    Attributes:
        offset: Where it starts.
        length: How many bytes it spans.
        reason: Why it was dropped.
        events: The events it held, as far as they could be read.
    """

    offset: int
    length: int
    reason: str
    events: tuple[EventName, ...]

    def describe(self) -> str:
        """One line: where, how long, why, and what it held."""
        text = f"offset {self.offset} ({self.length} bytes): {self.reason}"
        return text + (f"; {holds(self.events)}" if self.events else "")


@dataclass(frozen=True, slots=True)
class SalvageReport:
    """What ``salvage`` did to a log.

    Attributes:
        path: The log.
        copy: Where the log was copied before any change (None: nothing needed changing).
        dropped: Every stretch dropped, in file order.
        kept_frames: Frames kept.
        kept_events: Events those frames hold.
        streams_with_losses: Streams that lost at least one readable event.
    """

    path: Path
    copy: Path | None
    dropped: tuple[Dropped, ...]
    kept_frames: int
    kept_events: int
    streams_with_losses: tuple[str, ...]

    def summary(self) -> str:
        """A few lines for the terminal and the log.

        Example:
            >>> SalvageReport(Path("events.log"), None, (), 3, 5, ()).summary()
            'salvage: events.log verifies throughout (3 frames, 5 events); nothing changed'
        """
        if self.copy is None:
            return (
                f"salvage: {self.path} verifies throughout ({self.kept_frames} frames, "
                f"{self.kept_events} events); nothing changed"
            )
        lines = [
            f"salvage: copied {self.path} to {self.copy} before changing it; kept "
            f"{self.kept_frames} frames holding {self.kept_events} events at their positions; "
            f"dropped {len(self.dropped)} stretch(es):"
        ]
        lines += [f"  {d.describe()}" for d in self.dropped]
        if self.streams_with_losses:
            lines.append(
                "  streams that lost events (new appends continue after their last kept "
                f"revision): {', '.join(repr(s) for s in self.streams_with_losses)}"
            )
        return "\n".join(lines)


def salvage_log(log: FileLog) -> SalvageReport:
    """Repair ``log`` in place after copying it aside; see the module docstring.

    Call it right after opening, before ``read_records``. A log that verifies throughout is
    left as it is, and not copied.

    Raises:
        OSError: The copy or a write failed (the copy is made before any write).
    """
    dropped: list[Dropped] = []
    tail: Damage | None = None
    next_revision: dict[str, int] = {}
    lost_streams: dict[str, None] = {}
    kept_frames = kept_events = 0
    for item in log.scan():
        if isinstance(item, Damage):
            reason = ("a torn last write: " if item.torn else "") + item.problem
            dropped.append(Dropped(item.offset, item.length, reason, item.events))
            if item.torn:
                tail = item
            for event in item.events:
                lost_streams[event.stream] = None
            continue
        offset, payload = item
        names, problem = _replayable(offset, payload, next_revision)
        if problem is None:
            kept_frames += 1
            kept_events += len(names)
            continue
        dropped.append(Dropped(offset, len(payload) + 8, problem, tuple(names)))
        for event in names:
            lost_streams[event.stream] = None
    if not dropped:
        return SalvageReport(log.path, None, (), kept_frames, kept_events, ())
    copy = _copy_aside(log)
    for d in dropped:
        if tail is None or d.offset != tail.offset:
            log.pad(d.offset, d.length)
    if tail is not None:
        log.truncate(tail.offset)
    report = SalvageReport(
        log.path, copy, tuple(dropped), kept_frames, kept_events, tuple(lost_streams)
    )
    _log.warning("%s", report.summary())
    return report


def _replayable(
    offset: int, payload: bytes, next_revision: dict[str, int]
) -> tuple[list[EventName], str | None]:
    """``(events, problem)`` for one verified frame; if there is no problem, advance revisions.

    Mirrors what the store checks when it loads records, so a salvaged log always loads.
    """
    names: list[EventName] = []
    wanted: dict[str, int] = {}
    problem: str | None = None
    try:
        for position, record in split_records(payload, offset):
            msg = parse_record(position, record)
            names.append(name_event(msg))
            stream = msg.stream_identifier.stream_name.decode()
            int(msg.metadata["created"])
            revision = msg.stream_revision
            if revision == MAX_REVISION:  # a tombstone
                continue
            expected = wanted.get(stream, next_revision.get(stream, 0))
            if revision != expected and problem is None:
                problem = (
                    f"an intact frame, but stream {stream!r} continues at revision {revision} "
                    f"where {expected} was expected: the events between were lost in damage "
                    "before it"
                )
            wanted[stream] = revision + 1
    except (LogCorruptError, UnicodeDecodeError, ValueError) as e:
        return names, f"an intact frame whose records cannot be replayed: {e}"
    if problem is None:
        next_revision.update(wanted)
    return names, problem


def _copy_aside(log: FileLog) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = log.path.with_name(f"{log.path.name}.damaged-{stamp}")
    copy, n = base, 1
    while True:
        try:
            log.copy_to(copy)
            return copy
        except FileExistsError:
            n += 1
            copy = base.with_name(f"{base.name}-{n}")
