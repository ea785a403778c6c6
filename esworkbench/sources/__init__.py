"""Where events come from: the `EventSource` protocol, its batches, and the filters sources share.

A source yields `SourceBatch`es: a ``RAW_SCHEMA`` record batch (payload bytes untouched, possibly
empty) and the commit position through which the source has looked. The lake commits each batch
with that checkpoint in one transaction, so a filtered read that matches nothing still moves the
cursor, and a rerun resumes after it.

Implementations: `esworkbench.sources.esdb.EsdbSource` (EventStoreDB, fast and plain readers,
follow mode) and `esworkbench.sources.files` (JSONL(.gz) and Parquet archives).

Example:
    >>> f = EventFilter.of(stream_prefix="user-", event_types=["BalanceDeposited"])
    >>> f.describe()
    "stream_prefix='user-' event_types=['BalanceDeposited']"
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from esworkbench.config import mask_uri
from esworkbench.errors import ConfigError
from esworkbench.events import RAW_SCHEMA

__all__ = [
    "SYSTEM_EVENT_TYPE_REGEX",
    "EventFilter",
    "EventSource",
    "FilterOptions",
    "SourceBatch",
    "SupportsCancel",
    "SupportsHead",
    "concat_batches",
    "empty_raw_batch",
    "open_source",
]

# EventStoreDB's own default exclusion (esdbclient's DEFAULT_EXCLUDE_FILTER): system-typed events
# ($metadata, $streamDeleted, $> links, ...) and persistent-subscription config events. User
# events in `$`-named streams are kept, as the server does.
SYSTEM_EVENT_TYPE_REGEX = r"^(\$.+|PersistentConfig\d+)$"


class FilterOptions(TypedDict, total=False):
    """The filter keywords every read_* / scan_* / iter_* method takes (see EventFilter)."""

    streams: str | Iterable[str] | None
    stream_prefix: str | None
    stream_regex: str | None
    category: str | None
    event_types: str | Iterable[str] | None
    from_position: int | None
    to_position: int | None
    since: datetime | str | None
    until: datetime | str | None
    include_system: bool


@dataclasses.dataclass(frozen=True, slots=True)
class SourceBatch:
    """One batch from a source.

    Attributes:
        events: ``RAW_SCHEMA`` rows, in commit-position order; may be empty.
        checkpoint: the commit position through which the source has looked (every event at or
            before it that matches the source's filters is in this or an earlier batch), or
            None when the source cannot promise that yet (the lake then keeps its cursor).
    """

    events: pa.RecordBatch
    checkpoint: int | None


@runtime_checkable
class EventSource(Protocol):
    """Anything the lake can sync from.

    Example:
        >>> from esworkbench.sources.files import open_archive
        >>> isinstance(open_archive("data/sample/ledger.jsonl.gz"), EventSource)
        True
    """

    @property
    def key(self) -> str:
        """Stable identity of the source and its filters (credentials masked): the lake's
        `_checkpoints` key. Two sources with the same key must read the same events."""
        ...

    def describe(self) -> str:
        """A one-line, credential-free description for `_sync_runs` and progress output."""
        ...

    def read_batches(self, after: int | None, *, batch_size: int) -> Iterator[SourceBatch]:
        """Batches of events with commit position > `after` (None = from the start)."""
        ...


@runtime_checkable
class SupportsHead(Protocol):
    """A source that can tell where the log ends now (used for progress ETAs)."""

    def head_position(self) -> int | None: ...


@runtime_checkable
class SupportsCancel(Protocol):
    """A source whose blocked `read_batches` can be interrupted from another thread."""

    def cancel(self) -> None: ...


def empty_raw_batch() -> pa.RecordBatch:
    """A RAW_SCHEMA batch with no rows."""
    return pa.RecordBatch.from_pylist([], schema=RAW_SCHEMA)


def _utc(value: datetime | str | None, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(
                f"{name} must be an ISO 8601 time such as '2024-01-31T00:00:00Z', got {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise ConfigError(f"{name} must be a datetime or ISO 8601 string, got {value!r}")
    # Naive times are taken as UTC: `created` is UTC throughout the lake.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _names(value: str | Iterable[str] | None, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else tuple(value)
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{name} must be one or more non-empty strings, got {value!r}")
    return tuple(dict.fromkeys(items))


def _position(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a commit position (an integer >= 0), got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EventFilter:
    """Which events to read: the same filters for sources and for the lake's read_* methods.

    All given conditions must hold. Stream conditions: `streams` (exact names), `stream_prefix`,
    `stream_regex` (RE2 syntax, matched anywhere in the name), `category` (the stream name before
    the first '-'). `event_types`: exact stored type names. Positions are commit positions,
    both ends inclusive. `since` (inclusive) and `until` (exclusive) bound `created`, the write
    time (naive datetimes are UTC). System events (types `$...` and `PersistentConfigN`) are
    left out unless `include_system`.

    Example:
        >>> EventFilter.of(category="user", from_position=100).describe()
        "category='user' from_position=100"
    """

    streams: tuple[str, ...] | None = None
    stream_prefix: str | None = None
    stream_regex: str | None = None
    category: str | None = None
    event_types: tuple[str, ...] | None = None
    from_position: int | None = None
    to_position: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    include_system: bool = False

    @classmethod
    def of(
        cls,
        *,
        streams: str | Iterable[str] | None = None,
        stream_prefix: str | None = None,
        stream_regex: str | None = None,
        category: str | None = None,
        event_types: str | Iterable[str] | None = None,
        from_position: int | None = None,
        to_position: int | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        include_system: bool = False,
    ) -> EventFilter:
        """A validated filter; bad values raise ConfigError naming the option.

        Example:
            >>> EventFilter.of(event_types="UserCreated").event_types
            ('UserCreated',)
        """
        if stream_regex is not None:
            try:
                re.compile(stream_regex)
                pc.match_substring_regex(pa.array([""]), stream_regex)
            except (re.error, pa.ArrowInvalid) as e:
                raise ConfigError(
                    f"stream_regex {stream_regex!r} is not a valid regular expression ({e}); "
                    "use RE2 syntax (no look-around or back-references)"
                ) from None
        for name, text in (("stream_prefix", stream_prefix), ("category", category)):
            if text is not None and (not isinstance(text, str) or not text):
                raise ConfigError(f"{name} must be a non-empty string, got {text!r}")
        f = cls(
            streams=_names(streams, "streams"),
            stream_prefix=stream_prefix,
            stream_regex=stream_regex,
            category=category,
            event_types=_names(event_types, "event_types"),
            from_position=_position(from_position, "from_position"),
            to_position=_position(to_position, "to_position"),
            since=_utc(since, "since"),
            until=_utc(until, "until"),
            include_system=bool(include_system),
        )
        if (
            f.from_position is not None
            and f.to_position is not None
            and (f.from_position > f.to_position)
        ):
            raise ConfigError(
                f"from_position ({f.from_position}) is after to_position ({f.to_position})"
            )
        if f.since is not None and f.until is not None and f.since >= f.until:
            raise ConfigError(
                f"since ({f.since.isoformat()}) must be before until ({f.until.isoformat()})"
            )
        return f

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> EventFilter:
        """Build from keyword options, ignoring those that are None (CLI and read_* helpers)."""
        return cls.of(**{k: v for k, v in options.items() if v is not None})

    def describe(self) -> str:
        """Canonical text of the set conditions (part of source keys, so keep it stable)."""
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None or (field.name == "include_system" and not value):
                continue
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            parts.append(f"{field.name}={value!r}")
        return " ".join(parts)

    @property
    def restricts_streams_or_types(self) -> bool:
        """True when anything but the system-event exclusion narrows the events."""
        return any(
            v is not None
            for v in (
                self.streams,
                self.stream_prefix,
                self.stream_regex,
                self.category,
                self.event_types,
                self.from_position,
                self.to_position,
                self.since,
                self.until,
            )
        )

    def server_filter(self) -> tuple[Literal["stream_name", "event_type"], str] | None:
        """One condition EventStoreDB can apply itself, as (field, full-match regex).

        EventStoreDB filters `$all` on one field with one regex; the most selective stream
        condition is sent, else the event types. The client re-applies every condition, so this
        only saves transfer. Returns None when nothing but the system exclusion applies.

        Example:
            >>> EventFilter.of(category="user").server_filter()
            ('stream_name', 'user(-.*)?')
        """
        if self.streams:
            return "stream_name", "|".join(re.escape(s) for s in self.streams)
        if self.category is not None:
            return "stream_name", re.escape(self.category) + "(-.*)?"
        if self.stream_prefix is not None:
            return "stream_name", re.escape(self.stream_prefix) + ".*"
        if self.stream_regex is not None:
            return "stream_name", ".*(?:" + self.stream_regex + ").*"
        if self.event_types:
            return "event_type", "|".join(re.escape(t) for t in self.event_types)
        return None

    def mask(self, batch: pa.RecordBatch | pa.Table) -> pa.ChunkedArray | pa.Array | None:
        """Boolean mask of the rows of a RAW (or envelope) batch that pass, or None for all."""
        conds: list[Any] = []
        stream = batch.column("stream_name")
        etype = batch.column("event_type")
        if self.streams:
            conds.append(pc.is_in(stream, value_set=pa.array(self.streams, pa.string())))
        if self.stream_prefix is not None:
            conds.append(pc.starts_with(stream, self.stream_prefix))
        if self.stream_regex is not None:
            conds.append(pc.match_substring_regex(stream, self.stream_regex))
        if self.category is not None:
            conds.append(
                pc.or_(pc.equal(stream, self.category), pc.starts_with(stream, self.category + "-"))
            )
        if self.event_types:
            conds.append(pc.is_in(etype, value_set=pa.array(self.event_types, pa.string())))
        if not self.include_system:
            conds.append(pc.invert(pc.match_substring_regex(etype, SYSTEM_EVENT_TYPE_REGEX)))
        position = batch.column("commit_position")
        if self.from_position is not None:
            conds.append(pc.greater_equal(position, pa.scalar(self.from_position, pa.uint64())))
        if self.to_position is not None:
            conds.append(pc.less_equal(position, pa.scalar(self.to_position, pa.uint64())))
        created = batch.column("created")
        if self.since is not None:
            conds.append(pc.greater_equal(created, pa.scalar(self.since, created.type)))
        if self.until is not None:
            conds.append(pc.less(created, pa.scalar(self.until, created.type)))
        if not conds:
            return None
        out = conds[0]
        for c in conds[1:]:
            out = pc.and_(out, c)
        return out

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The rows of `batch` that pass the filter."""
        m = self.mask(batch)
        return batch if m is None else batch.filter(m)


def concat_batches(batches: Sequence[pa.RecordBatch]) -> pa.RecordBatch:
    """One RAW_SCHEMA batch from several (an empty batch for none)."""
    if not batches:
        return empty_raw_batch()
    if len(batches) == 1:
        return batches[0]
    table = pa.Table.from_batches(batches, schema=RAW_SCHEMA).combine_chunks()
    return table.to_batches()[0] if table.num_rows else empty_raw_batch()


def open_source(
    location: str,
    *,
    reader: Literal["fast", "plain"] = "fast",
    filter: EventFilter | None = None,
    follow: bool = False,
) -> EventSource:
    """The source for a location: an EventStoreDB connection string (esdb://,
    esdb+discover://) or the path of an archive (.jsonl, .jsonl.gz, .parquet).

    `reader` and `follow` apply to EventStoreDB only.

    Example:
        >>> open_source("esdb://127.0.0.1:2113?tls=false", reader="plain").describe()
        'EventStoreDB esdb://127.0.0.1:2113?tls=false (plain reader)'
    """
    if _looks_like_a_uri(location):
        from esworkbench.sources.esdb import EsdbSource

        return EsdbSource(location, reader=reader, filter=filter, follow=follow)
    if follow:
        raise ConfigError("follow mode needs an EventStoreDB source (esdb://...), not a file")
    from esworkbench.sources.files import open_archive

    return open_archive(location, filter=filter)


def _looks_like_a_uri(location: str) -> bool:
    # Anything URI-like goes to EsdbSource, which refuses malformed ones with the password
    # masked; as an archive path it would be echoed whole in descriptions and errors. Paths that
    # exist stay paths, and 'C:/...' (one letter) is a Windows drive, not a scheme.
    if Path(location).exists():
        return False
    scheme_like = re.match(r"\s*[A-Za-z][A-Za-z0-9+.\-]+:", location) is not None
    return scheme_like or mask_uri(location) != location
