"""The findings vocabulary: what every stage that judges history emits.

A finding pins one problem to one event: the ``rule`` that found it, its ``kind`` (what went
wrong, snake_case and stable, the unit reports and scheduled checks count by), a ``severity``,
the event (stream, revision, commit position, id, type, business time ``occurred_at``), a
``message`` a person can act on, the ``evidence`` (JSON text: the expected and actual values
that make the finding checkable) and the ``error`` class that said so, where one did. Replay
(`esworkbench.fold`) emits these; anomaly rules and projection comparisons emit the same
columns, so one table holds every stage's findings.

Example:
    >>> FINDINGS_SCHEMA.names[:3]
    ['rule', 'kind', 'severity']
    >>> severity_of("ledger_drift"), severity_of("something_new")
    ('error', 'warning')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

import pyarrow as pa

__all__ = [
    "FINDINGS_SCHEMA",
    "FINDING_ENVELOPE",
    "HISTORY_KINDS",
    "SEVERITIES",
    "SEVERITY_BY_KIND",
    "Severity",
    "evidence_json",
    "severity_of",
]

Severity = Literal["info", "warning", "error"]
# In rising order: a check that fails "at or above" a severity compares by this order.
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")

FINDINGS_SCHEMA = pa.schema(
    [
        pa.field("rule", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("severity", pa.string()),
        pa.field("stream_name", pa.string()),
        pa.field("stream_revision", pa.uint64()),
        pa.field("commit_position", pa.uint64()),
        pa.field("event_id", pa.string()),
        pa.field("event_type", pa.string()),
        pa.field("occurred_at", pa.timestamp("us", tz="UTC")),
        pa.field("message", pa.string()),
        pa.field("evidence", pa.string()),
        pa.field("error", pa.string()),
    ]
)

# Who a finding's event is: the columns a finding takes from its event.
FINDING_ENVELOPE = tuple(FINDINGS_SCHEMA.names[3:9])

# Kinds any event store's history can show, whatever the domain.
HISTORY_KINDS = (
    "version_gap",
    "version_out_of_order",
    "foreign_event",
    "unknown_event_type",
    "decode_error",
    "aggregate_error",
)

# How serious each known kind is; a kind not listed is a warning. Errors are history that is
# wrong (money that does not add up, events nobody can read); warnings are history a person
# should look at (an event of a type this code does not know yet).
SEVERITY_BY_KIND: Mapping[str, Severity] = {
    "version_gap": "error",
    "version_out_of_order": "error",
    "foreign_event": "error",
    "decode_error": "error",
    "aggregate_error": "error",
    "unknown_event_type": "warning",
    "ledger_drift": "error",
    "overdraft": "error",
    "activity_after_close": "error",
    "event_before_creation": "error",
    "duplicate_creation": "error",
    "duplicate_event": "error",
    "timestamp_out_of_order": "warning",
    "schema_drift": "info",
    "metadata_missing_field": "warning",
    "dangling_reference": "warning",
    "unmatched_transfer": "error",
    "transfer_amount_mismatch": "error",
    "amount_outlier": "warning",
    "negative_balance_without_facility": "error",
    "projection_divergence": "warning",
    "projection_error": "error",
}


def severity_of(kind: str) -> Severity:
    """The severity of a finding kind (``warning`` for kinds not known here)."""
    return SEVERITY_BY_KIND.get(kind, "warning")


def evidence_json(values: Mapping[str, Any]) -> str | None:
    """Evidence as compact JSON text: money and times as strings, nothing rounded.

    Example:
        >>> evidence_json({"expected": Decimal("100.50"), "recorded": Decimal("100.40")})
        '{"expected":"100.50","recorded":"100.40"}'
    """
    if not values:
        return None
    return json.dumps(values, separators=(",", ":"), default=_text)


def _text(value: Any) -> str:
    if isinstance(value, Decimal | datetime | date):
        return str(value) if isinstance(value, Decimal) else value.isoformat()
    return str(value)
