"""Where events come from: the `EventSource` protocol and its batches.

A source yields `SourceBatch`es: a ``RAW_SCHEMA`` record batch (payload bytes untouched, possibly
empty) and the commit position through which the source has looked. The lake commits each batch
with that checkpoint in one transaction, so a filtered read that matches nothing still moves the
cursor, and a rerun resumes after it.

Implementations: `esworkbench.sources.esdb.EsdbSource` (EventStoreDB, fast and plain readers,
follow mode) and `esworkbench.sources.files` (JSONL(.gz) and Parquet archives).

Sources take an `esworkbench.filters.EventFilter` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import pyarrow as pa

from esworkbench.config import mask_uri
from esworkbench.errors import ConfigError
from esworkbench.events import RAW_SCHEMA
from esworkbench.filters import SYSTEM_EVENT_TYPE_REGEX, EventFilter, FilterOptions

__all__ = [
    "SYSTEM_EVENT_TYPE_REGEX",
    "EventFilter",
    "EventSource",
    "FilterOptions",
    "PrefersBatchSize",
    "SourceBatch",
    "SupportsCancel",
    "SupportsHead",
    "SupportsVerify",
    "concat_batches",
    "empty_raw_batch",
    "open_source",
]


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
        """Stable identity of the source and its filters (credentials masked).

        The lake's `_checkpoints` key. Two sources with the same key must read the same events.
        """
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

    def head_position(self) -> int | None:
        """The commit position of the last event now, or None when unknown."""
        ...


@runtime_checkable
class SupportsVerify(Protocol):
    """A source that can say which event it holds at a commit position.

    Before resuming, a sync asks it for the event its checkpoint follows: a store that was reset
    or replaced at the same address no longer holds that event there, and resuming would skip
    events and mix two stores.
    """

    def event_id_at(self, position: int) -> str | None:
        """The id of the event at exactly this commit position, or None if there is none."""
        ...


@runtime_checkable
class PrefersBatchSize(Protocol):
    """A source whose batches cost least at a size of its own; a sync given none uses it.

    Archives read whole columns in C, so their only per-batch cost is the lake's fixed work per
    transaction, and a batch of one DuckDB row group lets DuckDB write it compressed once.
    """

    @property
    def preferred_batch_size(self) -> int:
        """Events per batch when the caller does not say."""
        ...


@runtime_checkable
class SupportsCancel(Protocol):
    """A source whose blocked `read_batches` can be interrupted from another thread."""

    def cancel(self) -> None:
        """Interrupt a blocked `read_batches` (best effort)."""
        ...


def empty_raw_batch() -> pa.RecordBatch:
    """A RAW_SCHEMA batch with no rows."""
    return pa.RecordBatch.from_pylist([], schema=RAW_SCHEMA)


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
    """The source for a location.

    An EventStoreDB connection string (esdb://, esdb+discover://, or KurrentDB's kurrentdb:// and
    kurrentdb+discover://) or the path of an archive (.jsonl, .jsonl.gz, .parquet).

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
