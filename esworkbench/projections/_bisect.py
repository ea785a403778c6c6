"""Divergence: for each key where two read models differ, the first event after which they do.

Python projections (both sides): the events of the window, restricted to the keys' streams when
the projection says where a key lives (``stream_of``), are replayed through both versions at
once, copying each watched key's row after each of its events; the first commit position after
which the two rows differ (on their shared columns) is exact, even when they later agree again.

A SQL projection on either side has no per-event handlers: the position is found by bisection
over the window's event positions, running each side as of a position (a SQL projection's query
over [first, p], a Python side from its trace). Bisection assumes that once the two differ they
go on differing, which holds for aggregations that only accumulate.

Each divergence is also a row of the findings vocabulary (kind ``projection_divergence``).

Example:
    >>> found = divergences(lake, V1, V2, keys=comparison.diff.keys)  # doctest: +SKIP
"""

from __future__ import annotations

import bisect as _bisect
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from esworkbench.findings import FINDINGS_SCHEMA, severity_of
from esworkbench.lake import Lake
from esworkbench.projections import _engine as engine
from esworkbench.projections._definition import (
    ProjectionLike,
    ProjectionSpec,
    Row,
    resolve_projection,
)
from esworkbench.projections._rebuild import _writable, pin_window

__all__ = ["DIVERGENCE_KIND", "Divergences", "divergences"]

DIVERGENCE_KIND = "projection_divergence"
DIVERGENCE_RULE = "projection_compare"
_EVENT_COLUMNS = ("commit_position", "stream_name", "stream_revision", "event_type", "event_id")


@dataclasses.dataclass(frozen=True)
class Divergences:
    """Where two read models start to differ, per key.

    Attributes:
        table: one row per differing key: ``key``, the event after which the rows first differ
            (``commit_position``, ``stream_name``, ``stream_revision``, ``event_type``,
            ``event_id``), ``columns`` (the columns that differ right after it), and the rows
            just before and just after it in A and in B (``a_before``, ``b_before``,
            ``a_after``, ``b_after``: JSON text; null where the key had no row yet). A key whose
            final rows differ only because one side never saw it has its first event here too.
        traces: per key, the rows of A and B after each of its events (Python sides).
        method: "replay" (exact, per event) or "bisection" (over positions).
    """

    table: pl.DataFrame
    traces: dict[str, pl.DataFrame]
    method: str

    def drill_down(self, key: str) -> pl.DataFrame:
        """The key's events with A's and B's rows after each (empty when not traced).

        Example:
            >>> found.drill_down("42")  # doctest: +SKIP
        """
        return self.traces.get(key, pl.DataFrame())

    def findings(self) -> pl.DataFrame:
        """The divergences as findings rows (``FINDINGS_SCHEMA``)."""
        t = self.table
        occurred = (
            pl.col("occurred_at") if "occurred_at" in t.columns else pl.lit(None, pl.Datetime)
        )
        frame = t.select(
            pl.lit(DIVERGENCE_RULE).alias("rule"),
            pl.lit(DIVERGENCE_KIND).alias("kind"),
            pl.lit(severity_of(DIVERGENCE_KIND)).alias("severity"),
            "stream_name",
            pl.col("stream_revision").cast(pl.UInt64),
            pl.col("commit_position").cast(pl.UInt64),
            "event_id",
            "event_type",
            occurred.alias("occurred_at"),
            pl.format(
                "key {}: the read models differ in {} after this event",
                pl.col("key"),
                pl.col("columns").list.join(", "),
            ).alias("message"),
            pl.struct(pl.col("key").cast(pl.String), pl.col("columns"))
            .struct.json_encode()
            .alias("evidence"),
            pl.lit("ReadModelDivergence").alias("error"),
        )
        return frame.cast(dict(zip(FINDINGS_SCHEMA.names, _pl_types(), strict=True)))


def divergences(
    lake: Lake | str | Path,
    a: ProjectionLike,
    b: ProjectionLike,
    *,
    keys: Sequence[str],
    first_position: int | None = None,
    last_position: int | None = None,
) -> Divergences:
    """For each key, the first event in the window after which `a` and `b` give different rows.

    Args:
        lake: the lake (a path is opened for writing only if a SQL side needs its scratch).
        a: projection A (class or import path).
        b: projection B.
        keys: the keys to trace (usually ``compare(...).diff.keys``).
        first_position: the window's first commit position (default: the lake's first).
        last_position: the window's last commit position (default: the lake's head).

    Example:
        >>> divergences(lake, V1, V2, keys=["42"]).table  # doctest: +SKIP
    """
    spec_a, spec_b = resolve_projection(a), resolve_projection(b)
    wanted = sorted(set(keys))
    with _writable(lake) as lake_:
        first, last = pin_window(lake_, first_position, last_position)
        if not wanted:
            return Divergences(_empty_table(), {}, "replay")
        events = _events(lake_, (spec_a, spec_b), wanted, first, last)
        if spec_a.kind == spec_b.kind == "python":
            trace_a = _trace(spec_a, events, wanted)
            trace_b = _trace(spec_b, events, wanted)
            rows = [_first_difference(k, trace_a.get(k, []), trace_b.get(k, [])) for k in wanted]
            traces = {k: _drill(trace_a.get(k, []), trace_b.get(k, [])) for k in wanted}
            return Divergences(_table(rows), traces, "replay")
        sides = [_side(lake_, s, events, wanted, first) for s in (spec_a, spec_b)]
        positions = events.column("commit_position").to_pylist()
        by_position = {p: i for i, p in enumerate(positions)}
        found = []
        for k in wanted:
            at = _bisect_key(k, positions, sides[0], sides[1])
            if at is None:
                found.append(_no_difference(k))
                continue
            i = by_position[positions[at]]
            event = {c: events.column(c)[i].as_py() for c in _EVENT_COLUMNS}
            before = positions[at - 1] if at > 0 else None
            found.append(
                _row(
                    k,
                    event,
                    a_before=None if before is None else sides[0](k, before),
                    b_before=None if before is None else sides[1](k, before),
                    a_after=sides[0](k, positions[at]),
                    b_after=sides[1](k, positions[at]),
                )
            )
        return Divergences(_table(found), {}, "bisection")


# --- replay (Python on both sides) -----------------------------------------------------------


Trace = dict[str, list[tuple[dict[str, Any], Row]]]


def _events(
    lake: Lake, specs: Sequence[ProjectionSpec], keys: list[str], first: int, last: int
) -> pa.Table:
    types = sorted({t for s in specs for t in s.event_types()})
    streams: list[str] | None = None
    if all(s.kind == "python" and s.partition == "stream" for s in specs):
        found = {s.python().stream_of(k) for s in specs for k in keys}
        if None not in found:
            streams = sorted(str(s) for s in found)
    return lake.read_arrow(
        event_types=types, streams=streams, from_position=first, to_position=last
    ).select(list(engine.INPUT_COLUMNS))


def _trace(spec: ProjectionSpec, events: pa.Table, keys: list[str]) -> Trace:
    applied = engine.apply_events(spec.python(), events, {}, watch=frozenset(keys))
    out: Trace = {}
    for t in applied.trace:
        event = {c: t[c] for c in _EVENT_COLUMNS}
        out.setdefault(t["key"], []).append((event, t["row"]))
    return out


def _first_difference(
    key: str,
    a: list[tuple[dict[str, Any], Row]],
    b: list[tuple[dict[str, Any], Row]],
) -> dict[str, Any]:
    """Walk both traces in position order; the first event after which the rows differ."""
    steps = sorted(
        {e["commit_position"]: e for e, _ in [*a, *b]}.values(),
        key=lambda e: e["commit_position"],
    )
    rows_a = {e["commit_position"]: r for e, r in a}
    rows_b = {e["commit_position"]: r for e, r in b}
    now_a: Row | None = None
    now_b: Row | None = None
    for event in steps:
        before_a, before_b = now_a, now_b
        now_a = rows_a.get(event["commit_position"], now_a)
        now_b = rows_b.get(event["commit_position"], now_b)
        if _differing(now_a, now_b):
            return _row(
                key, event, a_before=before_a, b_before=before_b, a_after=now_a, b_after=now_b
            )
    return _no_difference(key)


def _drill(
    a: list[tuple[dict[str, Any], Row]], b: list[tuple[dict[str, Any], Row]]
) -> pl.DataFrame:
    """A key's events with A's and B's row after each, and whether they differ then."""
    rows_a = {e["commit_position"]: r for e, r in a}
    rows_b = {e["commit_position"]: r for e, r in b}
    events = sorted({e["commit_position"]: e for e, _ in [*a, *b]}.values(), key=_position)
    out = []
    now_a: Row | None = None
    now_b: Row | None = None
    for event in events:
        now_a = rows_a.get(event["commit_position"], now_a)
        now_b = rows_b.get(event["commit_position"], now_b)
        out.append(
            {
                **event,
                "differ": _differing(now_a, now_b),
                "columns": _columns(now_a, now_b),
                "a": _json(now_a),
                "b": _json(now_b),
            }
        )
    return pl.DataFrame(out) if out else pl.DataFrame()


# --- bisection (a SQL side) ------------------------------------------------------------------

RowAt = Callable[[str, int], Row | None]


def _side(lake: Lake, spec: ProjectionSpec, events: pa.Table, keys: list[str], first: int) -> RowAt:
    """A function (key, position) -> the key's row as of that position."""
    if spec.kind == "python":
        trace = _trace(spec, events, keys)

        def from_trace(key: str, position: int) -> Row | None:
            steps = trace.get(key, [])
            at = _bisect.bisect_right([e["commit_position"] for e, _ in steps], position)
            return steps[at - 1][1] if at else None

        return from_trace
    store = lake.read_model(f"{spec.name}_bisect", spec.version)
    sql = getattr(spec.cls, "sql")  # noqa: B009 (a SqlProjection's query)
    cache: dict[int, dict[str, Row]] = {}

    def from_sql(key: str, position: int) -> Row | None:
        if position not in cache:
            frame = store.query(sql, key=spec.key, first=first, last=position)
            cache[position] = {r[spec.key]: r for r in frame.to_dicts()}
        return cache[position].get(key)

    return from_sql


def _bisect_key(key: str, positions: list[int], a: RowAt, b: RowAt) -> int | None:
    """The index of the first position at which the key's rows differ (None: never)."""
    if not positions or not _differing(a(key, positions[-1]), b(key, positions[-1])):
        return None
    lo, hi = 0, len(positions) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _differing(a(key, positions[mid]), b(key, positions[mid])):
            hi = mid
        else:
            lo = mid + 1
    return lo


# --- rows --------------------------------------------------------------------------------------


def _position(event: dict[str, Any]) -> int:
    return int(event["commit_position"])


def _shared(a: Row, b: Row) -> list[str]:
    return [c for c in a if c in b]


def _differing(a: Row | None, b: Row | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return any(a[c] != b[c] for c in _shared(a, b))


def _columns(a: Row | None, b: Row | None) -> list[str]:
    if a is None or b is None:
        return sorted((a or b or {}).keys()) if (a is None) != (b is None) else []
    return [c for c in _shared(a, b) if a[c] != b[c]]


def _json(row: Row | None) -> str | None:
    if row is None:
        return None
    import json

    return json.dumps({k: None if v is None else str(v) for k, v in row.items()})


def _row(
    key: str,
    event: dict[str, Any],
    *,
    a_before: Row | None,
    b_before: Row | None,
    a_after: Row | None,
    b_after: Row | None,
) -> dict[str, Any]:
    return {
        "key": key,
        **{c: event[c] for c in _EVENT_COLUMNS},
        "columns": _columns(a_after, b_after),
        "a_before": _json(a_before),
        "b_before": _json(b_before),
        "a_after": _json(a_after),
        "b_after": _json(b_after),
    }


def _no_difference(key: str) -> dict[str, Any]:
    return {
        "key": key,
        **dict.fromkeys(_EVENT_COLUMNS),
        "columns": [],
        **dict.fromkeys(("a_before", "b_before", "a_after", "b_after")),
    }


_TABLE_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "commit_position": pl.UInt64(),
    "stream_name": pl.String(),
    "stream_revision": pl.UInt64(),
    "event_type": pl.String(),
    "event_id": pl.String(),
    "columns": pl.List(pl.String()),
    "a_before": pl.String(),
    "b_before": pl.String(),
    "a_after": pl.String(),
    "b_after": pl.String(),
}


def _table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_TABLE_SCHEMA).sort("commit_position", "key")


def _empty_table() -> pl.DataFrame:
    return pl.DataFrame(schema=_TABLE_SCHEMA)


def _pl_types() -> list[pl.DataType]:
    frame = pl.from_arrow(FINDINGS_SCHEMA.empty_table())
    assert isinstance(frame, pl.DataFrame)
    return list(frame.schema.values())
