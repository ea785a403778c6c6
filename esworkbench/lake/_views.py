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

__all__ = [
    "DDL",
    "ENVELOPE_COLUMNS",
    "FieldState",
    "infer_type",
    "update_after_insert",
    "view_name",
]

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
# The batch's new events in `_staged` that inference learns from: flagged payloads (not an
# object, numbers out of range) are kept in the lake but would only mislead the column types.
_ACCEPTED = "reason IS NULL AND NOT redelivered AND NOT untyped"
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
    """The SQL type of one path from its inference state.

    None when it is only ever an object (then its children are the columns).

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
    """(keys, kind) for every node of a json_structure value except the root."""
    if not keys and not isinstance(structure, dict):
        return  # not an object (or an empty one): nothing to flatten
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
_Key = tuple[str, tuple[str, ...]]  # (event type, keys of the path)


class FieldState:
    """The committed `_payload_fields` rows, cached for the length of a sync.

    The lake drops the cache whenever a transaction fails, so it never holds what was rolled back.
    """

    def __init__(self) -> None:
        self.rows: dict[_Key, dict[str, Any]] | None = None

    def load(self, con: duckdb.DuckDBPyConnection) -> dict[_Key, dict[str, Any]]:
        if self.rows is None:
            cur = con.execute("SELECT * FROM _payload_fields")
            names = [d[0] for d in cur.description]
            self.rows = {}
            for r in cur.fetchall():
                row = dict(zip(names, r, strict=True))
                self.rows[(row["event_type"], tuple(json.loads(row["path"])))] = row
        return self.rows


def _tests(
    paths: list[tuple[str, ...]], need: dict[tuple[str, ...], set[str]]
) -> tuple[str, str, str, str]:
    """SQL pieces that examine the text of each path's values.

    The json_transform expression (NULL when no path fits its struct), the value columns, the
    per-value tests (run once each), and the aggregates (seven per path: values, plain
    numbers, with a fraction, timestamps, dates, scale, digits).
    """
    structure, in_struct = _struct_plan([(keys, "VARCHAR") for keys in paths])
    values = ", ".join(
        (
            f"{_struct_ref(keys)}::VARCHAR AS v{i}"
            if keys in in_struct
            else f"json_extract_string(data_text, {_pointer(keys)}) AS v{i}"
        )
        for i, keys in enumerate(paths)
    )
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
    transform = (
        f"json_transform(data_text, {_literal(json.dumps(structure))})" if structure else "NULL"
    )
    return transform, values, ", ".join(tests), ", ".join(aggregates)


def _needs(checks: dict[_Key, dict[str, Any]]) -> dict[tuple[str, ...], set[str]]:
    # A test is only run where it can still change the path's type: strings that were ever
    # not numbers are not tested for numbers again.
    need: dict[tuple[str, ...], set[str]] = {}
    for (_, keys), state in checks.items():
        wanted = need.setdefault(keys, set())
        for flag in ("all_numeric", "all_timestamp", "all_date"):
            if state[flag] is not False:
                wanted.add(flag)
    return need


def _add(found: dict[_Key, list[Any]], key: _Key, row: tuple[Any, ...]) -> None:
    """Merge one group's seven figures into the running figures of (event type, path)."""
    acc = found.get(key)
    if acc is None:
        acc = found[key] = [0, 0, 0, 0, 0, None, None]
    for i in range(5):  # sums are NULL over groups without values
        acc[i] += row[i] or 0
    acc[5], acc[6] = _max(acc[5], row[5]), _max(acc[6], row[6])


def _scan(
    con: duckdb.DuckDBPyConnection, checks: dict[_Key, dict[str, Any]]
) -> tuple[list[tuple[str, str]], dict[_Key, list[Any]]]:
    """One pass over the batch's new events.

    Their shapes (json_structure per event type) and the text figures of the paths in `checks`, in
    the same query.
    """
    paths = sorted({keys for _, keys in checks})
    types = sorted({t for t, _ in checks})
    if not paths:
        shapes = con.execute(
            f"SELECT event_type, st FROM _staged WHERE {_ACCEPTED} GROUP BY ALL"
        ).fetchall()
        return [(t, st) for t, st in shapes], {}
    transform, values, tests, aggregates = _tests(paths, _needs(checks))
    rows = con.execute(
        f"SELECT event_type, st, {aggregates} FROM (SELECT event_type, st, {tests} FROM "
        f"(SELECT event_type, st, {values} FROM (SELECT event_type, data_text, "
        f"st, CASE WHEN list_contains(?, event_type) THEN "
        f"{transform} END AS p FROM _staged "
        f"WHERE {_ACCEPTED}))) GROUP BY event_type, st",
        [types],
    ).fetchall()
    found: dict[_Key, list[Any]] = {}
    for row in rows:
        for i, keys in enumerate(paths):
            if (row[0], keys) in checks:
                _add(found, (row[0], keys), row[2 + i * 7 : 2 + (i + 1) * 7])
    return [(r[0], r[1]) for r in rows], found


def _check_strings(
    con: duckdb.DuckDBPyConnection, checks: dict[_Key, dict[str, Any]]
) -> dict[_Key, list[Any]]:
    """The text figures of paths that showed strings for the first time in this batch."""
    paths = sorted({keys for _, keys in checks})
    transform, values, tests, aggregates = _tests(paths, _needs(checks))
    rows = con.execute(
        f"SELECT event_type, {aggregates} FROM (SELECT event_type, {tests} "
        f"FROM (SELECT event_type, {values} FROM (SELECT event_type, data_text, "
        f"{transform} AS p FROM _staged "
        f"WHERE {_ACCEPTED} AND list_contains(?, event_type)))) GROUP BY event_type",
        [sorted({t for t, _ in checks})],
    ).fetchall()
    found: dict[_Key, list[Any]] = {}
    for row in rows:
        for i, keys in enumerate(paths):
            if (row[0], keys) in checks:
                _add(found, (row[0], keys), row[1 + i * 7 : 1 + (i + 1) * 7])
    return found


def _merge_flag(old: bool | None, new: bool) -> bool:
    return new if old is None else old and new


def _blank(key: _Key) -> dict[str, Any]:
    return {
        "event_type": key[0],
        "path": json.dumps(list(key[1])),
        "kinds": "",
        **dict.fromkeys(_STATE[1:]),
    }


def _wants_text(state: dict[str, Any]) -> bool:
    return "string" in state["kinds"] and not _settled(state)


def update_after_insert(con: duckdb.DuckDBPyConnection, cache: FieldState) -> None:
    """Merge the batch's payload shapes into the inference state; rebuild changed views.

    Usually one query: the paths whose text needs examining are known from earlier batches;
    only paths showing strings for the first time take a second query.
    """
    stored = cache.load(con)
    expected = {key: state for key, state in stored.items() if _wants_text(state)}
    shapes, found = _scan(con, expected)
    batch: dict[_Key, set[str]] = {}
    for event_type, structure in shapes:
        for keys, kind in _leaves(json.loads(structure)):
            batch.setdefault((event_type, keys), set()).add(kind)

    merged: dict[_Key, dict[str, Any]] = {}
    late: dict[_Key, dict[str, Any]] = {}
    for key, kinds in batch.items():
        old = stored.get(key) or _blank(key)
        new = dict(old)
        new["kinds"] = ",".join(sorted(set(filter(None, old["kinds"].split(","))) | kinds))
        merged[key] = new
        if (
            key not in expected
            and "string" in new["kinds"]
            and kinds & {"string", "int", "double"}
            and not _settled(old)
        ):
            late[key] = old
    if late:
        found |= _check_strings(con, late)
    for key, (n, numeric, fraction, ts, date, scale, digits) in found.items():
        if not n or key not in merged:
            continue
        m = merged[key]
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
            stored[key] = m
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
        fields = [
            (keys, s["sql_type"])
            for (t, keys), s in stored.items()
            if t == event_type and s["sql_type"] is not None
        ]
        con.execute(_view_sql(event_type, fields)).fetchall()


def _under_leaf(keys: tuple[str, ...], fields: list[tuple[tuple[str, ...], str]]) -> bool:
    prefixes = {keys[:i] for i in range(1, len(keys))}
    return any(k in prefixes for k, _ in fields)


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


def _struct_plan(
    fields: list[tuple[tuple[str, ...], str]],
) -> tuple[dict[str, Any], set[tuple[str, ...]]]:
    """The struct one json_transform reads, and which paths it holds.

    Paths left out are read by JSON pointer instead: a struct cannot hold an empty key, nor two
    keys that differ only in case (DuckDB's struct fields are case-insensitive), nor a key that
    is a leaf in one event and an object in another.
    """
    structure: dict[str, Any] = {}
    held: set[tuple[str, ...]] = set()
    for keys, sql_type in sorted(fields):
        if not keys or "" in keys:
            continue
        node = structure
        for i, k in enumerate(keys):
            if k not in node and any(o.lower() == k.lower() for o in node):
                break  # a sibling differs only in case
            if i == len(keys) - 1:
                if k not in node:  # else it is an object here
                    node[k] = sql_type
                    held.add(keys)
                break
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                break  # a leaf here
            node = child
    return _pruned(structure), held


def _pruned(node: dict[str, Any]) -> dict[str, Any]:
    """The struct without empty objects (json_transform refuses them)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, dict):
            v = _pruned(v)
            if not v:
                continue
        out[k] = v
    return out


def _struct_ref(keys: tuple[str, ...]) -> str:
    return "p" + "".join(f"[{_literal(k)}]" for k in keys)


def _pointer(keys: tuple[str, ...]) -> str:
    """A JSON pointer literal for the path (exact and case-sensitive, empty keys included)."""
    return _literal("".join("/" + k.replace("~", "~0").replace("/", "~1") for k in keys))


def _column(keys: tuple[str, ...], used: set[str]) -> str:
    """A column name for the path, unique among `used` (compared as DuckDB does: no case)."""
    column = ".".join(keys)
    if not column or column.lower() in used:
        column = "data." + column
    base, n = column, 2
    while column.lower() in used:
        column, n = f"{base}~{n}", n + 1
    used.add(column.lower())
    return column


def _view_sql(event_type: str, fields: list[tuple[tuple[str, ...], str]]) -> str:
    structure, held = _struct_plan(fields)
    select: list[str] = []
    used = {c.lower() for c in ENVELOPE_COLUMNS}
    for keys, sql_type in sorted(fields):
        if not keys:
            continue
        if keys in held:
            ref = _struct_ref(keys)
        elif _under_leaf(keys, fields):
            continue  # under a path that is sometimes an object: that path's JSON has it
        elif sql_type == "JSON":
            ref = f"json_extract(data, {_pointer(keys)})"
        else:
            ref = f"TRY_CAST(json_extract_string(data, {_pointer(keys)}) AS {sql_type})"
        select.append(f"{ref} AS {_ident(_column(keys, used))}")
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
