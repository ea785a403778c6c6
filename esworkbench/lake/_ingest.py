"""The lake's storage: schema, and decoding one raw batch into `events` / `_rejected` (private).

Decoding happens here, at the boundary, in SQL over the Arrow batch (no per-event Python):
payload bytes must be UTF-8 JSON, metadata empty or JSON, the event id a UUID not already used
by another event (looked up in the lake itself, per batch, so a sync holds nothing that grows
with the lake). Events that fail land in `_rejected` with their raw bytes and a reason whose
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
from esworkbench.lake import _payloads, _views
from esworkbench.lake._schema import q, rows
from esworkbench.lake._timings import Timings

__all__ = ["IngestCounts", "ingest_batch"]

# An occurredAt this far from `created` is not believed: a year later than the write (business
# time may trail the write, as when history is replayed, but not by years), or earlier than
# any history a store imports.
_OCCURRED_AFTER_CREATED = "INTERVAL 1 YEAR"
_OCCURRED_BEFORE_CREATED = "INTERVAL 100 YEAR"


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
seen AS (  -- ids of this batch already in the lake, kept or rejected: a semi-join over their ids
    SELECT id, min(seen_at) AS seen_at FROM (
        SELECT event_id AS id, commit_position AS seen_at FROM events
        WHERE event_id IN (SELECT id FROM raw WHERE id IS NOT NULL)
        UNION ALL
        -- a rejected event still took its id, as a repeat within one batch does whatever its
        -- fate: so a later event with that id is a duplicate in any batch, not only in the same
        SELECT try_cast(event_id AS UUID), commit_position FROM _rejected
        WHERE try_cast(event_id AS UUID) IN (SELECT id FROM raw WHERE id IS NOT NULL)
    )
    GROUP BY id
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
),
decided AS (
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
)
-- Payloads DuckDB reads but that other readers read differently (or not at all) are found in
-- two steps: cheap columnar tests mark suspects here, and `_payloads.inspect` settles each
-- suspect exactly. The tests: a regex for trailing commas and long digit runs; where the
-- shape has numbers, one for NaN, Infinity and large exponents; more keys in the text than in
-- the shape (which merges duplicates; with arrays, whose elements it also merges, only the
-- top level is compared here and `_NESTED_DUPLICATES` does the rest); and a shape deeper than
-- allowed (the text's brackets too where the shape merged mixed values into "JSON"). CASE
-- keeps the JSON functions away from rows that are not valid JSON. Counts are in bytes
-- (strlen): what is counted is ASCII, and bytes need no UTF-8 scan.
SELECT *,
    CASE WHEN reason IS NULL AND NOT redelivered THEN
        regexp_matches(data_text, '{suspect}')
        OR ((contains(st, 'DOUBLE') OR contains(st, 'INT"') OR contains(st, '"JSON"'))
            AND regexp_matches(data_text, '{suspect_number}'))
        OR CASE WHEN contains(st, '[')
                THEN len(json_keys(data_text)) <> len(json_keys(st))
                ELSE strlen(data_text) - strlen(replace(data_text, '":', ''))
                     <> strlen(st) - strlen(replace(st, '":', '')) END
        OR strlen(st) - strlen(replace(replace(st, '{{', ''), '[', '')) > {max_depth}
        OR (contains(st, '"JSON"')
            AND strlen(data_text) - strlen(replace(replace(data_text, '{{', ''), '[', ''))
                > {max_depth})
    ELSE false END AS suspect,
    CASE WHEN reason IS NULL AND NOT redelivered
         THEN contains(st, '[') AND strpos(substr(st, 2), '{{') > 0 ELSE false END AS nested,
    CASE WHEN reason IS NOT NULL OR redelivered THEN false
         WHEN starts_with(st, '{{') THEN false  -- the shape of an object: no need to parse
         ELSE json_type(data_text) <> 'OBJECT' END AS untyped,
    m, coalesce(try_cast(m['{occurred_at_key}'] AS TIMESTAMPTZ), created) AS occurred
FROM (SELECT *, CASE WHEN data_state = 1 THEN json_structure(data_text) END AS st,
             -- the metadata's derived columns, from one parse (`_INSERT_EVENTS`, `_OCCURRED_FLAGS`)
             CASE WHEN reason IS NULL AND NOT redelivered
                  THEN try(json_transform(meta_text, '{meta_fields}')) END AS m
      FROM decided)
"""

# The metadata's derived columns, parsed once in `_STAGE_SQL` (`m`).
_META_FIELDS = json.dumps(
    {OCCURRED_AT_KEY: "VARCHAR", "$correlationId": "VARCHAR", "$causationId": "VARCHAR"}
)
# Ids repeat within a batch so rarely that the grouping is only run when Arrow saw a repeat.
_IN_BATCH = (
    "SELECT id, min(commit_position) AS first_position FROM raw "
    "WHERE id IS NOT NULL GROUP BY id HAVING count(*) > 1"
)
_NO_REPEATS = "SELECT NULL::UUID AS id, NULL::UBIGINT AS first_position WHERE false"

# occurred_at is the metadata's occurredAt when it parses (`occurred` in `_staged`, else
# `created`), and `created` too when it is implausible. `_OCCURRED_FLAGS` flags both kinds among
# the batch's new events: an implausible value shows in `occurred` itself, and an unparsable one
# left `occurred` equal to `created`. Both read `_staged`, not the rows just inserted: the
# batch's new events are exactly its rows without a reason that are not re-deliveries.
_NEW = "reason IS NULL AND NOT redelivered"
# Calendar arithmetic on TIMESTAMPTZ goes through ICU (about 0.5 us a row), so the exact test
# only runs where a plain difference of microseconds cannot settle it: within 364 days after
# or 36,400 days before `created` is inside the calendar bounds in any time zone.
_PLAUSIBLE = f"""(CASE
    WHEN epoch_us(occurred) - epoch_us(created) BETWEEN -36400 * 86400000000 AND 364 * 86400000000
    THEN true
    ELSE occurred BETWEEN created - {_OCCURRED_BEFORE_CREATED}
                      AND created + {_OCCURRED_AFTER_CREATED}
END)"""
_INSERT_EVENTS = f"""
INSERT INTO events
SELECT commit_position, prepare_position, stream_name, stream_revision, id, event_type,
       created, content_type, data_text, meta_text, split_part(stream_name, '-', 1),
       CASE WHEN {_PLAUSIBLE} THEN occurred ELSE created END,
       m['$correlationId'], m['$causationId']
FROM _staged WHERE {_NEW}
"""
_OCCURRED_FLAGS = f"""
INSERT INTO _flags
SELECT commit_position, id::VARCHAR, stream_name, event_type, created,
       CASE WHEN {_PLAUSIBLE} THEN 'occurred_at_invalid'
            ELSE 'occurred_at_implausible' END,
       'occurredAt ' || to_json(json_extract_string(meta_text, '$.{OCCURRED_AT_KEY}'))
       || CASE WHEN {_PLAUSIBLE} THEN ' is not an ISO 8601 timestamp'
            ELSE ' lies implausibly far from created ('
                 || strftime(created, '%Y-%m-%dT%H:%M:%SZ')
                 || '): more than a year after it or 100 years before it' END
       || '; occurred_at holds created instead',
       ?, ?, now()
FROM (SELECT *,  -- the value as written, read (once) only where occurred_at fell back
             CASE WHEN occurred = created AND contains(meta_text, '{OCCURRED_AT_KEY}')
                  THEN json_extract_string(meta_text, '$.{OCCURRED_AT_KEY}') END AS written
      FROM _staged WHERE {_NEW})
WHERE CASE WHEN NOT {_PLAUSIBLE} THEN true
           ELSE written IS NOT NULL AND try_cast(written AS TIMESTAMPTZ) IS NULL END
"""

_INSERT_SHAPE_FLAGS = """
INSERT INTO _flags
SELECT commit_position, event_id, stream_name, event_type, created, 'not_an_object',
       'the payload is a JSON ' || lower(json_type(data_text))
       || ', not an object: its typed view has no columns for it', ?, ?, now()
FROM _staged WHERE reason IS NULL AND NOT redelivered AND untyped
                AND json_type(data_text) <> 'OBJECT'
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

# Duplicate keys below the top level: one row per key (json_tree), only over payloads that
# hold a nested object and were not already suspect.
_NESTED_DUPLICATES = """
UPDATE _staged SET suspect = true FROM (
    SELECT DISTINCT s.commit_position, s.event_id
    FROM (SELECT commit_position, event_id, data_text FROM _staged
          WHERE nested AND NOT suspect) s, json_tree(s.data_text) j
    WHERE j.key IS NOT NULL
    GROUP BY s.commit_position, s.event_id, j.parent, j.key HAVING count(*) > 1
) d
WHERE _staged.commit_position = d.commit_position AND _staged.event_id = d.event_id
"""


def _run_with_rows(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    found: list[tuple[Any, ...]],
    columns: tuple[str, ...],
    params: Any = None,
) -> None:
    """Run `sql` with the per-event rows `found` registered as the table `_rows`.

    Each row is (commit position, event id, *the other `columns`): the few rows Python
    settled, joined back to `_staged` by position and id.
    """
    names = ("commit_position", "event_id", *columns)
    data = {name: [r[i] for r in found] for i, name in enumerate(names)}
    table = pa.table({**data, "commit_position": pa.array(data["commit_position"], pa.uint64())})
    con.register("_rows", table)
    try:
        q(con, sql, params)
    finally:
        con.unregister("_rows")


def _inspect_suspects(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, str, str]]:
    """Settle the suspect payloads one by one (few rows); returns their flags.

    A rejected payload gets its reason in `_staged`; a flagged one is left out of type
    inference. Returns (commit position, event id, flag, detail) rows for `_flags`.
    """
    suspects = rows(con, "SELECT commit_position, event_id, data_text FROM _staged WHERE suspect")
    fixes: list[tuple[int, str, str | None, bool]] = []
    flags: list[tuple[int, str, str, str]] = []
    for position, event_id, text in suspects:
        reason, found = _payloads.inspect(text)
        if reason is not None or found:
            fixes.append((position, event_id, reason, bool(found)))
        flags += [(position, event_id, flag, detail) for flag, detail in found]
    if fixes:
        _run_with_rows(
            con,
            "UPDATE _staged SET reason = f.reason, untyped = _staged.untyped OR f.untyped "
            "FROM _rows f WHERE _staged.commit_position = f.commit_position "
            "AND _staged.event_id = f.event_id",
            fixes,
            ("reason", "untyped"),
        )
    return flags


def _insert_flags(
    con: duckdb.DuckDBPyConnection,
    found: list[tuple[int, str, str, str]],
    *,
    source_key: str,
    run_id: int,
) -> None:
    """Record the flags of the batch's new events in `_flags`."""
    q(con, _INSERT_SHAPE_FLAGS, [source_key, run_id])
    q(con, _OCCURRED_FLAGS, [source_key, run_id])
    if found:
        _run_with_rows(
            con,
            "INSERT INTO _flags SELECT s.commit_position, s.event_id, s.stream_name, "
            "s.event_type, s.created, f.flag, f.detail, ?, ?, now() FROM _rows f JOIN _staged s "
            "ON s.commit_position = f.commit_position AND s.event_id = f.event_id",
            found,
            ("flag", "detail"),
            [source_key, run_id],
        )


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
    _run_with_rows(
        con,
        "UPDATE _staged SET reason = f.reason FROM _rows f "
        "WHERE _staged.commit_position = f.commit_position AND _staged.event_id = f.event_id",
        updates,
        ("reason",),
    )


def _anchor(batch: pa.RecordBatch, checkpoint: int) -> tuple[int | None, str | None]:
    """The batch's last event at or before the checkpoint: (position, id), or Nones.

    The checkpoint itself may lie past the last event a filtered read matched; the anchor is
    an event the source really holds, so a later sync can ask the source whether it still
    holds it (see `sync`).
    """
    if not batch.num_rows:
        return None, None
    positions = batch.column("commit_position").to_numpy(zero_copy_only=False)
    eligible = np.flatnonzero(positions <= checkpoint)
    if not len(eligible):
        return None, None
    last = int(eligible[np.argmax(positions[eligible])])
    return int(positions[last]), str(batch.column("event_id")[last].as_py())


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
    timings: Timings | None = None,
    completes_batch: bool = True,
) -> IngestCounts:
    """Decode `batch` into the lake and move the source's checkpoint, in one transaction.

    `completes_batch` False: `batch` is a leading part of the source's batch (see
    `LakeWriter.ingest`), not counted in `_sync_runs.batches`.

    A failure (or KeyboardInterrupt) anywhere rolls the whole batch back, so the lake is always
    at a batch boundary: what is committed is its checkpoint's, plus at most the events of
    leading parts (`checkpoint` None), which the next sync reads again and skips.
    """
    timings = timings or Timings()
    counts = IngestCounts()
    registered = []
    q(con, "BEGIN TRANSACTION")
    try:
        if batch.num_rows:
            with timings.phase("validate"):
                repeats = (
                    pc.count_distinct(pc.utf8_lower(batch.column("event_id"))).as_py()
                    < batch.num_rows
                )
                if repeats:
                    batch, counts.duplicates = _drop_repeats(batch)
                con.register("_raw", batch)
                registered.append("_raw")
                q(
                    con,
                    _STAGE_SQL.format(
                        in_batch=_IN_BATCH if repeats else _NO_REPEATS,
                        suspect=_payloads.SUSPECT_REGEX,
                        suspect_number=_payloads.SUSPECT_NUMBER_REGEX,
                        max_depth=_payloads.MAX_DEPTH,
                        meta_fields=_META_FIELDS,
                        occurred_at_key=OCCURRED_AT_KEY,
                    ),
                )
                q(con, _NESTED_DUPLICATES)
                flags = _inspect_suspects(con)
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
                with timings.phase("insert"):
                    q(con, _INSERT_EVENTS)
                    _insert_flags(con, flags, source_key=source_key, run_id=run_id)
                with timings.phase("views"):
                    _views.update_after_insert(con, fields)
            with timings.phase("insert"):
                if counts.rejected:
                    q(con, _INSERT_REJECTED, [source_key, run_id])
                q(con, "DROP TABLE _staged")
        with timings.phase("commit"):
            if checkpoint is not None:
                anchor = _anchor(batch, checkpoint)
                q(
                    con,
                    "INSERT INTO _checkpoints VALUES (?, ?, now(), ?, ?, ?) "
                    "ON CONFLICT (source_key) DO UPDATE SET "
                    "position = greatest(_checkpoints.position, excluded.position), "
                    "updated = excluded.updated, run_id = excluded.run_id, "
                    "anchor_event_id = CASE WHEN excluded.anchor_position >= "
                    "coalesce(_checkpoints.anchor_position, 0) THEN excluded.anchor_event_id "
                    "ELSE _checkpoints.anchor_event_id END, "
                    "anchor_position = greatest(_checkpoints.anchor_position, "
                    "excluded.anchor_position)",
                    [source_key, checkpoint, run_id, *anchor],
                )
            q(
                con,
                "UPDATE _sync_runs SET events = events + ?, rejected = rejected + ?, "
                "duplicates = duplicates + ?, batches = batches + ?, "
                "to_position = coalesce(greatest(to_position, ?), to_position, ?) "
                "WHERE run_id = ?",
                [
                    counts.events,
                    counts.rejected,
                    counts.duplicates,
                    int(completes_batch),
                    checkpoint,
                    checkpoint,
                    run_id,
                ],
            )
            q(con, "COMMIT")
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
