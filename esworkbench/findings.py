"""The findings vocabulary: what every stage that judges history emits.

A finding pins one problem to one event: its stream, revision, commit position, event id and
type, a ``kind`` (what went wrong, from a known list), the ``error`` class that said so, and a
message a person can act on. Replay (`esworkbench.fold`) emits these today; anomaly rules and
projection comparisons emit the same columns, so one table holds every stage's findings.

Example:
    >>> FINDINGS_SCHEMA.names[:3]
    ['stream_name', 'stream_revision', 'commit_position']
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["FINDINGS_SCHEMA", "HISTORY_KINDS"]

FINDINGS_SCHEMA = pa.schema(
    [
        pa.field("stream_name", pa.string()),
        pa.field("stream_revision", pa.uint64()),
        pa.field("commit_position", pa.uint64()),
        pa.field("event_id", pa.string()),
        pa.field("event_type", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("message", pa.string()),
    ]
)

# Kinds any event store's history can show, whatever the domain.
HISTORY_KINDS = (
    "version_gap",
    "version_out_of_order",
    "foreign_event",
    "unknown_event_type",
    "decode_error",
    "aggregate_error",
)
