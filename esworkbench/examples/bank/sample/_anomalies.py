"""The anomalies of the sample ledger, written the way a buggy or older writer would (private).

Each injector picks a suitable user at time ``t``, writes one event into the user's stream at
its next revision, records the ground truth, and returns False when no user suits (the
simulation then tries again the next day). Decodable events are also replayed into the user's
aggregate, so the simulation carries on from the state a replay gives; the replay must raise
exactly ``REPLAY_ERRORS[kind]`` or the generator stops with a bug report.

Every injected newBalance is written the way a legacy writer does it: from the writer's own
last recorded balance (``recorded_balance``), and the writer carries on from whatever it wrote,
so a wrong balance is one break in the chain of statements, never a cascade. Some drifts cancel
an earlier one (the statements come back in line with the amounts), and half the overdrafts hit
accounts with no overdraft facility at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

from esworkbench.aggregates import DomainEvent, EncodedEvent, encode_event
from esworkbench.errors import EsWorkbenchError
from esworkbench.events import SCHEMA_VERSION_KEY
from esworkbench.examples import bank
from esworkbench.examples.bank.sample._ledger import REPLAY_ERRORS, AnomalyKind
from esworkbench.examples.bank.sample._sim import (
    DAY_US,
    HOUR_US,
    SECOND_US,
    Customer,
    Simulation,
    cents,
)

__all__ = ["inject"]

_DRIFTS = tuple(Decimal(x) for x in ("0.01", "1.00", "10.00", "100.00"))


def inject(sim: Simulation, kind: AnomalyKind, t: int) -> bool:
    """Write one anomaly of `kind` at time `t`; False if no user suits it now."""
    return _INJECTORS[kind](sim, t)


def _pick(sim: Simulation, suits: Callable[[Customer], bool] | None = None) -> Customer | None:
    for _ in range(30):
        if not sim.open:
            return None
        c = sim.open[sim.rng.randrange(len(sim.open))]
        if suits is None or suits(c):
            return c
    return None


def _write(
    sim: Simulation,
    c: Customer,
    kind: AnomalyKind,
    t: int,
    payload: Any,
    detail: str,
    encoded: EncodedEvent | None = None,
    also: tuple[str, ...] = (),
) -> None:
    """Write a decodable event raw, bypassing the rules, and replay it into the user."""
    user = c.user
    assert user is not None
    event = DomainEvent(
        bank.registry.type_name_of(payload),
        c.uid,
        user.version + 1,
        payload,
        sim.meta(t),
        sim.new_id(),
    )
    expected, raised = REPLAY_ERRORS[kind], None
    try:
        user.apply(event)
    except EsWorkbenchError as e:
        raised = e
    if type(raised) is not (type(None) if expected is None else expected):
        raise RuntimeError(
            f"generator bug: replaying a {kind} raised {raised!r}, expected {expected}"
        )
    user.version = event.aggregate_version
    c.balance_cents = int(user.balance.scaleb(2))
    sim.batch(raw=True)
    if encoded is None:
        encoded = encode_event(event, bank.registry)
    else:
        encoded = encoded._replace(event_id=event.event_id)
    sim.emit(c, encoded, event.aggregate_version, t)
    sim.truth(kind, c, detail, also)


def _write_bytes(
    sim: Simulation,
    c: Customer,
    kind: AnomalyKind,
    t: int,
    event_type: str,
    data: bytes,
    detail: str,
    content_type: str = "application/json",
) -> None:
    """Write an event replay cannot decode: it takes a revision and changes nothing."""
    assert c.user is not None
    c.user.version += 1
    meta = {**sim.meta(t), SCHEMA_VERSION_KEY: 1}
    encoded = EncodedEvent(
        sim.new_id(),
        event_type,
        data,
        json.dumps(meta, separators=(",", ":")).encode(),
        content_type,
    )
    sim.batch(raw=True)
    sim.emit(c, encoded, c.user.version, t)
    sim.truth(kind, c, detail)


def _ledger_drift(sim: Simulation, t: int) -> bool:
    # Half the time, a writer whose statements have drifted writes the break that cancels it.
    cancel = sim.rng.random() < 0.5
    c = _pick(sim, lambda c: c.user is not None and c.user.balance_drift != 0) if cancel else None
    if c is None:
        cancel, c = False, _pick(sim)
    if c is None or c.user is None:
        return False
    user, amount = c.user, sim.amount(c.spend_mean)
    drift = -user.balance_drift if cancel else sim.rng.choice(_DRIFTS) * sim.rng.choice((1, -1))
    payload: Any
    if sim.covers(c, amount) and sim.rng.random() < 0.5:
        chained = user.recorded_balance - amount
        payload = bank.BalanceWithdrawn(c.uid, amount, chained + drift)
    else:
        chained = user.recorded_balance + amount
        payload = bank.BalanceDeposited(c.uid, amount, chained + drift)
    how = "cancelling the earlier drift" if cancel else f"drift {drift:+}"
    _write(
        sim,
        c,
        "ledger_drift",
        t,
        payload,
        f"{type(payload).__name__} of {amount} records newBalance {payload.new_balance}; the "
        f"previous recorded balance and the amount give {chained} (break {drift:+}, {how})",
    )
    return True


def _overdraft(sim: Simulation, t: int) -> bool:
    # Half of them on accounts with no overdraft facility, which must never go below zero.
    no_facility = sim.rng.random() < 0.5
    c = (
        _pick(sim, lambda c: c.user is not None and c.user.overdraft_limit == 0)
        if no_facility
        else None
    )
    c = c or _pick(sim)
    if c is None or c.user is None:
        return False
    user = c.user
    amount = max(user.balance + user.overdraft_limit, Decimal(0)) + sim.amount(60, 500)
    new = user.recorded_balance - amount
    _write(
        sim,
        c,
        "overdraft",
        t,
        bank.BalanceWithdrawn(c.uid, amount, new),
        f"withdrawal of {amount} (recorded newBalance {new}) takes the balance to "
        f"{user.balance - amount}, past the overdraft limit of {user.overdraft_limit}",
        also=("negative_balance_without_facility",) if user.overdraft_limit == 0 else (),
    )
    return True


def _unmatched_transfer(sim: Simulation, t: int) -> bool:
    amount = sim.amount(45)
    c = _pick(sim, lambda c: sim.covers(c, amount))
    to = _pick(sim, lambda to: to is not c)
    if c is None or to is None or c.user is None:
        return False
    transfer_id = sim.new_id()
    _write(
        sim,
        c,
        "unmatched_transfer",
        t,
        bank.TransferSent(c.uid, transfer_id, to.uid, amount, c.user.recorded_balance - amount),
        f"TransferSent {transfer_id} of {amount} to {to.stream}: no TransferReceived "
        "was ever written",
    )
    return True


def _activity_after_close(sim: Simulation, t: int) -> bool:
    closed = [c for c in sim.closed if not c.after_close]
    if closed:
        c: Customer | None = closed[sim.rng.randrange(len(closed))]
    else:  # close someone now, through the rules, then write past the close
        c = _pick(sim, lambda c: not c.outlier)
        if c is not None:
            sim.close(c, t)
    if c is None or c.user is None:
        return False
    c.after_close = True
    amount = sim.amount(20)
    _write(
        sim,
        c,
        "activity_after_close",
        t,
        bank.BalanceDeposited(c.uid, amount, c.user.recorded_balance + amount),
        f"deposit of {amount} after UserClosed",
    )
    return True


def _duplicate_event(sim: Simulation, t: int) -> bool:
    # A retried write without idempotency: the same money event again, with a new id.
    amount = sim.amount(60)
    c = _pick(sim, lambda c: sim.covers(c, amount + amount))
    if c is None or c.user is None:
        return False
    meta = sim.meta(t)
    if sim.rng.random() < 0.5:
        original = c.user.withdraw(amount, metadata=meta)
    else:
        original = c.user.deposit(amount, metadata=meta)
    sim.commit(c, t)
    ledger = sim.ledger
    encoded = EncodedEvent(
        ledger.event_id[-1], ledger.event_type[-1], ledger.data[-1], ledger.metadata[-1]
    )
    _write(
        sim,
        c,
        "duplicate_event",
        t,
        original.data,
        f"{original.event_type} {ledger.event_id[-1]} (revision "
        f"{ledger.stream_revision[-1]}) written again with a new id",
        encoded,
    )
    return True


def _timestamp_out_of_order(sim: Simulation, t: int) -> bool:
    c = _pick(sim, lambda c: c.prev_us - c.first_us > 2 * HOUR_US)
    if c is None or c.user is None:
        return False
    back = min(c.prev_us - c.first_us - 1, 60 * SECOND_US + sim.rng.randrange(3 * DAY_US))
    t_back = c.prev_us - back
    c.user.deposit(sim.amount(150), metadata=sim.meta(t_back))
    sim.commit(c, t_back, raw=True)  # the clock stays: only this writer's clock was off
    sim.truth(
        "timestamp_out_of_order",
        c,
        f"occurredAt {sim.iso(t_back)} is {timedelta(microseconds=back)} before "
        f"the stream's previous event ({sim.iso(t_back + back)})",
    )
    return True


def _unknown_event_type(sim: Simulation, t: int) -> bool:
    c = _pick(sim)
    if c is None:
        return False
    event_type, body = sim.rng.choice(
        (
            ("CardIssued", {"userId": c.uid, "cardId": sim.new_id(), "last4": "4242"}),
            ("LoyaltyPointsAwarded", {"userId": c.uid, "points": sim.rng.randrange(10, 500)}),
            ("BalanceAdjusted", {"userId": c.uid, "amount": "-2.50", "reason": "fee"}),
        )
    )
    _write_bytes(
        sim,
        c,
        "unknown_event_type",
        t,
        event_type,
        json.dumps(body, separators=(",", ":")).encode(),
        f"{event_type} is not a registered bank event type",
    )
    return True


def _malformed_json(sim: Simulation, t: int) -> bool:
    c = _pick(sim)
    if c is None or c.user is None:
        return False
    amount = sim.amount(150)
    full = json.dumps(
        bank.BalanceDeposited(c.uid, amount, c.user.recorded_balance + amount).to_json(),
        separators=(",", ":"),
    ).encode()
    cut = len(full) // 3 + sim.rng.randrange(len(full) - 1 - len(full) // 3)
    _write_bytes(
        sim,
        c,
        "malformed_json",
        t,
        "BalanceDeposited",
        full[:cut],
        f"BalanceDeposited JSON cut off after {cut} of {len(full)} bytes",
    )
    return True


def _binary_payload(sim: Simulation, t: int) -> bool:
    c = _pick(sim)
    if c is None:
        return False
    event_type = sim.rng.choice(("BalanceDeposited", "BalanceWithdrawn"))
    cents = int(sim.amount(80).scaleb(2))
    data = b"\x80\x01" + cents.to_bytes(8, "big", signed=True) + c.uid.encode()
    _write_bytes(
        sim,
        c,
        "binary_payload",
        t,
        event_type,
        data,
        f"{event_type} written as {len(data)} bytes of a binary encoding",
        content_type="application/octet-stream",
    )
    return True


def _amount_outlier(sim: Simulation, t: int) -> bool:
    c = _pick(sim)
    if c is None or c.user is None:
        return False
    factor = 100 + 300 * sim.rng.random()
    amount = cents(c.monthly * factor)
    c.user.deposit(amount, metadata=sim.meta(t))
    c.outlier = True
    sim.commit(c, t, raw=True)
    sim.truth("amount_outlier", c, f"deposit of {amount}, {factor:.0f}x the user's monthly income")
    return True


_INJECTORS: dict[AnomalyKind, Callable[[Simulation, int], bool]] = {
    "ledger_drift": _ledger_drift,
    "overdraft": _overdraft,
    "unmatched_transfer": _unmatched_transfer,
    "activity_after_close": _activity_after_close,
    "duplicate_event": _duplicate_event,
    "timestamp_out_of_order": _timestamp_out_of_order,
    "unknown_event_type": _unknown_event_type,
    "malformed_json": _malformed_json,
    "binary_payload": _binary_payload,
    "amount_outlier": _amount_outlier,
}
