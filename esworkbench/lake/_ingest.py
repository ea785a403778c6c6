"""The lake's storage: schema, and decoding one raw batch into `events` / `_rejected` (private).

Decoding happens here, at the boundary, in SQL over the Arrow batch (no per-event Python):
payload bytes must be UTF-8 JSON, metadata empty or JSON, the event id a UUID not already used
by another event. Events that fail land in `_rejected` with their raw bytes and a reason whose
first word is a stable code (`malformed_json`, `binary_payload`, `malformed_metadata`,
`invalid_event_id`, `duplicate_event_id`). An event re-delivered at the position it already has
(in `events` or `_rejected`) is skipped: event ids make re-delivery harmless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esworkbench.events import OCCURRED_AT_KEY
from esworkbench.lake import _views

__all__ = [
    "SCHEMA_VERSION",
    "IdIndex",
    "IngestCounts",
    "create_schema",
    "ingest_batch",
    "q",
    "rows",
]

SCHEMA_VERSION = 1

REASON_CODES = (
    "malformed_json",
    "binary_payload",
    "malformed_metadata",
    "invalid_event_id",
    "duplicate_event_id",
)

# `events`: the envelope of ENVELOPE_SCHEMA. event_id is stored as UUID (16 bytes): the
# uniqueness check scans it for every batch, and that is 10x+ faster than over text ids at
# millions of events; reads turn it back into the canonical string. No PRIMARY KEY index: an
# ART index on the ids made the file 7x larger and kept growing RSS with the lake; the
# anti-join in `ingest_batch` enforces the same uniqueness. Payloads are zstd-compressed:
# half the CPU of DuckDB's default string compression at checkpoints, and a smaller file.
_DDL = [
    """CREATE TABLE IF NOT EXISTS events (
        commit_position UBIGINT NOT NULL,
        prepare_position UBIGINT NOT NULL,
        stream_name VARCHAR NOT NULL,
        stream_revision UBIGINT NOT NULL,
        event_id UUID NOT NULL,
        event_type VARCHAR NOT NULL,
        created TIMESTAMPTZ NOT NULL,
        content_type VARCHAR NOT NULL,
        data VARCHAR NOT NULL USING COMPRESSION zstd,
        metadata VARCHAR USING COMPRESSION zstd,
        category VARCHAR NOT NULL,
        occurred_at TIMESTAMPTZ NOT NULL,
        correlation_id VARCHAR,
        causation_id VARCHAR
    )""",
    """CREATE TABLE IF NOT EXISTS _checkpoints (
        source_key VARCHAR PRIMARY KEY,
        position UBIGINT NOT NULL,
        updated TIMESTAMPTZ NOT NULL,
        run_id BIGINT
    )""",
    "CREATE SEQUENCE IF NOT EXISTS _sync_run_ids START 1",
    """CREATE TABLE IF NOT EXISTS _sync_runs (
        run_id BIGINT PRIMARY KEY,
        source_key VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        started TIMESTAMPTZ NOT NULL,
        finished TIMESTAMPTZ,
        from_position UBIGINT,
        to_position UBIGINT,
        events BIGINT NOT NULL DEFAULT 0,
        rejected BIGINT NOT NULL DEFAULT 0,
        duplicates BIGINT NOT NULL DEFAULT 0,
        batches BIGINT NOT NULL DEFAULT 0,
        outcome VARCHAR NOT NULL,
        error VARCHAR
    )""",
    """CREATE TABLE IF NOT EXISTS _rejected (
        commit_position UBIGINT NOT NULL,
        prepare_position UBIGINT NOT NULL,
        stream_name VARCHAR NOT NULL,
        stream_revision UBIGINT NOT NULL,
        event_id VARCHAR NOT NULL,
        event_type VARCHAR NOT NULL,
        created TIMESTAMPTZ NOT NULL,
        content_type VARCHAR NOT NULL,
        data BLOB NOT NULL,
        metadata BLOB NOT NULL,
        reason VARCHAR NOT NULL,
        source_key VARCHAR NOT NULL,
        run_id BIGINT,
        rejected_at TIMESTAMPTZ NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS _lake_info (key VARCHAR PRIMARY KEY, value VARCHAR)""",
    "CREATE SCHEMA IF NOT EXISTS typed",
    *_views.DDL,
]


def q(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> None:
    """Run a statement to its end (DuckDB 2 results stream and hold the connection)."""
    con.execute(sql, params).fetchall()


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """All rows of a query."""
    return con.execute(sql, params).fetchall()


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the lake's tables if missing and record the schema version."""
    for stmt in _DDL:
        q(con, stmt)
    q(
        con,
        "INSERT INTO _lake_info VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
        [str(SCHEMA_VERSION)],
    )


class IdIndex:
    """64-bit hashes of every event id in the lake, sorted, held for the length of a sync.

    Event ids must be unique, but DuckDB has no index that is both small and cheap to keep (an
    ART index on the ids made the file 7x larger and its memory grew with the lake), and
    scanning the id column for every batch costs time and cache in proportion to the lake.
    So a sync loads the ids' hashes once (8 bytes per event) and asks the lake only about the
    ids whose hash it already knows: normally none; the exact check in SQL settles the rare
    collision.
    """

    def __init__(self, hashes: np.ndarray, *, is_sorted: bool = False) -> None:
        self._main = hashes if is_sorted else np.sort(hashes)
        self._runs: list[np.ndarray] = []  # sorted, one per committed batch since the merge

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection) -> IdIndex:
        # Streamed into one preallocated array and sorted in place: the peak is the index plus
        # one chunk, not several copies of it.
        ((count,),) = con.execute("SELECT count(*) FROM events").fetchall()
        hashes = np.empty(count, dtype=np.uint64)
        filled = 0
        relation = con.sql("SELECT hash(event_id) AS h FROM events")
        assert relation is not None
        for chunk in relation.to_arrow_reader(1 << 20):
            values = chunk.column(0).to_numpy()
            hashes[filled : filled + len(values)] = values
            filled += len(values)
        hashes = hashes[:filled]
        hashes.sort()
        return cls(hashes, is_sorted=True)

    def __len__(self) -> int:
        return len(self._main) + sum(len(r) for r in self._runs)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Which of `hashes` may belong to an id already in the lake."""
        # Sorted keys make searchsorted walk the array in order (cache-friendly, 10x faster).
        order = np.argsort(hashes)
        keys = hashes[order]
        hit = np.zeros(len(keys), dtype=bool)
        for sorted_run in (self._main, *self._runs):
            if len(sorted_run):
                at = np.minimum(np.searchsorted(sorted_run, keys), len(sorted_run) - 1)
                hit |= sorted_run[at] == keys
        out = np.empty_like(hit)
        out[order] = hit
        return out

    def add(self, hashes: np.ndarray) -> None:
        """Remember committed ids.

        Every few batches the runs are merged into the main array: a stable sort of sorted runs is a
        linear merge, so adding costs no more than reading.
        """
        self._runs.append(np.sort(hashes))
        if len(self._runs) >= 8:
            merged = np.concatenate([self._main, *self._runs])
            self._main, self._runs = merged, []  # the old arrays go before sorting
            merged.sort(kind="stable")


@dataclasses.dataclass(slots=True)
class IngestCounts:
    """What one batch did to the lake."""

    events: int = 0
    rejected: int = 0
    duplicates: int = 0


# One pass over the Arrow batch: decode, validate, find ids already in the lake. `_seen` is the
# uniqueness probe: a semi-join that builds on the batch's ids and scans the lake's id column.
_STAGE_SQL = """
CREATE OR REPLACE TEMP TABLE _staged AS
WITH raw AS (
    SELECT r.*,
           try_cast(r.event_id AS UUID) AS id,
           octet_length(r.data) AS data_bytes,
           octet_length(r.metadata) AS meta_bytes,
           try(decode(r.data)) AS data_text,
           CASE WHEN octet_length(r.metadata) = 0 THEN NULL
                ELSE try(decode(r.metadata)) END AS meta_text
    FROM _raw r
),
in_batch AS (  -- ids that occur more than once in this batch (rare: a small table)
    {in_batch}
),
seen AS (  -- ids of this batch already in the lake (only looked up for IdIndex hits)
    {seen}
),
seen_rejected AS (
    SELECT DISTINCT j.commit_position, j.event_id FROM _rejected j
    WHERE j.commit_position BETWEEN (SELECT min(commit_position) FROM raw)
                                AND (SELECT max(commit_position) FROM raw)
),
checked AS (
    SELECT raw.*, seen.seen_at, b.first_position,
           -- the same event again: at its known position, or twice in this batch
           (coalesce(seen.seen_at = raw.commit_position, false)
            OR sr.commit_position IS NOT NULL) AS redelivered,
           CASE WHEN data_text IS NULL THEN 0
                WHEN json_valid(data_text) THEN 1 ELSE 2 END AS data_state,
           meta_text IS NULL AND meta_bytes > 0
               OR (meta_text IS NOT NULL AND NOT json_valid(meta_text)) AS bad_meta
    FROM raw
    LEFT JOIN seen ON seen.id = raw.id
    LEFT JOIN in_batch b ON b.id = raw.id
    LEFT JOIN seen_rejected sr
           ON sr.commit_position = raw.commit_position AND sr.event_id = raw.event_id
)
SELECT * EXCLUDE (data, metadata),  -- the raw bytes stay in _raw: only rejects need them
    CASE
        WHEN redelivered THEN NULL
        WHEN id IS NULL THEN
            'invalid_event_id: event id ' || to_json(event_id) || ' is not a UUID'
        WHEN data_state <> 1 THEN
            (CASE WHEN content_type = 'application/json' THEN 'malformed_json: '
                  ELSE 'binary_payload: ' END)
            || (CASE WHEN data_bytes = 0 THEN 'the payload is empty'
                     WHEN data_state = 0 THEN 'the payload is ' || data_bytes
                          || ' bytes that are not UTF-8 text'
                     ELSE 'the payload is not valid JSON' END)
            || ' (content-type ' || content_type || ')'
        WHEN bad_meta THEN
            'malformed_metadata: the metadata is not valid JSON (' || meta_bytes || ' bytes)'
        WHEN seen_at IS NOT NULL AND seen_at <> commit_position THEN
            'duplicate_event_id: event id ' || event_id
            || ' is already in the lake at commit position ' || seen_at
        WHEN first_position IS NOT NULL AND first_position <> commit_position THEN
            'duplicate_event_id: event id ' || event_id
            || ' is already in the lake at commit position ' || first_position
    END AS reason
FROM checked
"""

# The derived columns come from one parse of the metadata.
_META_FIELDS = json.dumps(
    {OCCURRED_AT_KEY: "VARCHAR", "$correlationId": "VARCHAR", "$causationId": "VARCHAR"}
)
# Only ids the IdIndex has seen before are looked up in `events` (a scan of its id column):
# for fresh events, none; for a re-read, the re-delivered ones.
_SEEN = (
    "SELECT event_id AS id, min(commit_position) AS seen_at FROM events "
    "WHERE event_id IN (SELECT try_cast(event_id AS UUID) FROM _candidates) "
    "GROUP BY event_id"
)
_NOT_SEEN = "SELECT NULL::UUID AS id, NULL::UBIGINT AS seen_at WHERE false"

# Ids repeat within a batch so rarely that the grouping is only run when Arrow saw a repeat.
_IN_BATCH = (
    "SELECT id, min(commit_position) AS first_position FROM raw "
    "WHERE id IS NOT NULL GROUP BY id HAVING count(*) > 1"
)
_NO_REPEATS = "SELECT NULL::UUID AS id, NULL::UBIGINT AS first_position WHERE false"

_INSERT_EVENTS = f"""
INSERT INTO events
SELECT commit_position, prepare_position, stream_name, stream_revision, id, event_type,
       created, content_type, data_text, meta_text, split_part(stream_name, '-', 1),
       coalesce(try_cast(m['{OCCURRED_AT_KEY}'] AS TIMESTAMPTZ), created),
       m['$correlationId'], m['$causationId']
FROM (SELECT *, try(json_transform(meta_text, '{_META_FIELDS}')) AS m FROM _staged
      WHERE reason IS NULL AND NOT redelivered)
"""

_INSERT_REJECTED = """
INSERT INTO _rejected
SELECT s.commit_position, s.prepare_position, s.stream_name, s.stream_revision, s.event_id,
       s.event_type, s.created, s.content_type, r.data, r.metadata, s.reason, ?, ?, now()
FROM _staged s JOIN _raw r
  ON r.commit_position = s.commit_position AND r.event_id = s.event_id
WHERE s.reason IS NOT NULL
ORDER BY s.commit_position
"""


_NOT_JSON = "the payload is not valid JSON"


def _refine_json_reasons(con: duckdb.DuckDBPyConnection) -> None:
    """Say where malformed JSON breaks.

    Python's parser names line and column; only rejected rows come here, so this per-row loop stays
    off the hot path.
    """
    bad = rows(
        con,
        "SELECT commit_position, event_id, data_text, reason FROM _staged "
        f"WHERE reason LIKE '%{_NOT_JSON}%'",
    )
    if not bad:
        return
    updates: list[tuple[int, str, str]] = []
    for position, event_id, text, reason in bad:
        try:
            json.loads(text)
            detail = "the payload is not valid JSON"
        except ValueError as e:
            detail = f"the payload is not valid JSON ({e})"
        updates.append(
            (position, event_id, reason.replace("the payload is not valid JSON", detail, 1))
        )
    fixes = pa.table(
        {
            "commit_position": pa.array([u[0] for u in updates], pa.uint64()),
            "event_id": [u[1] for u in updates],
            "reason": [u[2] for u in updates],
        }
    )
    con.register("_reason_fixes", fixes)
    try:
        q(
            con,
            "UPDATE _staged SET reason = f.reason FROM _reason_fixes f "
            "WHERE _staged.commit_position = f.commit_position "
            "AND _staged.event_id = f.event_id",
        )
    finally:
        con.unregister("_reason_fixes")


def _drop_repeats(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, int]:
    """Rows repeated within one batch (same id, same position) once; how many were dropped."""
    n = batch.num_rows
    table = pa.Table.from_batches([batch]).append_column("_row", pa.array(range(n), pa.int64()))
    first = (
        table.group_by(["event_id", "commit_position"], use_threads=False)
        .aggregate([("_row", "min")])
        .column("_row_min")
    )
    rows_kept = pc.take(first, pc.sort_indices(first)).combine_chunks()
    return batch.take(rows_kept), n - len(rows_kept)


def ingest_batch(
    con: duckdb.DuckDBPyConnection,
    batch: pa.RecordBatch,
    *,
    source_key: str,
    run_id: int,
    checkpoint: int | None,
    fields: _views.FieldState,
    ids: IdIndex,
) -> IngestCounts:
    """Decode `batch` into the lake and move the source's checkpoint, in one transaction.

    A failure (or KeyboardInterrupt) anywhere rolls the whole batch back, so the lake is always
    at a batch boundary: what is committed matches its checkpoint.
    """
    counts = IngestCounts()
    repeats = (
        batch.num_rows > 0
        and pc.count_distinct(pc.utf8_lower(batch.column("event_id"))).as_py() < batch.num_rows
    )
    if repeats:
        batch, counts.duplicates = _drop_repeats(batch)
    registered = []
    hashes = np.empty(0, dtype=np.uint64)
    q(con, "BEGIN TRANSACTION")
    try:
        if batch.num_rows:
            con.register("_raw", batch)
            registered.append("_raw")
            found = con.execute(
                "SELECT hash(try_cast(event_id AS UUID)) AS h, "
                "try_cast(event_id AS UUID) IS NOT NULL AS ok FROM _raw"
            ).fetchnumpy()
            hashes = np.asarray(found["h"], dtype=np.uint64)[np.asarray(found["ok"], dtype=bool)]
            known = ids.contains(np.asarray(found["h"], dtype=np.uint64))
            known &= np.asarray(found["ok"], dtype=bool)
            if known.any():
                con.register("_candidates", batch.select(["event_id"]).filter(pa.array(known)))
                registered.append("_candidates")
            q(
                con,
                _STAGE_SQL.format(
                    in_batch=_IN_BATCH if repeats else _NO_REPEATS,
                    seen=_SEEN if known.any() else _NOT_SEEN,
                ),
            )
            ((counts.events, counts.rejected, redelivered, malformed),) = rows(
                con,
                "SELECT count(*) FILTER (reason IS NULL AND NOT redelivered), "
                "count(*) FILTER (reason IS NOT NULL), count(*) FILTER (redelivered), "
                f"count(*) FILTER (reason LIKE '%{_NOT_JSON}%') FROM _staged",
            )
            if malformed:
                _refine_json_reasons(con)
            counts.duplicates += redelivered
            if counts.events:
                q(con, _INSERT_EVENTS)
                _views.update_after_insert(con, fields)
            if counts.rejected:
                q(con, _INSERT_REJECTED, [source_key, run_id])
            q(con, "DROP TABLE _staged")
        if checkpoint is not None:
            q(
                con,
                "INSERT INTO _checkpoints VALUES (?, ?, now(), ?) ON CONFLICT (source_key) DO "
                "UPDATE SET position = greatest(_checkpoints.position, excluded.position), "
                "updated = excluded.updated, run_id = excluded.run_id",
                [source_key, checkpoint, run_id],
            )
        q(
            con,
            "UPDATE _sync_runs SET events = events + ?, rejected = rejected + ?, "
            "duplicates = duplicates + ?, batches = batches + 1, "
            "to_position = coalesce(greatest(to_position, ?), to_position, ?) WHERE run_id = ?",
            [counts.events, counts.rejected, counts.duplicates, checkpoint, checkpoint, run_id],
        )
        q(con, "COMMIT")
        ids.add(hashes)
    except BaseException:
        fields.rows = None  # it may hold what is being rolled back
        # the transaction may already be gone (e.g. the connection was interrupted)
        with contextlib.suppress(duckdb.Error):
            q(con, "ROLLBACK")
        raise
    finally:
        for name in registered:
            con.unregister(name)
    return counts
