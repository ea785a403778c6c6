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
    amount_outlier          a deposit of 100-400x the user's monthly income

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
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path

from esworkbench.errors import ConfigError
from esworkbench.events import archive_line
from esworkbench.examples.bank.sample._anomalies import inject
from esworkbench.examples.bank.sample._ledger import (
    ANOMALY_KINDS,
    REPLAY_ERRORS,
    Anomaly,
    AnomalyKind,
    Ledger,
    default_anomaly_counts,
)
from esworkbench.examples.bank.sample._sim import Simulation

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
        >>> ledger.counts()["ledger_drift"], sorted(ledger.counts()) == sorted(ANOMALY_KINDS)
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
        >>> injected = [a for a in read_truth(truth) if a.kind in ANOMALY_KINDS]
        >>> truth.name, len(injected) == len(ANOMALY_KINDS)
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
