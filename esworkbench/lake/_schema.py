"""The lake's schema: its tables, their version, and the small SQL helpers (private).

`create_schema` makes a new lake and brings an older one up to `SCHEMA_VERSION`; `q` and
`rows` run SQL on the lake's connection (everything else in `esworkbench.lake` goes through
them).
"""

from __future__ import annotations

from typing import Any

import duckdb

from esworkbench.lake import _views

__all__ = ["FLAG_CODES", "REASON_CODES", "SCHEMA_VERSION", "create_schema", "q", "rows"]

SCHEMA_VERSION = 2

REASON_CODES = (
    "malformed_json",
    "binary_payload",
    "malformed_metadata",
    "invalid_event_id",
    "duplicate_event_id",
    "duplicate_json_key",
    "non_finite_number",
    "too_deep",
)
# Problems with an event the lake keeps, recorded in `_flags`.
FLAG_CODES = (
    "not_an_object",
    "number_out_of_range",
    "occurred_at_invalid",
    "occurred_at_implausible",
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
        run_id BIGINT,
        anchor_position UBIGINT,
        anchor_event_id VARCHAR
    )""",
    # Schema version 1 lakes: the anchor (the last event read at or before the checkpoint)
    # starts unknown and is recorded by the next batch that reads an event.
    "ALTER TABLE _checkpoints ADD COLUMN IF NOT EXISTS anchor_position UBIGINT",
    "ALTER TABLE _checkpoints ADD COLUMN IF NOT EXISTS anchor_event_id VARCHAR",
    """CREATE TABLE IF NOT EXISTS _flags (
        commit_position UBIGINT NOT NULL,
        event_id VARCHAR NOT NULL,
        stream_name VARCHAR NOT NULL,
        event_type VARCHAR NOT NULL,
        created TIMESTAMPTZ NOT NULL,
        flag VARCHAR NOT NULL,
        detail VARCHAR NOT NULL,
        source_key VARCHAR NOT NULL,
        run_id BIGINT,
        flagged_at TIMESTAMPTZ NOT NULL
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
        "INSERT INTO _lake_info VALUES ('schema_version', ?) ON CONFLICT DO UPDATE "
        "SET value = excluded.value",
        [str(SCHEMA_VERSION)],
    )
