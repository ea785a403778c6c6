"""Typed views: one per event type, the JSON payload flattened into typed columns (private).

The schema is inferred from the data and kept current by sync, at a cost proportional to the
new events: each batch adds its payload statistics to `_payload_fields` (per event type and JSON
path: how often each JSON type occurred, and for strings whether they were plain decimal numbers,
timestamps or dates, with the largest scale), and when an event type's inferred columns change,
its view `typed."<event type>"` is rebuilt. Shapes come from `json_structure` grouped per batch;
string values are only examined for paths whose type could still be something other than
VARCHAR (a path that has held free text stays VARCHAR, so ids and names are not re-checked).
Views read `events` through one `json_transform` per row and never fail on a value that does not
fit: it reads NULL.

Inference per path: strings of plain decimals such as "12.50" (possibly mixed with JSON numbers)
-> DECIMAL(18, s), s the largest scale seen (DECIMAL(38, s) when wider): money stays exact;
integers -> BIGINT; other numbers -> DOUBLE; booleans -> BOOLEAN; ISO 8601 timestamps ->
TIMESTAMPTZ; dates -> DATE; arrays, and paths that are sometimes objects -> JSON text; nested
objects are flattened to dotted names ("address.city"); anything mixed -> VARCHAR.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

__all__ = ["DDL", "ENVELOPE_COLUMNS", "infer_type", "update_after_insert", "view_name"]

# Per event type and JSON path, the inference state: which JSON kinds occurred, and for the
# values examined as text (paths that held strings), whether all were plain decimal numbers,
# timestamps or dates, any had a fraction, and the largest scale and integer digits. The state
# only changes when the data shows something new, so a batch usually writes nothing here.
DDL = [
    """CREATE TABLE IF NOT EXISTS _payload_fields (
        event_type VARCHAR NOT NULL,
        path VARCHAR NOT NULL,
        kinds VARCHAR NOT NULL,
        all_numeric BOOLEAN,
        any_fraction BOOLEAN,
        all_timestamp BOOLEAN,
        all_date BOOLEAN,
        max_scale INTEGER,
        max_int_digits INTEGER,
        sql_type VARCHAR,
        PRIMARY KEY (event_type, path)
    )""",
]
_STATE = (
    "kinds",
    "all_numeric",
    "any_fraction",
    "all_timestamp",
    "all_date",
    "max_scale",
    "max_int_digits",
    "sql_type",
)
_FIELDS_SCHEMA = pa.schema(
    [
        pa.field("event_type", pa.string()),
        pa.field("path", pa.string()),
        pa.field("kinds", pa.string()),
        pa.field("all_numeric", pa.bool_()),
        pa.field("any_fraction", pa.bool_()),
        pa.field("all_timestamp", pa.bool_()),
        pa.field("all_date", pa.bool_()),
        pa.field("max_scale", pa.int32()),
        pa.field("max_int_digits", pa.int32()),
        pa.field("sql_type", pa.string()),
    ]
)

# Envelope columns every typed view starts with; payload paths with these names get "data.".
ENVELOPE_COLUMNS = (
    "commit_position",
    "stream_name",
    "stream_revision",
    "event_id",
    "event_type",
    "created",
    "occurred_at",
    "category",
    "correlation_id",
    "causation_id",
)

_NUMBER = r"-?[0-9]+(\.[0-9]+)?"
_TIMESTAMP = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?"
)
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_ACCEPTED = "reason IS NULL AND NOT redelivered"  # the batch's new events in `_staged`
_KINDS = {
    "UBIGINT": "int",
    "BIGINT": "int",
    "HUGEINT": "int",
    "DOUBLE": "double",
    "VARCHAR": "string",
    "BOOLEAN": "bool",
    "NULL": "null",
}


def infer_type(s: dict[str, Any]) -> str | None:
    """The SQL type of one path from its inference state, or None when it is only ever an
    object (then its children are the columns).

    Example:
        >>> infer_type({"kinds": "string", "all_numeric": True, "any_fraction": True,
        ...             "all_timestamp": False, "all_date": False, "max_scale": 2,
        ...             "max_int_digits": 3})
        'DECIMAL(18,2)'
    """
    kinds = set(s["kinds"].split(",")) - {"null", ""}
    if "object" in kinds:
        return None if kinds == {"object"} else "JSON"
    if not kinds:
        return "VARCHAR"
    if kinds == {"array"}:
        return "JSON"
    if kinds == {"bool"}:
        return "BOOLEAN"
    if (
        "string" in kinds
        and kinds <= {"string", "int", "double"}
        and s["all_numeric"]
        and (s["any_fraction"])
    ):
        scale = min(int(s["max_scale"] or 0), 18)
        digits = int(s["max_int_digits"] or 0) + scale
        if digits <= 18:
            return f"DECIMAL(18,{scale})"
        return f"DECIMAL(38,{scale})" if digits <= 38 else "VARCHAR"
    if kinds == {"int"}:
        return "BIGINT"
    if kinds <= {"int", "double"}:
        return "DOUBLE"
    if kinds == {"string"}:
        if s["all_timestamp"]:
            return "TIMESTAMPTZ"
        if s["all_date"]:
            return "DATE"
    return "VARCHAR"


def _leaves(structure: Any, keys: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """(keys, kind) for every node of a json_structure value except the root object."""
    if isinstance(structure, dict):
        if keys:
            yield keys, "object"
        for k, v in structure.items():
            yield from _leaves(v, (*keys, k))
    elif isinstance(structure, list):
        yield keys, "array"
    else:
        # "JSON" is an empty object (or a type json_structure could not name)
        yield keys, "object" if structure == "JSON" else _KINDS.get(structure, "string")


def _settled(s: dict[str, Any]) -> bool:
    """Strings at this path have ruled out every type but VARCHAR: stop examining them."""
    return s["all_numeric"] is False and s["all_timestamp"] is False and s["all_date"] is False


_NOT_CHECKED = (0, 0, 0, 0, 0, None, None)


def _check_strings(
    con: duckdb.DuckDBPyConnection, checks: dict[tuple[str, tuple[str, ...]], dict[str, Any]]
) -> dict[tuple[str, tuple[str, ...]], tuple[Any, ...]]:
    """For each (event type, path) asked for: (values, plain numbers, with a fraction,
    timestamps, dates, largest scale, largest integer digits) among the batch's events.

    One query and one json_transform per event for the whole batch (the union of the paths,
    grouped by event type); a test is only run where it can still change the path's type
    (strings that were ever not numbers are not tested for numbers again)."""
    paths = sorted({keys for _, keys in checks})
    need: dict[tuple[str, ...], set[str]] = {}
    for (_, keys), state in checks.items():
        wanted = need.setdefault(keys, set())
        for flag in ("all_numeric", "all_timestamp", "all_date"):
            if state[flag] is not False:
                wanted.add(flag)
    structure: dict[str, Any] = {}
    for keys in paths:
        node = structure
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):  # also a leaf elsewhere: read it as text
                break
            node = child
        else:
            if keys[-1] not in node:
                node[keys[-1]] = "VARCHAR"
    values = ", ".join(
        f"p{''.join(f'[{_literal(k)}]' for k in keys)}::VARCHAR AS v{i}"
        for i, keys in enumerate(paths)
    )
    # Each test runs once per value in the inner select; the aggregates only read its flags.
    tests, aggregates = [], []
    for i, keys in enumerate(paths):
        v, wanted = f"v{i}", need[keys]
        plain = f"regexp_full_match({v}, '{_NUMBER}')" if "all_numeric" in wanted else "false"
        ts = f"regexp_full_match({v}, '{_TIMESTAMP}')" if "all_timestamp" in wanted else "false"
        date = f"regexp_full_match({v}, '{_DATE}')" if "all_date" in wanted else "false"
        tests.append(
            f"{v}, {plain} AS n{i}, {ts} AS t{i}, {date} AS d{i}, "
            f"position('.' IN {v}) AS p{i}, length({v}) AS l{i}, "
            f"starts_with({v}, '-')::INTEGER AS m{i}"
        )
        aggregates.append(
            f"count({v}), sum(n{i}::INTEGER), sum((n{i} AND p{i} > 0)::INTEGER), "
            f"sum(t{i}::INTEGER), sum(d{i}::INTEGER), "
            f"max(CASE WHEN n{i} THEN (CASE WHEN p{i} > 0 THEN l{i} - p{i} ELSE 0 END) END), "
            f"max(CASE WHEN n{i} THEN (CASE WHEN p{i} > 0 THEN p{i} - 1 ELSE l{i} END) - m{i} "
            f"END)"
        )
    found = con.execute(
        f"SELECT event_type, {', '.join(aggregates)} FROM (SELECT event_type, {', '.join(tests)} "
        f"FROM (SELECT event_type, {values} FROM (SELECT event_type, "
        f"json_transform(data_text, {_literal(json.dumps(structure))}) AS p FROM _staged "
        f"WHERE {_ACCEPTED} AND list_contains(?, event_type)))) GROUP BY event_type",
        [sorted({t for t, _ in checks})],
    ).fetchall()
    out: dict[tuple[str, tuple[str, ...]], tuple[Any, ...]] = {}
    for row in found:
        for i, keys in enumerate(paths):
            out[(row[0], keys)] = tuple(row[1 + i * 7 : 1 + (i + 1) * 7])
    return out


def _merge_flag(old: bool | None, new: bool) -> bool:
    return new if old is None else old and new


def update_after_insert(con: duckdb.DuckDBPyConnection) -> None:
    """Merge the batch's payload shapes into the inference state; rebuild changed views."""
    shapes = con.execute(
        f"SELECT event_type, json_structure(data_text) FROM _staged WHERE {_ACCEPTED} GROUP BY ALL"
    ).fetchall()
    batch: dict[tuple[str, str], set[str]] = {}
    for event_type, structure in shapes:
        for keys, kind in _leaves(json.loads(structure)):
            batch.setdefault((event_type, json.dumps(list(keys))), set()).add(kind)
    types = sorted({t for t, _ in batch})
    cur = con.execute("SELECT * FROM _payload_fields WHERE list_contains(?, event_type)", [types])
    names = [d[0] for d in cur.description]
    stored = {(r[0], r[1]): dict(zip(names, r, strict=True)) for r in cur.fetchall()}

    merged: dict[tuple[str, str], dict[str, Any]] = {}
    checks: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for key, kinds in batch.items():
        old = stored.get(key) or {
            "event_type": key[0],
            "path": key[1],
            "kinds": "",
            **dict.fromkeys(_STATE[1:]),
        }
        new = dict(old)
        new["kinds"] = ",".join(sorted(set(filter(None, old["kinds"].split(","))) | kinds))
        merged[key] = new
        if "string" in new["kinds"] and kinds & {"string", "int", "double"} and not _settled(old):
            checks[(key[0], tuple(json.loads(key[1])))] = old
    found = _check_strings(con, checks) if checks else {}
    for event_type, keys in checks:
        n, numeric, fraction, ts, date, scale, digits = found.get((event_type, keys), _NOT_CHECKED)
        if not n:
            continue
        m = merged[(event_type, json.dumps(list(keys)))]
        # A test that was not run (its flag was already False) counts 0: the flag stays False.
        m["all_numeric"] = _merge_flag(m["all_numeric"], numeric == n)
        m["any_fraction"] = bool(m["any_fraction"]) or fraction > 0
        m["all_timestamp"] = _merge_flag(m["all_timestamp"], ts == n)
        m["all_date"] = _merge_flag(m["all_date"], date == n)
        m["max_scale"] = _max(m["max_scale"], scale)
        m["max_int_digits"] = _max(m["max_int_digits"], digits)

    changes = []
    for key, m in merged.items():
        m["sql_type"] = infer_type(m)
        before = stored.get(key)
        if before is None or any(before[c] != m[c] for c in _STATE):
            changes.append(m)
    if not changes:
        return
    con.register("_field_updates", pa.Table.from_pylist(changes, schema=_FIELDS_SCHEMA))
    try:
        con.execute(
            "INSERT OR REPLACE INTO _payload_fields SELECT * FROM _field_updates"
        ).fetchall()
    finally:
        con.unregister("_field_updates")
    for event_type in sorted({m["event_type"] for m in changes}):
        fields = con.execute(
            "SELECT path, sql_type FROM _payload_fields WHERE event_type = ? "
            "AND sql_type IS NOT NULL",
            [event_type],
        ).fetchall()
        con.execute(
            _view_sql(event_type, [(tuple(json.loads(p)), t) for p, t in fields])
        ).fetchall()


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def view_name(event_type: str) -> str:
    """The quoted SQL name of an event type's typed view.

    Example:
        >>> view_name("BalanceDeposited")
        'typed."BalanceDeposited"'
    """
    return "typed." + _ident(event_type)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _view_sql(event_type: str, fields: list[tuple[tuple[str, ...], str]]) -> str:
    structure: dict[str, Any] = {}
    select: list[str] = []
    used = set(ENVELOPE_COLUMNS)
    for keys, sql_type in sorted(fields):
        if not keys:  # the payload itself is not an object
            select.append(f"TRY_CAST(data AS {sql_type}) AS value")
            continue
        node = structure
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):  # under a path that is sometimes an object: JSON
                break
            node = child
        else:
            node[keys[-1]] = sql_type
            column = ".".join(keys)
            if column in used:
                column = "data." + column
            used.add(column)
            ref = "p" + "".join(f"[{_literal(k)}]" for k in keys)
            select.append(f"{ref} AS {_ident(column)}")
    cols = ", ".join(ENVELOPE_COLUMNS).replace("event_id", "event_id::VARCHAR AS event_id")
    payload = ""
    if structure:
        payload = f", json_transform(data, {_literal(json.dumps(structure))}) AS p"
    extra = "".join(", " + s for s in select)
    return (
        f"CREATE OR REPLACE VIEW {view_name(event_type)} AS "
        f"SELECT {cols}{extra} FROM (SELECT *{payload} FROM main.events "
        f"WHERE event_type = {_literal(event_type)})"
    )
