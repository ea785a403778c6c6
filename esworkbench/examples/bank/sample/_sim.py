"""The simulation behind `generate` (private; read the package docstring first).

Day by day, each open user's actions of the day are drawn (their times too), sorted by time and
run as bank commands on the user's ``User`` aggregate; each unit of work's uncommitted events
become one append (batch) in the ledger. Anomalies are drawn onto days up front and injected at
a random time of their day on a suitable user (deferred to the next day if none suits).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from random import Random
from typing import Any
from uuid import UUID

from esworkbench.aggregates import (
    CAUSATION_KEY,
    DomainEvent,
    EncodedEvent,
    encode_event,
    event_metadata,
)
from esworkbench.errors import ConfigError
from esworkbench.events import SCHEMA_VERSION_KEY
from esworkbench.examples import bank
from esworkbench.examples.bank import User
from esworkbench.examples.bank.sample._ledger import (
    ANOMALY_KINDS,
    FINDINGS_BY_KIND,
    Anomaly,
    AnomalyKind,
    Ledger,
    TruthKind,
)

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
SECOND_US = 1_000_000
_EPOCH_DATE = date(1970, 1, 1)

_FIRST = (  # noqa: SIM905 - names read better as a line of prose
    "Ada Alan Grace Edsger Barbara Donald Frances John Radia Tim Margaret Ken Sophie Dennis "
    "Hedy Niklaus Karen Guido Lynn Bjarne Mary Linus Katherine Claude Annie Leslie Joan "
    "Robin Shafi Whitfield"
).split()
_LAST = (  # noqa: SIM905
    "Lovelace Turing Hopper Dijkstra Liskov Knuth Allen Backus Perlman Berners-Lee Hamilton "
    "Thompson Wilson Ritchie Lamarr Wirth Jones Rossum Conway Stroustrup Keller Torvalds "
    "Johnson Shannon Easley Lamport Clarke Milner Goldwasser Diffie"
).split()
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "post.test")
_CLOSE_REASONS = ("customer request", "moved abroad", "switched bank", "accounts merged")
_LIMITS = tuple(Decimal(x) for x in ("0.00", "100.00", "250.00", "500.00", "1000.00"))
# Card payments per weekday, Monday first: a Friday peak, weekend dips.
_WEEKDAY_SPEND = (0.95, 0.95, 1.0, 1.05, 1.3, 0.7, 0.5)
# (share of users, card payments per day)
_PROFILES = ((0.3, 0.5), (0.5, 1.0), (0.2, 2.0))
_PAYS_PER_MONTH = {"monthly": 1.0, "biweekly": 26 / 12, "weekly": 52 / 12}


def cents(x: float, minimum: int = 1) -> Decimal:
    return Decimal(max(minimum, int(x * 100))).scaleb(-2)


@dataclass(slots=True, eq=False)
class Customer:
    index: int
    uid: str
    stream: str
    first: str
    last: str
    email: str
    open_day: int
    close_day: int  # -1: stays open
    schema: int  # the UserCreated version its opening was written with
    limit: Decimal
    spend_rate: float
    spend_mean: float
    monthly: float
    pay: Decimal
    schedule: str
    paydays: frozenset[int]
    landlord: int  # -1: none
    rent: Decimal
    friends: tuple[int, ...]
    opening: Decimal
    user: User | None = None
    balance_cents: int = 0
    first_us: int = 0
    prev_us: int = 0  # time of the stream's last event
    last_payday: int = -99
    emails: int = 0
    after_close: bool = False
    outlier: bool = False  # got an amount_outlier: never closes (its payout would be one too)


class Simulation:
    """Fills a Ledger; `run()` once."""

    def __init__(
        self,
        ledger: Ledger,
        rng: Random,
        namespace: UUID,
        inject: Callable[[Simulation, AnomalyKind, int], bool],
    ) -> None:
        self.ledger, self.rng = ledger, rng
        self._inject = inject  # writes one anomaly; False when no user suits it now
        self._sha = hashlib.sha1(namespace.bytes)
        self._ids = 0
        self._schema: int | None = None  # schema of the last UserCreated written
        self.day0_us = (ledger.start - _EPOCH_DATE).days * DAY_US
        self.clock = self.day0_us
        self.position = 4096  # a real log starts with a few system records
        self.customers: list[Customer] = []
        self.by_open_day: dict[int, list[Customer]] = {}
        self.open: list[Customer] = []
        self.closed: list[Customer] = []
        self._renamed: dict[str, str] = {}  # command-time event id -> ledger id, per action
        self._deferred: list[AnomalyKind] = []
        self._prefixes: dict[int, str] = {}
        self._binomials: dict[float, list[float]] = {}

    # --- ids, times, metadata -----------------------------------------------------------------

    def new_id(self) -> str:
        # uuid5(namespace, str(n)), spelled out: uuid.uuid5 costs twice as much per call.
        self._ids += 1
        h = self._sha.copy()
        h.update(str(self._ids).encode())
        x = h.hexdigest()
        return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{'89ab'[int(x[16], 16) & 3]}{x[17:20]}-{x[20:32]}"

    def iso(self, t: int) -> str:
        day, rest = divmod(t, DAY_US)
        prefix = self._prefixes.get(day)
        if prefix is None:
            prefix = self._prefixes[day] = (_EPOCH_DATE + timedelta(days=day)).isoformat() + "T"
        seconds, micros = divmod(rest, SECOND_US)
        hours, seconds = divmod(seconds, 3600)
        return f"{prefix}{hours:02d}:{seconds // 60:02d}:{seconds % 60:02d}.{micros:06d}Z"

    def meta(self, t: int) -> dict[str, Any]:
        command_id = self.new_id()
        return event_metadata(
            correlation_id=command_id, causation_id=command_id, occurred_at=self.iso(t)
        )

    def amount(self, mean: float, minimum: int = 100) -> Decimal:
        # Log-logistic (shape 2), tails cut at ~14x the median: skewed like spending, with
        # nothing a normal user does ever looking like an injected amount_outlier.
        u = self.rng.random() * 0.99 + 0.005
        return cents(mean / 1.5 * math.sqrt(u / (1 - u)), minimum)

    def _count(self, lam: float) -> int:
        # Binomial(8, lam/8) by inverse CDF, built from + * / only (deterministic everywhere).
        cdf = self._binomials.get(lam)
        if cdf is None:
            n, p = 8, min(lam / 8, 0.999)
            prob, cdf, total = 1.0, [], 0.0
            for _ in range(n):
                prob *= 1 - p
            for k in range(n + 1):
                total += prob
                cdf.append(total)
                prob *= (n - k) / (k + 1) * p / (1 - p)
            self._binomials[lam] = cdf
        u = self.rng.random()
        k = 0
        while k < 8 and u > cdf[k]:
            k += 1
        return k

    # --- writing to the ledger ----------------------------------------------------------------

    def batch(self, raw: bool) -> None:
        self.ledger.batch_start.append(len(self.ledger))
        self.ledger.batch_raw.append(raw)

    def emit(self, c: Customer, enc: EncodedEvent, revision: int, t: int) -> None:
        ledger = self.ledger
        self.position += 96 + len(enc.data) + len(enc.metadata) + 2 * len(enc.event_type)
        ledger.commit_position.append(self.position)
        ledger.stream_name.append(c.stream)
        ledger.stream_revision.append(revision)
        ledger.event_id.append(enc.event_id)
        ledger.event_type.append(enc.event_type)
        ledger.created_us.append(t)
        ledger.content_type.append(enc.content_type)
        ledger.data.append(enc.data)
        ledger.metadata.append(enc.metadata)
        ledger.balance_cents.append(c.balance_cents)
        c.prev_us = t

    def commit(self, c: Customer, t: int, *, raw: bool = False) -> None:
        """One unit of work: the user's uncommitted events as one append, with ledger ids."""
        assert c.user is not None
        events = c.user.uncommitted_events
        c.user.mark_committed()
        self.batch(raw or (c.schema < 3 and events[0].aggregate_version == 0))
        for e in events:
            new_id = self.new_id()
            self._renamed[e.event_id] = new_id
            meta = e.metadata
            cause = meta.get(CAUSATION_KEY)
            if cause in self._renamed:
                meta = {**meta, CAUSATION_KEY: self._renamed[cause]}
            e = DomainEvent(e.event_type, e.aggregate_id, e.aggregate_version, e.data, meta, new_id)
            if c.schema < 3 and e.aggregate_version == 0:
                enc = _legacy_user_created(e, c.schema)
            else:
                enc = encode_event(e, bank.registry)
            # The first UserCreated of a newer schema than the one before it.
            changed = e.aggregate_version == 0 and self._schema not in (None, c.schema)
            previous = self._schema
            if e.aggregate_version == 0:
                self._schema = c.schema
            new_balance = getattr(e.data, "new_balance", None)
            if new_balance is not None:
                # Commands continue the writer's own chain of statements; the balance the
                # amounts give is that less the drift earlier anomalies left (unchanged here).
                c.balance_cents = int((new_balance - c.user.balance_drift).scaleb(2))
            self.emit(c, enc, e.aggregate_version, t)
            if changed:
                self.truth(
                    "schema_change",
                    c,
                    f"the first UserCreated written by schema v{c.schema} (before: v{previous})",
                )

    def truth(self, kind: TruthKind, c: Customer, detail: str, also: tuple[str, ...] = ()) -> None:
        """Record the last event written as ground truth (`also`: more finding kinds due)."""
        ledger = self.ledger
        ledger.truth.append(
            Anomaly(
                kind,
                c.stream,
                ledger.stream_revision[-1],
                ledger.event_id[-1],
                detail,
                (*FINDINGS_BY_KIND[kind], *also),
            )
        )

    # --- the simulation -----------------------------------------------------------------------

    def run(self) -> None:
        ledger = self.ledger
        self._make_customers()
        rng, days = self.rng, ledger.days
        planned = [kind for kind in ANOMALY_KINDS for _ in range(ledger.anomaly_counts[kind])]
        low = min(days - 1, max(1, days // 10))
        by_day: dict[int, list[AnomalyKind]] = {}
        for kind in planned:
            by_day.setdefault(low + rng.randrange(days - low), []).append(kind)
        for d in range(days):
            due, self._deferred = self._deferred + by_day.pop(d, []), []
            self._day(d, due)
        self._leftovers(self._deferred)

    def _make_customers(self) -> None:
        rng, ledger = self.rng, self.ledger
        days, users = ledger.days, ledger.users
        paydays = self._paydays()
        for i in range(users):
            u = rng.random()
            open_day = int(days * u * u)  # more accounts early than late
            r, spend_rate, share = rng.random(), _PROFILES[-1][1], 0.0
            for share_i, rate in _PROFILES:
                share += share_i
                if r < share:
                    spend_rate = rate
                    break
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            email = f"{first}.{last}{rng.randrange(1, 100)}@{rng.choice(_DOMAINS)}".lower()
            schema = 1 if open_day < int(days * 0.15) else 2 if open_day < int(days * 0.3) else 3
            limit = bank.DEFAULT_OVERDRAFT_LIMIT if schema < 3 else rng.choice(_LIMITS)
            monthly = 1400 + 4200 * rng.random() * rng.random()
            r = rng.random()
            schedule = "monthly" if r < 0.55 else "biweekly" if r < 0.85 else "weekly"
            phase = "biweekly" + str(rng.randrange(2)) if schedule == "biweekly" else schedule
            landlord = rng.randrange(users) if rng.random() < 0.4 else -1
            landlord = -1 if landlord == i else landlord
            rent_share = 0.3 if landlord >= 0 else 0.0
            spend_month = monthly * (0.9 - rent_share) * (0.75 + 0.35 * rng.random())
            friends = tuple(
                (f + 1) % users if f == i else f for f in (rng.randrange(users) for _ in range(3))
            )
            room = days - open_day - 14
            close_day = (
                open_day + 14 + rng.randrange(room) if rng.random() < 0.06 and room > 0 else -1
            )
            uid = self.new_id()
            c = Customer(
                index=i,
                uid=uid,
                stream=User.stream_name_for(uid),
                first=first,
                last=last,
                email=email,
                open_day=open_day,
                close_day=close_day,
                schema=schema,
                limit=limit,
                spend_rate=spend_rate,
                spend_mean=spend_month / (spend_rate * 30.4 * 0.92),
                monthly=monthly,
                pay=cents(monthly / _PAYS_PER_MONTH[schedule]),
                schedule=schedule,
                paydays=paydays[phase],
                landlord=landlord,
                rent=cents(monthly * rent_share),
                friends=friends,
                opening=cents(20 + 480 * rng.random()),
            )
            self.customers.append(c)
            self.by_open_day.setdefault(open_day, []).append(c)

    def _paydays(self) -> dict[str, frozenset[int]]:
        start, days = self.ledger.start, self.ledger.days
        monthly: set[int] = set()
        weekly: set[int] = set()
        odd: set[int] = set()
        even: set[int] = set()
        for d in range(days):
            day = start + timedelta(days=d)
            if day.weekday() == 4:
                weekly.add(d)
                (odd if day.toordinal() // 7 % 2 else even).add(d)
            payday = date(day.year, day.month, 25)  # or the weekday before it
            while payday.weekday() >= 5:
                payday -= timedelta(days=1)
            if day == payday:
                monthly.add(d)
        return {
            "monthly": frozenset(monthly),
            "weekly": frozenset(weekly),
            "biweekly0": frozenset(even),
            "biweekly1": frozenset(odd),
        }

    def _day(self, d: int, anomalies: list[AnomalyKind]) -> None:
        rng = self.rng
        day_us = self.day0_us + d * DAY_US
        day = self.ledger.start + timedelta(days=d)
        weekday_factor = _WEEKDAY_SPEND[day.weekday()]
        weekend = day.weekday() >= 5
        actions: list[tuple[int, int, Callable[[Customer, int, Any], None], Any, Any]] = []
        add = actions.append
        for c in self.open:
            if d in c.paydays:
                add(
                    (
                        day_us + 6 * HOUR_US + rng.randrange(2 * HOUR_US),
                        len(actions),
                        self._salary,
                        c,
                        None,
                    )
                )
                c.last_payday = d
            if day.day == 1 and c.landlord >= 0:
                add(
                    (
                        day_us + 7 * HOUR_US + rng.randrange(3 * HOUR_US),
                        len(actions),
                        self._rent,
                        c,
                        None,
                    )
                )
            boost = 1.25 if d - c.last_payday <= 3 else 1.0
            for _ in range(self._count(c.spend_rate * weekday_factor * boost)):
                add((day_us + self._spend_time(), len(actions), self._spend, c, None))
            u = rng.random()
            if u < 0.03:
                add(
                    (
                        day_us + 9 * HOUR_US + rng.randrange(9 * HOUR_US),
                        len(actions),
                        self._cash,
                        c,
                        None,
                    )
                )
            elif u < 0.03 + (0.09 if weekend else 0.05):
                add(
                    (
                        day_us + 8 * HOUR_US + rng.randrange(15 * HOUR_US),
                        len(actions),
                        self._transfer,
                        c,
                        None,
                    )
                )
            elif u < 0.1 + 0.0015:
                add(
                    (
                        day_us + 8 * HOUR_US + rng.randrange(14 * HOUR_US),
                        len(actions),
                        self._change_email,
                        c,
                        None,
                    )
                )
            if d == c.close_day:
                add(
                    (
                        day_us + 10 * HOUR_US + rng.randrange(7 * HOUR_US),
                        len(actions),
                        self._closing_day,
                        c,
                        None,
                    )
                )
        for c in self.by_open_day.get(d, ()):
            add(
                (
                    day_us + 9 * HOUR_US + rng.randrange(11 * HOUR_US),
                    len(actions),
                    self._open,
                    c,
                    None,
                )
            )
        for kind in anomalies:
            add((day_us + rng.randrange(DAY_US), len(actions), self._anomaly, None, kind))
        actions.sort()  # (time, seq) is unique: the callables are never compared
        for t, _, action, c, arg in actions:
            t = max(t, self.clock)
            self.clock = t
            self._renamed.clear()
            action(c, t, arg)

    def _spend_time(self) -> int:
        rng = self.rng
        u = rng.random()
        if u < 0.3:  # lunch
            hours = 12.5 + (rng.random() + rng.random() - 1) * 1.5
        elif u < 0.75:  # evening
            hours = 18.5 + (rng.random() + rng.random() - 1) * 2.5
        else:
            hours = 8 + 14 * rng.random()
        return int(hours * HOUR_US)

    def _leftovers(self, kinds: list[AnomalyKind]) -> None:
        # Anomalies due on the last day that found no suitable user: try again at its end.
        t = max(self.clock, self.day0_us + self.ledger.days * DAY_US - 60 * SECOND_US)
        for _ in range(3):
            failed = []
            for kind in kinds:
                t += 10_000
                self.clock = t
                self._renamed.clear()
                if not self._inject(self, kind, t):
                    failed.append(kind)
            if not failed:
                return
            kinds = failed
        raise ConfigError(
            f"could not place anomalies {sorted(set(kinds))}: too few suitable "
            "users; generate with more users or days, or fewer anomalies"
        )

    # --- normal actions: bank commands ------------------------------------------------------

    def _open(self, c: Customer, t: int, _: Any) -> None:
        # One unit of work: the account and its opening deposit, saved together.
        meta = self.meta(t)
        c.user = User.create(
            c.uid, name=f"{c.first} {c.last}", email=c.email, overdraft_limit=c.limit, metadata=meta
        )
        c.user.deposit(c.opening, metadata=meta)
        c.first_us = t
        self.open.append(c)
        self.commit(c, t)

    def _salary(self, c: Customer, t: int, _: Any) -> None:
        if self.active(c):
            pay = c.pay
            if c.schedule == "weekly":  # hourly work: pay varies a little
                pay = cents(float(pay) * (0.9 + 0.2 * self.rng.random()))
            self._deposit(c, t, pay)

    def _cash(self, c: Customer, t: int, _: Any) -> None:
        if self.active(c):
            self._deposit(c, t, self.amount(150))

    def _deposit(self, c: Customer, t: int, amount: Decimal) -> None:
        assert c.user is not None
        c.user.deposit(amount, metadata=self.meta(t))
        self.commit(c, t)

    def _spend(self, c: Customer, t: int, _: Any) -> None:
        amount = self.amount(c.spend_mean)
        if self.active(c) and self.covers(c, amount):  # else the card is declined
            assert c.user is not None
            c.user.withdraw(amount, metadata=self.meta(t))
            self.commit(c, t)

    def _rent(self, c: Customer, t: int, _: Any) -> None:
        self._transfer_to(c, self.customers[c.landlord], t, c.rent)

    def _transfer(self, c: Customer, t: int, _: Any) -> None:
        friend = self.customers[self.rng.choice(c.friends)]
        self._transfer_to(c, friend, t, self.amount(45))

    def _transfer_to(self, c: Customer, to: Customer, t: int, amount: Decimal) -> None:
        if c is to or not (self.active(c) and self.active(to) and self.covers(c, amount)):
            return
        assert c.user is not None and to.user is not None
        bank.transfer(c.user, to.user, amount, transfer_id=self.new_id(), metadata=self.meta(t))
        self.commit(c, t)
        self.commit(to, t)

    def _change_email(self, c: Customer, t: int, _: Any) -> None:
        if self.active(c):
            assert c.user is not None
            c.emails += 1
            domain = self.rng.choice(_DOMAINS)
            c.user.change_email(
                f"{c.first}.{c.last}.{c.emails}@{domain}".lower(), metadata=self.meta(t)
            )
            self.commit(c, t)

    def _closing_day(self, c: Customer, t: int, _: Any) -> None:
        if not c.outlier:
            self.close(c, t)

    def close(self, c: Customer, t: int) -> None:
        # One unit of work: settle the balance, then close.
        if not self.active(c):
            return
        user = c.user
        assert user is not None
        meta = self.meta(t)
        if user.balance > 0:
            user.withdraw(user.balance, metadata=meta)
        elif user.balance < 0:
            user.deposit(-user.balance, metadata=meta)
        user.close(reason=self.rng.choice(_CLOSE_REASONS), metadata=meta)
        self.commit(c, t)
        self.open.remove(c)
        self.closed.append(c)

    @staticmethod
    def active(c: Customer) -> bool:
        return c.user is not None and not c.user.closed

    @staticmethod
    def covers(c: Customer, amount: Decimal) -> bool:
        assert c.user is not None
        return c.user.balance - amount >= -c.user.overdraft_limit

    def _anomaly(self, _: Any, t: int, kind: AnomalyKind) -> None:
        if not self._inject(self, kind, t):
            self._deferred.append(kind)


def _legacy_user_created(event: DomainEvent, schema: int) -> EncodedEvent:
    """UserCreated as the writers before v3 stored it (v1 had no schemaVersion key at all)."""
    payload = event.data
    name_key = "fullName" if schema == 1 else "name"
    body = {"userId": payload.user_id, name_key: payload.name, "email": payload.email}
    meta = dict(event.metadata)
    if schema > 1:
        meta[SCHEMA_VERSION_KEY] = schema
    return EncodedEvent(
        event.event_id,
        event.event_type,
        json.dumps(body, separators=(",", ":")).encode(),
        json.dumps(meta, separators=(",", ":")).encode(),
    )
