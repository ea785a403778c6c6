"""The sample ledger's vocabulary: anomaly kinds, the injected anomalies, the Ledger (private).

Shared by the simulation (`_sim`), the anomaly writers (`_anomalies`) and the public face
(`esworkbench.examples.bank.sample`), which all import it and nothing imports back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, get_args, overload

import pyarrow as pa

from esworkbench.errors import EsWorkbenchError, PayloadDecodeError, UnknownEventTypeError
from esworkbench.events import RAW_SCHEMA
from esworkbench.examples.bank import AccountClosed, LedgerDriftError, OverdraftLimitExceeded

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

AnomalyKind = Literal[
    "ledger_drift",
    "overdraft",
    "unmatched_transfer",
    "activity_after_close",
    "duplicate_event",
    "timestamp_out_of_order",
    "unknown_event_type",
    "malformed_json",
    "binary_payload",
    "amount_outlier",
]
ANOMALY_KINDS: tuple[AnomalyKind, ...] = get_args(AnomalyKind)
# Not injected, but written on purpose: the first event of a newer payload schema (legacy
# UserCreated v1 -> v2 -> v3), where a schema-drift check rightly fires.
TruthKind = AnomalyKind | Literal["schema_change"]
TRUTH_KINDS: tuple[TruthKind, ...] = (*ANOMALY_KINDS, "schema_change")

# The finding kinds a complete check (esworkbench.examples.bank.rules:RULES) reports at each
# truth event; an injector adds more where the event warrants (an overdraft on an account with
# no overdraft facility is also negative_balance_without_facility).
FINDINGS_BY_KIND: Mapping[TruthKind, tuple[str, ...]] = {
    "ledger_drift": ("ledger_drift",),
    "overdraft": ("overdraft",),
    "unmatched_transfer": ("unmatched_transfer",),
    "activity_after_close": ("activity_after_close",),
    # a repeat repeats the original's newBalance: the statement chain breaks there too
    "duplicate_event": ("duplicate_event", "ledger_drift"),
    "timestamp_out_of_order": ("timestamp_out_of_order",),
    "unknown_event_type": ("unknown_event_type",),
    "malformed_json": ("decode_error",),
    "binary_payload": ("decode_error",),
    "amount_outlier": ("amount_outlier",),
    "schema_change": ("schema_drift",),
}

# What replaying an injected event through bank.User raises. A duplicated money event repeats
# the original's newBalance, so replay also sees it as drift, as it would in a real ledger.
REPLAY_ERRORS: Mapping[TruthKind, type[EsWorkbenchError] | None] = {
    "ledger_drift": LedgerDriftError,
    "overdraft": OverdraftLimitExceeded,
    "unmatched_transfer": None,
    "activity_after_close": AccountClosed,
    "duplicate_event": LedgerDriftError,
    "timestamp_out_of_order": None,
    "unknown_event_type": UnknownEventTypeError,
    "malformed_json": PayloadDecodeError,
    "binary_payload": PayloadDecodeError,
    "amount_outlier": None,
    "schema_change": None,
}


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One truth row: its kind, the exact event that carries it, what a check must find there.

    Attributes:
        kind: an injected anomaly kind (ANOMALY_KINDS) or ``schema_change``.
        stream_name: the stream of the event.
        stream_revision: its revision.
        event_id: its id.
        detail: what was written, in words.
        findings: the finding kinds a complete check reports at this event, and no others.
    """

    kind: TruthKind
    stream_name: str
    stream_revision: int
    event_id: str
    detail: str
    findings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stream_name": self.stream_name,
            "stream_revision": self.stream_revision,
            "event_id": self.event_id,
            "detail": self.detail,
            "findings": list(self.findings),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Anomaly:
        if data["kind"] not in TRUTH_KINDS:
            raise ValueError(f"unknown anomaly kind {data['kind']!r}; known: {TRUTH_KINDS}")
        return cls(
            data["kind"],
            data["stream_name"],
            int(data["stream_revision"]),
            data["event_id"],
            data["detail"],
            tuple(data.get("findings") or FINDINGS_BY_KIND[data["kind"]]),
        )


def default_anomaly_counts(users: int) -> dict[AnomalyKind, int]:
    """How many anomalies of each kind `generate` injects unless told: one per 20 users, >= 1.

    Example:
        >>> default_anomaly_counts(70)["ledger_drift"]
        3
    """
    return dict.fromkeys(ANOMALY_KINDS, max(1, users // 20))


class Ledger:
    """A generated ledger: raw events in $all order (columns inside), ground truth, balances.

    ``events[i]`` is a dict in ``RAW_SCHEMA`` shape; ``to_arrow()`` gives the same as a table.
    Commit positions are synthetic (strictly increasing, gaps like a real log's byte offsets);
    ``created`` is the business time (``occurredAt``), so archives read like an export.
    """

    def __init__(
        self, *, users: int, seed: int, days: int, start: date, anomalies: Mapping[AnomalyKind, int]
    ) -> None:
        self.users, self.seed, self.days, self.start = users, seed, days, start
        self.anomaly_counts = dict(anomalies)
        self.truth: list[Anomaly] = []
        self.commit_position: list[int] = []
        self.stream_name: list[str] = []
        self.stream_revision: list[int] = []
        self.event_id: list[str] = []
        self.event_type: list[str] = []
        self.created_us: list[int] = []  # µs since the Unix epoch, UTC
        self.content_type: list[str] = []
        self.data: list[bytes] = []
        self.metadata: list[bytes] = []
        self.balance_cents: list[int] = []  # the user's balance after the event
        self.batch_start: list[int] = []  # first event of each append, in $all order
        self.batch_raw: list[bool] = []  # written raw (old or buggy writer), not by the repository

    def __len__(self) -> int:
        return len(self.event_id)

    def __repr__(self) -> str:
        return (
            f"Ledger(users={self.users}, seed={self.seed}, days={self.days}, "
            f"start={self.start}, events={len(self)}, anomalies={len(self.truth)})"
        )

    def event(self, i: int) -> dict[str, Any]:
        """Event `i` ($all order) as a raw event dict (RAW_SCHEMA field names)."""
        position = self.commit_position[i]
        return {
            "commit_position": position,
            "prepare_position": position,
            "stream_name": self.stream_name[i],
            "stream_revision": self.stream_revision[i],
            "event_id": self.event_id[i],
            "event_type": self.event_type[i],
            "created": _EPOCH + timedelta(microseconds=self.created_us[i]),
            "content_type": self.content_type[i],
            "data": self.data[i],
            "metadata": self.metadata[i],
        }

    @property
    def events(self) -> Sequence[dict[str, Any]]:
        """All events as raw event dicts, in $all order (built on access, not stored)."""
        return _EventView(self)

    @property
    def expected_balances(self) -> list[tuple[str, int, Decimal]]:
        """(stream name, revision, balance after the event) for every event, in $all order."""
        return [
            (s, r, Decimal(c).scaleb(-2))
            for s, r, c in zip(
                self.stream_name, self.stream_revision, self.balance_cents, strict=True
            )
        ]

    def counts(self) -> dict[AnomalyKind, int]:
        """Injected anomalies per kind (every kind listed)."""
        found = Counter(a.kind for a in self.truth)
        return {kind: found[kind] for kind in ANOMALY_KINDS}

    def batches(self) -> Iterator[tuple[int, int, bool]]:
        """(first, stop, raw) per append, in order: one unit of work on one stream each."""
        ends = [*self.batch_start[1:], len(self)]
        yield from zip(self.batch_start, ends, self.batch_raw, strict=True)

    def to_arrow(self) -> pa.Table:
        """The events as an Arrow table in RAW_SCHEMA."""
        positions = pa.array(self.commit_position, pa.uint64())
        created = pa.array(self.created_us, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        columns = [
            positions,
            positions,
            pa.array(self.stream_name, pa.string()),
            pa.array(self.stream_revision, pa.uint64()),
            pa.array(self.event_id, pa.string()),
            pa.array(self.event_type, pa.string()),
            created,
            pa.array(self.content_type, pa.string()),
            pa.array(self.data, pa.binary()),
            pa.array(self.metadata, pa.binary()),
        ]
        return pa.Table.from_arrays(columns, schema=RAW_SCHEMA)


class _EventView(Sequence[dict[str, Any]]):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def __len__(self) -> int:
        return len(self._ledger)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self._ledger.event(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._ledger.event(i)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self._ledger.event(i) for i in range(len(self)))
