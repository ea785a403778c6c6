"""Whole streams of the lake in (stream, revision) order, a batch at a time: what a fold reads.

A replay folds each stream from its first revision, so its input is the lake's events grouped
by stream and ordered by revision, with the events the lake rejected at ingest (not JSON,
binary) set in their place: they still happened, and leaving them out would read as a gap.
Reading that whole and sorting it in memory costs memory in proportion to the lake, so the
streams are planned first (one GROUP BY over their names) and each batch of about
``batch_size`` rows, never splitting a stream, is one query over a range of stream names:
memory follows the batch, not the lake.

Columns (``FOLD_INPUT_SCHEMA``): the envelope a timeline carries, ``data`` and ``metadata``
(null for a rejected event) and ``rejected`` (the lake's reason; null for an event it kept).
A rejected copy of a revision the lake holds is left out (a duplicate id, not history), and of
several rejected copies of one revision the first by (position, id) is kept.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from esworkbench.errors import LakeError
from esworkbench.events import OCCURRED_AT_KEY
from esworkbench.filters import EventFilter
from esworkbench.lake import _export
from esworkbench.lake._schema import q, rows

__all__ = ["FOLD_INPUT_SCHEMA", "SORT_MEMORY_LIMIT", "StreamBatches"]

# What DuckDB may hold while it sorts a fold's input; past it, the sort spills to disk.
SORT_MEMORY_LIMIT = "256MB"

FOLD_INPUT_SCHEMA = pa.schema(
    [
        ("stream_name", pa.string()),
        ("stream_revision", pa.uint64()),
        ("commit_position", pa.uint64()),
        ("created", pa.timestamp("us", tz="UTC")),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("event_type", pa.string()),
        ("event_id", pa.string()),
        ("data", pa.string()),
        ("metadata", pa.string()),
        ("rejected", pa.string()),
    ]
)

# Business time of a rejected event as `Lake.read_rejected` derives it.
_REJECTED_OCCURRED_AT = (
    "coalesce(try_cast(try(json_extract_string(try(decode(r.metadata)), "
    f"'$.{OCCURRED_AT_KEY}')) AS TIMESTAMPTZ), r.created)"
)


def _input_sql(f: EventFilter, span: tuple[str, str] | None = None) -> tuple[str, list[Any]]:
    """The fold input in scope (within a range of stream names, if given), unordered."""
    where, params = _export.where_sql(f)
    rejected_where, rejected_params = _export.where_sql(
        f, category="split_part(r.stream_name, '-', 1)"
    )
    if span is not None:
        where = _and(where, "stream_name BETWEEN ? AND ?")
        rejected_where = _and(rejected_where, "r.stream_name BETWEEN ? AND ?")
        params, rejected_params = [*params, *span], [*rejected_params, *span]
    not_kept = (
        "NOT EXISTS (SELECT 1 FROM events e "
        "WHERE e.stream_name = r.stream_name AND e.stream_revision = r.stream_revision)"
    )
    sql = f"""
        SELECT stream_name, stream_revision, commit_position, created, occurred_at, event_type,
               event_id::VARCHAR AS event_id, data, metadata, NULL::VARCHAR AS rejected
        FROM events{where}
        UNION ALL
        SELECT r.stream_name, r.stream_revision, r.commit_position, r.created,
               {_REJECTED_OCCURRED_AT}, r.event_type, r.event_id, NULL, NULL, r.reason
        FROM _rejected r{_and(rejected_where, not_kept)}
        QUALIFY row_number() OVER (
            PARTITION BY r.stream_name, r.stream_revision
            ORDER BY r.commit_position, r.event_id) = 1
    """
    return sql, [*params, *rejected_params]


def _and(where: str, condition: str) -> str:
    return f"{where} AND {condition}" if where else f" WHERE {condition}"


class StreamBatches:
    """The fold input in scope, as batches of whole streams; iterate to read them.

    ``rows`` is how many rows the batches hold in all. Each batch is one Arrow table
    (``FOLD_INPUT_SCHEMA``) of about ``batch_size`` rows, sorted by (stream, revision,
    position), read when the iteration reaches it, on the connection it was planned on (keep
    the lake open meanwhile).
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        f: EventFilter,
        *,
        batch_size: int,
        memory_limit: str = SORT_MEMORY_LIMIT,
    ) -> None:
        self._con = con
        self._sql, self._params = _input_sql(f)
        self._batch_size = batch_size
        self._memory_limit = memory_limit

    @functools.cached_property
    def rows(self) -> int:
        """How many rows the batches hold in all (one counting query, on first use)."""
        ((count,),) = rows(self._con, f"SELECT count(*) FROM ({self._sql})", self._params)
        return int(count)

    def __iter__(self) -> Iterator[pa.Table]:
        ordered = f"{self._sql} ORDER BY stream_name, stream_revision, commit_position"
        # The read runs on its own cursor, so the lake stays usable while it streams.
        cursor = self._con.cursor()
        try:
            with _memory_limit(self._con, self._memory_limit):
                q(cursor, "SET TimeZone = 'UTC'")
                try:
                    relation = cursor.sql(ordered, params=self._params)
                    assert relation is not None
                    reader = relation.to_arrow_reader(max(2_048, self._batch_size // 4))
                except (duckdb.OutOfMemoryException, duckdb.IOException) as e:
                    raise self._sort_failed(e) from e
                yield from _whole_streams(reader, self._batch_size)
        finally:
            cursor.close()

    def _sort_failed(self, error: duckdb.Error) -> LakeError:
        ((spill,),) = rows(self._con, "SELECT current_setting('temp_directory')")
        return LakeError(
            f"sorting the lake's events by stream failed: {error}. DuckDB sorts them within "
            f"{self._memory_limit} and spills the rest to {spill!r}: make that directory "
            "writable with room to spare, or point DuckDB elsewhere with "
            "lake.read_sql(\"SET temp_directory = '/roomy/dir'\") before replaying"
        )


def _whole_streams(reader: pa.RecordBatchReader, batch_size: int) -> Iterator[pa.Table]:
    """Tables of about `batch_size` rows cut from sorted record batches between streams."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        pending.append(batch)
        held += batch.num_rows
        if held < batch_size:
            continue
        table = pa.Table.from_batches(pending)
        cut = _last_stream_start(table)
        if cut == 0:
            continue  # one stream larger than a batch: it comes whole, in one batch
        yield table.slice(0, cut).cast(FOLD_INPUT_SCHEMA)
        pending = table.slice(cut).to_batches()
        held = table.num_rows - cut
    if held:
        yield pa.Table.from_batches(pending, schema=reader.schema).cast(FOLD_INPUT_SCHEMA)


def _last_stream_start(table: pa.Table) -> int:
    """The row where the table's last stream starts (rows are sorted by stream)."""
    names = table.column("stream_name")
    first: int = pc.index(names, names[-1]).as_py()
    return first


@contextlib.contextmanager
def _memory_limit(con: duckdb.DuckDBPyConnection, limit: str) -> Iterator[None]:
    """DuckDB's memory limit lowered for the sort of a read, then set back.

    DuckDB sorts within its memory limit and spills the rest to its temporary directory
    (``<lake>.tmp`` by default), which keeps a read of any size within about that much memory.
    """
    setting = "SELECT current_setting('memory_limit')"
    ((previous,),) = rows(con, setting)
    q(con, f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        # The setting reads back rounded ("18.7 GiB"): the default is restored exactly by a
        # RESET, a limit of the user's own as near as its text says.
        q(con, "RESET memory_limit")
        if rows(con, setting)[0][0] != previous:
            q(con, f"SET memory_limit = '{previous}'")
