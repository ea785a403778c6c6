"""SQL for the lake's filters, and its exports: Parquet for other engines, archives (private).

Only the lake speaks SQL; `lake.Lake` calls these with its connection.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Literal

import duckdb

from esworkbench.errors import LakeError
from esworkbench.events import ENVELOPE_SCHEMA
from esworkbench.filters import SYSTEM_EVENT_TYPE_REGEX, EventFilter
from esworkbench.lake._schema import q

__all__ = ["ENVELOPE_SELECT", "export_archive", "export_parquet", "where_sql"]

ENVELOPE_SELECT = ", ".join(
    "event_id::VARCHAR AS event_id" if name == "event_id" else name
    for name in ENVELOPE_SCHEMA.names
)


def where_sql(f: EventFilter, *, category: str = "category") -> tuple[str, list[Any]]:
    """A WHERE clause (with its parameters) selecting what `f` selects from `events`.

    For tables without a category column, pass the expression that computes it.
    """
    conds: list[str] = []
    params: list[Any] = []
    if f.streams:
        conds.append(f"stream_name IN ({', '.join('?' * len(f.streams))})")
        params += list(f.streams)
    if f.stream_prefix is not None:
        conds.append("starts_with(stream_name, ?)")
        params.append(f.stream_prefix)
    if f.stream_regex is not None:
        conds.append("regexp_matches(stream_name, ?)")
        params.append(f.stream_regex)
    if f.category is not None:
        conds.append(f"{category} = ?")
        params.append(f.category)
    if f.event_types:
        conds.append(f"event_type IN ({', '.join('?' * len(f.event_types))})")
        params += list(f.event_types)
    if f.from_position is not None:
        conds.append("commit_position >= ?")
        params.append(f.from_position)
    if f.to_position is not None:
        conds.append("commit_position <= ?")
        params.append(f.to_position)
    if f.since is not None:
        conds.append("created >= ?")
        params.append(f.since)
    if f.until is not None:
        conds.append("created < ?")
        params.append(f.until)
    if not f.include_system:
        # the regex only runs for the rare types that could match it
        conds.append(
            "NOT (event_type[1] IN ('$', 'P') AND "
            f"regexp_full_match(event_type, '{SYSTEM_EVENT_TYPE_REGEX[1:-1]}'))"
        )
    return (" WHERE " + " AND ".join(conds) if conds else ""), params


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def export_parquet(
    con: duckdb.DuckDBPyConnection, out: Path, f: EventFilter, *, overwrite: bool
) -> Path:
    """Events as hive-partitioned Parquet: category=<category>/month=<YYYY-MM>/*.parquet."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise LakeError(f"{out} is not empty; pass overwrite=True to replace it")
    out.mkdir(parents=True, exist_ok=True)
    where, params = where_sql(f)
    q(
        con,
        f"COPY (SELECT {ENVELOPE_SELECT}, strftime(created, '%Y-%m') AS month "
        f"FROM events{where} ORDER BY commit_position) TO '{_sql_path(out)}' "
        "(FORMAT parquet, PARTITION_BY (category, month), OVERWRITE_OR_IGNORE true)",
        params,
    )
    return out


_RAW_COLUMNS = (
    "commit_position, prepare_position, stream_name, stream_revision, {id} AS event_id, "
    "event_type, created, content_type, {data} AS data, {meta} AS metadata"
)


def export_archive(
    con: duckdb.DuckDBPyConnection,
    out: Path,
    f: EventFilter,
    *,
    fmt: Literal["jsonl", "parquet"],
    include_rejected: bool,
) -> Path:
    """Write events (and rejected events) as a RAW_SCHEMA archive.

    Written beside `out` and then renamed, so a half-written archive never carries the real name.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    where, params = where_sql(f)
    parts = [
        "SELECT "
        + _RAW_COLUMNS.format(
            id="event_id::VARCHAR", data="encode(data)", meta="encode(coalesce(metadata, ''))"
        )
        + f" FROM events{where}"
    ]
    if include_rejected:
        rejected_where, rejected_params = where_sql(f, category="split_part(stream_name, '-', 1)")
        parts.append(
            "SELECT "
            + _RAW_COLUMNS.format(id="event_id", data="data", meta="metadata")
            + f" FROM _rejected{rejected_where}"
        )
        params = params + rejected_params
    sql = " UNION ALL ".join(parts) + " ORDER BY commit_position, event_id"
    tmp = out.with_name(out.name + ".partial")
    if fmt == "parquet":
        q(con, f"COPY ({sql}) TO '{_sql_path(tmp)}' (FORMAT parquet)", params)
    else:
        _write_jsonl(con, sql, params, tmp, gz=out.suffix == ".gz")
    tmp.replace(out)
    return out


def _write_jsonl(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any], path: Path, *, gz: bool
) -> None:
    # The archive format of events.archive_line, built in SQL: text payloads as JSON
    # strings, non-UTF-8 bytes as base64, `created` as ISO 8601 with a trailing Z.
    line = (
        "SELECT json_object('commit_position', commit_position, 'prepare_position', "
        "prepare_position, 'stream_name', stream_name, 'stream_revision', stream_revision, "
        "'event_id', event_id, 'event_type', event_type, 'created', "
        "strftime(created, '%Y-%m-%dT%H:%M:%S.%fZ'), 'content_type', content_type) AS head, "
        "try(decode(data)) AS d, try(decode(metadata)) AS m, data, metadata "
        f"FROM ({sql})"
    )
    body = (
        "SELECT rtrim(head::VARCHAR, '}') || "
        "CASE WHEN d IS NULL THEN ',\"data_base64\":' || to_json(to_base64(data)) "
        "     ELSE ',\"data\":' || to_json(d) END || "
        "CASE WHEN m IS NULL THEN ',\"metadata_base64\":' || to_json(to_base64(metadata)) "
        "     ELSE ',\"metadata\":' || to_json(m) END || '}' AS line "
        f"FROM ({line})"
    )
    cursor = con.cursor()  # a stream of its own: the lake stays usable meanwhile
    try:
        q(cursor, "SET TimeZone = 'UTC'")
        rel = cursor.sql(body, params=params)
        assert rel is not None
        opener: Any = gzip.open if gz else open
        with opener(path, "wt", encoding="utf-8", newline="\n") as fh:
            for batch in rel.to_arrow_reader(50_000):
                for text in batch.column(0).to_pylist():
                    fh.write(text)
                    fh.write("\n")
    finally:
        cursor.close()
