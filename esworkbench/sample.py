"""A deterministic sample bank ledger with injected anomalies, and its ground truth.

``generate(users=N, seed=S)`` simulates N bank users over a date range: accounts opened over the
range (more early than late), paydays (monthly on the last weekday on or before the 25th,
biweekly or weekly on Fridays), rent on the 1st, card spending with a daily rhythm (lunch and
evening peaks) and a weekly one (a Friday peak, weekend dips), per-user spending profiles,
transfers between friends, cash deposits, email changes and some closures. Every normal event
comes from the bank domain's own commands (``esworkbench.examples.bank``) and is encoded by the
repository's ``encode_event``, so it is byte for byte what production writes; only event ids are
deterministic (uuid5 in a namespace derived from all the parameters, so two different ledgers
never share a stream). Users opened in the first 15% of the range were written by older code,
with ``UserCreated`` v1 (``fullName``) or, up to 30%, v2 (no ``overdraftLimit``): the lake and
the registry's upcasters meet real schema history.

On top, anomalies of known kinds and counts are written the way a buggy older writer would,
inside user streams at real revisions (revisions stay gap-free):

    ledger_drift            a deposit or withdrawal whose newBalance is off by 0.01, 1, 10 or 100
    overdraft               a withdrawal past the overdraft limit (its newBalance is right)
    unmatched_transfer      a TransferSent whose TransferReceived was never written
    activity_after_close    a small deposit after UserClosed
    duplicate_event         a deposit or withdrawal written again right after itself: same
                            bytes, new event id
    timestamp_out_of_order  a deposit whose occurredAt (and archive `created`) is before the
                            stream's previous event
    unknown_event_type      CardIssued, LoyaltyPointsAwarded or BalanceAdjusted (unregistered)
    malformed_json          a BalanceDeposited cut off mid-JSON, content type application/json
    binary_payload          a bank event type holding non-UTF-8 bytes, application/octet-stream
    amount_outlier          a deposit of 20-80x the user's monthly income

``Ledger.truth`` lists them;
``REPLAY_ERRORS`` says what replaying each through ``User`` raises (None: replay is silent, the
anomaly stage must find it). After an anomaly the simulation carries on from the state a replay
of the stream gives (the amounts are the ledger's truth, never a recorded newBalance): that is
the state production computes its next newBalance from, so later normal events are consistent
and each injected event is one finding. The generator's own balance after every event is in
``Ledger.expected_balances`` (events replay cannot decode leave it unchanged).

A seed gives byte-identical output: one ``random.Random(seed)``, no wall clock, and only IEEE
arithmetic (+ - * / sqrt) on floats, so no platform's libm can change a digit.
"""

from __future__ import annotations

import gc
import gzip
import io
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args, overload

import pyarrow as pa

from esworkbench.errors import (
    ConfigError,
    EsWorkbenchError,
    PayloadDecodeError,
    UnknownEventTypeError,
)
from esworkbench.events import RAW_SCHEMA, archive_line
from esworkbench.examples.bank import AccountClosed, LedgerDriftError, OverdraftLimitExceeded

__all__ = [
    "ANOMALY_KINDS",
    "REPLAY_ERRORS",
    "Anomaly",
    "AnomalyKind",
    "Ledger",
    "default_anomaly_counts",
    "generate",
    "read_truth",
    "truth_path",
    "write_archive",
]

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

# What replaying an injected event through bank.User raises. A duplicated money event repeats
# the original's newBalance, so replay also sees it as drift, as it would in a real ledger.
REPLAY_ERRORS: Mapping[AnomalyKind, type[EsWorkbenchError] | None] = {
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
}


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One injected anomaly: its kind and the exact event that carries it."""

    kind: AnomalyKind
    stream_name: str
    stream_revision: int
    event_id: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stream_name": self.stream_name,
            "stream_revision": self.stream_revision,
            "event_id": self.event_id,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Anomaly:
        if data["kind"] not in ANOMALY_KINDS:
            raise ValueError(f"unknown anomaly kind {data['kind']!r}; known: {ANOMALY_KINDS}")
        return cls(
            data["kind"],
            data["stream_name"],
            int(data["stream_revision"]),
            data["event_id"],
            data["detail"],
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def generate(
    *,
    users: int,
    seed: int,
    days: int = 90,
    start: date = date(2024, 1, 1),
    anomalies: Mapping[AnomalyKind, int] | None = None,
) -> Ledger:
    """Simulate a bank ledger: same arguments, same events, byte for byte.

    Args:
        users: accounts opened over the range (at least 2).
        seed: the seed of the one random generator.
        days: length of the range in days, from `start` (UTC).
        start: first day.
        anomalies: injected anomalies per kind (missing kinds: none); default
            `default_anomaly_counts(users)`.

    Example:
        >>> ledger = generate(users=5, seed=1, days=20)
        >>> ledger.events[0]["event_type"], ledger.events[0]["stream_revision"]
        ('UserCreated', 0)
        >>> ledger.counts()["ledger_drift"], len(ledger.truth) == len(ANOMALY_KINDS)
        (1, True)
        >>> generate(users=5, seed=1, days=20).event_id == ledger.event_id
        True
    """
    if users < 2:
        raise ConfigError(f"users must be at least 2 (transfers need two), got {users}")
    if days < 1:
        raise ConfigError(f"days must be at least 1, got {days}")
    counts = default_anomaly_counts(users) if anomalies is None else dict(anomalies)
    unknown = sorted(set(counts) - set(ANOMALY_KINDS))
    if unknown or any(n < 0 for n in counts.values()):
        raise ConfigError(
            f"anomalies must map kinds from {ANOMALY_KINDS} to counts >= 0; got {dict(counts)}"
        )
    counts = {kind: counts.get(kind, 0) for kind in ANOMALY_KINDS}
    ledger = Ledger(users=users, seed=seed, days=days, start=start, anomalies=counts)
    name = f"esworkbench-sample/{seed}/{users}/{days}/{start.isoformat()}/" + ",".join(
        f"{kind}={n}" for kind, n in counts.items()
    )
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, name)
    # The simulation imports this module's Anomaly and Ledger: import it when it is needed.
    from esworkbench._sample_anomalies import inject
    from esworkbench._sample_sim import Simulation

    # Millions of small objects and no cycles: the cyclic GC would only rescan them, again and
    # again (a quarter of the run time).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        Simulation(ledger, random.Random(seed), namespace, inject).run()
    finally:
        if gc_was_enabled:
            gc.enable()
    return ledger


def truth_path(archive: str | Path) -> Path:
    """Where the ground truth of an archive lives: `<name>.truth.jsonl` beside it.

    Example:
        >>> truth_path("data/sample/ledger.jsonl.gz").as_posix()
        'data/sample/ledger.truth.jsonl'
    """
    path = Path(archive)
    name = path.name
    for suffix in (".gz", ".jsonl"):
        name = name.removesuffix(suffix)
    return path.with_name(name + ".truth.jsonl")


def write_archive(ledger: Ledger, path: str | Path) -> tuple[Path, Path]:
    """Write the ledger as a JSONL archive (gzip if `path` ends in .gz) and its ground truth.

    The archive has one `events.archive_line` per event in $all order; the truth file
    (`truth_path(path)`) one JSON object per anomaly. Both are byte-identical for the same
    ledger: the gzip header carries no file name and no time.

    Returns:
        (archive path, truth path).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "ledger.jsonl.gz"
        >>> archive, truth = write_archive(generate(users=3, seed=1, days=10), out)
        >>> truth.name, len(read_truth(truth)) == len(ANOMALY_KINDS)
        ('ledger.truth.jsonl', True)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw:
        sink: io.BufferedIOBase | gzip.GzipFile = raw
        if path.name.endswith(".gz"):
            sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
        try:
            chunk: list[str] = []
            for event in ledger.events:
                chunk.append(archive_line(event))
                if len(chunk) == 10_000:
                    sink.write(("\n".join(chunk) + "\n").encode())
                    chunk.clear()
            if chunk:
                sink.write(("\n".join(chunk) + "\n").encode())
        finally:
            if sink is not raw:
                sink.close()
    truth = truth_path(path)
    truth.write_text(
        "".join(
            json.dumps(a.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
            for a in ledger.truth
        ),
        encoding="utf-8",
    )
    return path, truth


def read_truth(path: str | Path) -> list[Anomaly]:
    """The anomalies of a truth file written by `write_archive` (see `truth_path`)."""
    with open(path, encoding="utf-8") as f:
        return [Anomaly.from_json(json.loads(line)) for line in f if line.strip()]
