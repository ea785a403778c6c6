"""Applying events to a Python projection's rows: the loop shared by rebuild and tracing.

``apply_events`` takes an Arrow table of envelope rows (in commit-position order, or sorted by
stream and revision for a stream-partitioned projection), decodes each payload once through the
projection's registry, calls the event type's handler on the key's row, and keeps per-type
timings and findings. ``work`` wraps it for ``esworkbench.fold.batches`` (one batch of whole
streams in, Arrow tables out), so forked workers reuse the fold's batching unchanged.

Python objects live only while their batch is applied, with the cyclic GC paused (see the fold
engine and DESIGN.md's performance notes: the GC walking millions of young objects multiplies
the cost). Work functions must not call Polars, which is not fork-safe; this module uses only
pyarrow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from esworkbench.events import SCHEMA_VERSION_KEY
from esworkbench.findings import FINDINGS_SCHEMA
from esworkbench.fold import INPUT_COLUMNS as FOLD_INPUT_COLUMNS
from esworkbench.fold.batches import gc_paused
from esworkbench.projections._definition import Event, Projection, Row

__all__ = [
    "INPUT_COLUMNS",
    "TIMINGS_SCHEMA",
    "Applied",
    "apply_events",
    "stream_order",
    "trace_schema",
    "work",
]

# Envelope columns a projection reads from the lake: those a replay reads.
INPUT_COLUMNS = FOLD_INPUT_COLUMNS
TIMINGS_SCHEMA = pa.schema(
    [("event_type", pa.string()), ("events", pa.int64()), ("seconds", pa.float64())]
)
_TRACE_ENVELOPE = [
    ("key", pa.string()),
    ("commit_position", pa.uint64()),
    ("stream_name", pa.string()),
    ("stream_revision", pa.uint64()),
    ("event_type", pa.string()),
    ("event_id", pa.string()),
]


class Applied(NamedTuple):
    """What applying a batch did: keys touched, per-type timings, findings, trace rows."""

    touched: list[str]
    timings: dict[str, list[float]]
    findings: list[dict[str, Any]]
    trace: list[dict[str, Any]]


def trace_schema(columns: pa.Schema) -> pa.Schema:
    """The schema of trace rows: the event, the key, and the key's row after it (``row``)."""
    return pa.schema([*_TRACE_ENVELOPE, ("row", pa.struct(list(columns)))])


def apply_events(
    projection: Projection,
    table: pa.Table,
    state: dict[str, Row],
    *,
    watch: frozenset[str] | None = None,
) -> Applied:
    """Apply `table`'s events, in its order, to the rows in `state` (updated in place).

    Args:
        projection: the Python projection.
        table: envelope rows (at least ``INPUT_COLUMNS``).
        state: key -> row; a key met for the first time gets ``projection.new_row(key)``.
        watch: keys whose row is copied into the trace after each of their events.

    Returns:
        The keys touched (in first-touch order), ``{event_type: [events, seconds]}``, findings
        (``FINDINGS_SCHEMA`` dicts: undecodable payloads, handler errors) and trace rows.
    """
    cols = {name: table.column(name).to_pylist() for name in INPUT_COLUMNS}
    registry = projection.registry
    handlers = {t: projection.handler(t) for t in projection.event_types()}
    key_of, new_row = projection.key_of, projection.new_row
    touched: dict[str, None] = {}
    timings: dict[str, list[float]] = {}
    findings: list[dict[str, Any]] = []
    trace: list[dict[str, Any]] = []
    clock = time.perf_counter
    with gc_paused():
        for i, event_type in enumerate(cols["event_type"]):
            handler = handlers.get(event_type)
            if handler is None:
                continue
            started = clock()
            meta = cols["metadata"][i]
            event: Event | None = None
            try:
                version = 1
                # Most events carry no schema version: parse the metadata only when it might.
                if meta and SCHEMA_VERSION_KEY in meta:
                    version = int(json.loads(meta).get(SCHEMA_VERSION_KEY, 1))
                payload = registry.decode(event_type, cols["data"][i], version=version)
                event = Event(
                    cols["stream_name"][i],
                    cols["stream_revision"][i],
                    cols["commit_position"][i],
                    cols["created"][i],
                    cols["occurred_at"][i],
                    event_type,
                    cols["event_id"][i],
                    payload,
                )
                key = key_of(event)
                if key is not None:
                    row = state.get(key)
                    if row is None:
                        row = state[key] = new_row(key)
                    handler(row, event)
                    touched[key] = None
                    if watch is not None and key in watch:
                        trace.append(_trace_row(key, event, row))
            except Exception as e:  # history a projection cannot read is a finding, not a crash
                findings.append(_finding(cols, i, event is None, e))
            spent = clock() - started
            counts = timings.get(event_type)
            if counts is None:
                timings[event_type] = [1, spent]
            else:
                counts[0] += 1
                counts[1] += spent
    return Applied(list(touched), timings, findings, trace)


def work(
    table: pa.Table, *, projection: Projection, state: dict[str, Row], watch: frozenset[str] | None
) -> Sequence[pa.Table]:
    """One batch for ``fold.batches.run_batches``: rows touched, timings, findings, trace."""
    applied = apply_events(projection, table, state, watch=watch)
    return (
        rows_table(projection, state, applied.touched),
        timings_table(applied.timings),
        pa.Table.from_pylist(applied.findings, schema=FINDINGS_SCHEMA),
        pa.Table.from_pylist(applied.trace, schema=trace_schema(projection.columns)),
    )


def rows_table(projection: Projection, state: dict[str, Row], keys: Sequence[str]) -> pa.Table:
    """The rows of `keys` as an Arrow table of the projection's columns."""
    return pa.Table.from_pylist([state[k] for k in keys], schema=projection.columns)


def timings_table(timings: dict[str, list[float]]) -> pa.Table:
    """Per-type timings as an Arrow table (``TIMINGS_SCHEMA``)."""
    return pa.table(
        {
            "event_type": list(timings),
            "events": [int(v[0]) for v in timings.values()],
            "seconds": [float(v[1]) for v in timings.values()],
        },
        schema=TIMINGS_SCHEMA,
    )


def stream_order(table: pa.Table) -> tuple[pa.Array, list[int]]:
    """Row indices sorted by (stream, revision) and the stream sizes in that order."""
    order = pc.sort_indices(
        table, sort_keys=[("stream_name", "ascending"), ("stream_revision", "ascending")]
    )
    counts = table.group_by("stream_name").aggregate([("stream_name", "count")])
    counts = counts.sort_by("stream_name")
    return order, counts.column("stream_name_count").to_pylist()


def _trace_row(key: str, event: Event, row: Row) -> dict[str, Any]:
    return {
        "key": key,
        "commit_position": event.commit_position,
        "stream_name": event.stream_name,
        "stream_revision": event.stream_revision,
        "event_type": event.event_type,
        "event_id": event.event_id,
        # A copy: later events update the live row in place.
        "row": dict(row),
    }


def _finding(cols: dict[str, list[Any]], i: int, decoding: bool, e: Exception) -> dict[str, Any]:
    return {
        "stream_name": cols["stream_name"][i],
        "stream_revision": cols["stream_revision"][i],
        "commit_position": cols["commit_position"][i],
        "event_id": cols["event_id"][i],
        "event_type": cols["event_type"][i],
        "kind": "decode_error" if decoding else "projection_error",
        "error": type(e).__name__,
        "message": str(e),
    }
