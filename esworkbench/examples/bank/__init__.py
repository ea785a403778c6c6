"""The reference production domain: a bank ledger of users with balances and transfers.

Stream ``user-<id>`` holds one user's events: UserCreated, BalanceDeposited, BalanceWithdrawn,
TransferSent / TransferReceived, EmailChanged, UserClosed. Their stored shapes, exact money and
the registry (``bank.registry``) live in ``events`` and are re-exported here.

Commands (``User.create``, ``deposit``, ``withdraw``, ``change_email``, ``close`` and the
``transfer`` function) check today's rules *before* recording an event, and refuse with a small
named ``DomainRuleError``. ``apply`` is different: it must replay history that older writers
produced, so it always applies an event's effect first (the amounts are the ledger's truth, the
recorded ``newBalance`` is a claim) and *then* checks the event against every one of today's
rules, raising each rule it breaks (one ``DomainRuleError``, or a ``DomainRuleErrors`` group
when it breaks several), with the finding kind each counts under:

    NoSuchUser              event_before_creation  an event before UserCreated
    UserAlreadyExists       duplicate_creation     a second UserCreated (state unchanged)
    AccountClosed           activity_after_close   any event after UserClosed
    LedgerDriftError        ledger_drift           a recorded newBalance that breaks the chain of
                                                   statements: previous recorded balance +/- amount
    OverdraftLimitExceeded  overdraft              a withdrawal or transfer that left the balance
                                                   (the sum of the amounts) below -limit

Two balances are kept. ``balance`` is what the amounts add up to (the ledger's truth, and what
rules such as the overdraft limit judge); ``recorded_balance`` is the writer's own last
``newBalance`` (what the bank's statements said), and ``balance_drift`` their difference. The
ledger-drift rule checks the statement chain a real bank statement obeys, not the running sum:
real writers carry on from their own recorded balance, so after one wrong ``newBalance`` every
later event agrees with the chain again, and one break is exactly one finding, while the drift
(``balance_drift``) shows how far the statements and the amounts have drifted apart. New
commands continue the chain (``newBalance`` = recorded balance +/- amount), as such a writer
would; on clean history the two balances are equal.

Because the effect is already applied when it raises, a replay that records the errors and goes
on (the fold stage turns each into a finding) keeps exact state: no cascade over later events.
Production code never sees these raises, since commands refuse first.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Self

from esworkbench.aggregates import CAUSATION_KEY, AggregateRoot, DomainEvent
from esworkbench.errors import DomainRuleError, DomainRuleErrors, HistoryError
from esworkbench.examples.bank.events import (
    DEFAULT_OVERDRAFT_LIMIT,
    ZERO,
    BalanceDeposited,
    BalanceWithdrawn,
    EmailChanged,
    TransferReceived,
    TransferSent,
    UserClosed,
    UserCreated,
    money,
    registry,
)

__all__ = [
    "DEFAULT_OVERDRAFT_LIMIT",
    "AccountClosed",
    "BalanceDeposited",
    "BalanceNotZero",
    "BalanceWithdrawn",
    "EmailChanged",
    "EmailUnchanged",
    "InvalidAmount",
    "InvalidEmail",
    "InvalidName",
    "LedgerDriftError",
    "NoSuchUser",
    "NonPositiveAmount",
    "OverdraftLimitExceeded",
    "TransferReceived",
    "TransferSent",
    "TransferToClosedUser",
    "TransferToSelf",
    "User",
    "UserAlreadyExists",
    "UserClosed",
    "UserCreated",
    "money",
    "registry",
    "transfer",
]

# --- rules ------------------------------------------------------------------------------------


class InvalidAmount(DomainRuleError):
    """An amount that is not exact money (a float, NaN, or more than two decimal places)."""

    def __init__(self, amount: object, reason: str) -> None:
        self.amount = amount
        super().__init__(
            f"invalid amount {amount!r}: {reason}; pass a Decimal such as "
            "Decimal('12.50') or a string '12.50'"
        )


class NonPositiveAmount(InvalidAmount):
    """Deposits, withdrawals and transfers move a positive amount."""

    def __init__(self, amount: Decimal) -> None:
        super().__init__(amount, "amounts must be greater than zero")


class OverdraftLimitExceeded(DomainRuleError):
    """A withdrawal or transfer would take the balance below minus the overdraft limit."""

    kind = "overdraft"

    def __init__(self, user_id: str, balance: Decimal, amount: Decimal, limit: Decimal) -> None:
        self.user_id, self.balance, self.amount, self.limit = user_id, balance, amount, limit
        super().__init__(
            f"user {user_id!r}: paying out {amount} from a balance of {balance} "
            f"passes the overdraft limit of {limit}"
        )

    def evidence(self) -> dict[str, Any]:
        """Balance before, amount, balance after and the limit it passed."""
        return {
            "balance_before": self.balance,
            "amount": self.amount,
            "balance_after": self.balance - self.amount,
            "overdraft_limit": self.limit,
        }


class AccountClosed(DomainRuleError):
    """Nothing may happen on a closed account."""

    kind = "activity_after_close"

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"user {user_id!r} is closed; no further activity is allowed")


class UserAlreadyExists(DomainRuleError):
    """A user is created once."""

    kind = "duplicate_creation"

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"user {user_id!r} already exists; load it instead of creating it")


class NoSuchUser(DomainRuleError):
    """Commands (and events) need a created user."""

    kind = "event_before_creation"

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"user {user_id!r} does not exist; create it first")


class TransferToSelf(DomainRuleError):
    """A transfer needs two different users."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"user {user_id!r} cannot transfer money to itself")


class TransferToClosedUser(DomainRuleError):
    """Money cannot be sent to a closed account."""

    def __init__(self, user_id: str, to_user_id: str) -> None:
        self.user_id, self.to_user_id = user_id, to_user_id
        super().__init__(f"user {user_id!r} cannot transfer to {to_user_id!r}: it is closed")


class InvalidName(DomainRuleError):
    """A user needs a non-empty name."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(f"invalid name {name!r}: give a non-empty string")


class InvalidEmail(DomainRuleError):
    """An email address needs a local part, '@' and a domain."""

    def __init__(self, email: object) -> None:
        self.email = email
        super().__init__(f"invalid email {email!r}: expected something like 'ada@example.com'")


class EmailUnchanged(DomainRuleError):
    """Changing the email to the current one records nothing."""

    def __init__(self, user_id: str, email: str) -> None:
        self.user_id, self.email = user_id, email
        super().__init__(f"user {user_id!r} already has email {email!r}")


class BalanceNotZero(DomainRuleError):
    """An account is closed only when it is settled (balance zero)."""

    def __init__(self, user_id: str, balance: Decimal) -> None:
        self.user_id, self.balance = user_id, balance
        super().__init__(
            f"user {user_id!r} has a balance of {balance}; pay it out or in before closing"
        )


class LedgerDriftError(DomainRuleError):
    """Replay only: a recorded newBalance breaks the chain of the writer's own statements.

    The chain: each recorded newBalance is the previous recorded one plus or minus the amount.
    """

    kind = "ledger_drift"

    def __init__(
        self,
        user_id: str,
        event_id: str,
        recorded: Decimal,
        expected: Decimal,
        previous: Decimal,
        balance: Decimal,
    ) -> None:
        self.user_id, self.event_id = user_id, event_id
        self.recorded, self.expected, self.previous, self.balance = (
            recorded,
            expected,
            previous,
            balance,
        )
        super().__init__(
            f"user {user_id!r}, event {event_id}: recorded newBalance {recorded}, but the "
            f"previous recorded balance {previous} and the amount give {expected} "
            f"(break {recorded - expected:+}; the amounts add up to {balance})"
        )

    def evidence(self) -> dict[str, Any]:
        """The previous recorded balance, the expected and the recorded new balance."""
        return {
            "previous_recorded": self.previous,
            "expected": self.expected,
            "recorded": self.recorded,
            "break": self.recorded - self.expected,
            "balance": self.balance,
        }


def _amount(value: Decimal | int | str) -> Decimal:
    try:
        amount = money(value)
    except (TypeError, ValueError) as e:
        raise InvalidAmount(value, str(e)) from None
    if amount <= 0:
        raise NonPositiveAmount(amount)
    return amount


def _email(value: str) -> str:
    local, at, domain = value.partition("@") if isinstance(value, str) else ("", "", "")
    if not (local and at and "." in domain) or any(c.isspace() for c in value):
        raise InvalidEmail(value)
    return value


# --- the aggregate ----------------------------------------------------------------------------


class User(AggregateRoot):
    """A bank user: balance, contact details, overdraft limit, open or closed.

    Example:
        >>> ada = User.create("1", name="Ada", email="ada@example.com")
        >>> _ = ada.deposit("100.00"); _ = ada.withdraw("30.50")
        >>> ada.balance, ada.version, [e.event_type for e in ada.uncommitted_events]
        (Decimal('69.50'), 2, ['UserCreated', 'BalanceDeposited', 'BalanceWithdrawn'])
    """

    stream_prefix = "user"
    registry = registry

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.name = ""
        self.email = ""
        self.balance = ZERO
        # The writer's own statements: its last recorded newBalance, and how far it has
        # drifted from the amounts (balance_drift = recorded_balance - balance).
        self.recorded_balance = ZERO
        self.balance_drift = ZERO
        self.overdraft_limit = ZERO
        self.closed = False
        # Signed amount of the last money movement, and running totals (balance == in - out).
        self.last_amount = ZERO
        self.total_in = ZERO
        self.total_out = ZERO
        self._created = False

    # commands: check today's rules, then record

    @classmethod
    def create(
        cls,
        user_id: str,
        *,
        name: str,
        email: str,
        overdraft_limit: Decimal | int | str = DEFAULT_OVERDRAFT_LIMIT,
        metadata: Mapping[str, Any] | None = None,
    ) -> Self:
        """A new user with UserCreated recorded (not yet saved).

        Example:
            >>> User.create("7", name="Bo", email="bo@example.com", overdraft_limit=0).state()
            ... # doctest: +NORMALIZE_WHITESPACE
            {'name': 'Bo', 'email': 'bo@example.com', 'balance': Decimal('0.00'),
             'recorded_balance': Decimal('0.00'), 'balance_drift': Decimal('0.00'),
             'overdraft_limit': Decimal('0.00'), 'closed': False, 'last_amount': Decimal('0.00'),
             'total_in': Decimal('0.00'), 'total_out': Decimal('0.00')}
        """
        user = cls(user_id)
        user.open(name=name, email=email, overdraft_limit=overdraft_limit, metadata=metadata)
        return user

    def open(
        self,
        *,
        name: str,
        email: str,
        overdraft_limit: Decimal | int | str = DEFAULT_OVERDRAFT_LIMIT,
        metadata: Mapping[str, Any] | None = None,
    ) -> DomainEvent:
        """Record UserCreated on this (new) aggregate; `create` is the usual entry point."""
        if self._created:
            raise UserAlreadyExists(self.id)
        if not isinstance(name, str) or not name.strip():
            raise InvalidName(name)
        try:
            limit = money(overdraft_limit)
        except (TypeError, ValueError) as e:
            raise InvalidAmount(overdraft_limit, str(e)) from None
        if limit < 0:
            raise InvalidAmount(overdraft_limit, "an overdraft limit cannot be negative")
        return self.add_event(UserCreated(self.id, name, _email(email), limit), metadata=metadata)

    def deposit(
        self, amount: Decimal | int | str, *, metadata: Mapping[str, Any] | None = None
    ) -> DomainEvent:
        """Pay money in.

        Example:
            >>> User.create("1", name="Ada", email="ada@example.com").deposit("5").data
            BalanceDeposited(user_id='1', amount=Decimal('5.00'), new_balance=Decimal('5.00'))
        """
        self._require_open()
        value = _amount(amount)
        return self.add_event(
            BalanceDeposited(self.id, value, self.recorded_balance + value), metadata=metadata
        )

    def withdraw(
        self, amount: Decimal | int | str, *, metadata: Mapping[str, Any] | None = None
    ) -> DomainEvent:
        """Pay money out, at most down to minus the overdraft limit.

        Example:
            >>> ada = User.create("1", name="Ada", email="ada@example.com", overdraft_limit=10)
            >>> ada.withdraw("10.00").data.new_balance
            Decimal('-10.00')
            >>> ada.withdraw("0.01")
            Traceback (most recent call last):
            ...
            esworkbench.examples.bank.OverdraftLimitExceeded: user '1': paying out 0.01 from a balance of -10.00 passes the overdraft limit of 10.00
        """  # noqa: E501
        self._require_open()
        value = _amount(amount)
        self._require_cover(value)
        return self.add_event(
            BalanceWithdrawn(self.id, value, self.recorded_balance - value), metadata=metadata
        )

    def change_email(self, email: str, *, metadata: Mapping[str, Any] | None = None) -> DomainEvent:
        """Record a new email address (the old one goes into the event)."""
        self._require_open()
        new = _email(email)
        if new == self.email:
            raise EmailUnchanged(self.id, new)
        return self.add_event(EmailChanged(self.id, new, self.email), metadata=metadata)

    def close(
        self, *, reason: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> DomainEvent:
        """Close the account; its balance must be zero."""
        self._require_open()
        if self.balance != 0:
            raise BalanceNotZero(self.id, self.balance)
        return self.add_event(UserClosed(self.id, reason), metadata=metadata)

    def _require_open(self) -> None:
        if not self._created:
            raise NoSuchUser(self.id)
        if self.closed:
            raise AccountClosed(self.id)

    def _require_cover(self, amount: Decimal) -> None:
        if self.balance - amount < -self.overdraft_limit:
            raise OverdraftLimitExceeded(self.id, self.balance, amount, self.overdraft_limit)

    # replay: apply the effect, then hold the event to today's rules (see the module docstring)

    def apply(self, event: DomainEvent) -> None:
        """Change state for one event, then raise every rule it breaks (see the module docs)."""
        was_created, was_closed = self._created, self.closed
        recorded: Decimal | None = None
        amount = ZERO
        match event.data:
            case UserCreated(name=name, email=email, overdraft_limit=limit):
                if was_created:
                    raise UserAlreadyExists(self.id)
                self._created = True
                self.name, self.email, self.overdraft_limit = name, email, limit
                return
            case (
                BalanceDeposited(amount=amount, new_balance=recorded)
                | TransferReceived(amount=amount, new_balance=recorded)
            ):
                self.balance += amount
                self.total_in += amount
                self.last_amount = amount
            case (
                BalanceWithdrawn(amount=amount, new_balance=recorded)
                | TransferSent(amount=amount, new_balance=recorded)
            ):
                self.balance -= amount
                self.total_out += amount
                self.last_amount = -amount
            case EmailChanged(email=email):
                self.email = email
            case UserClosed():
                self.closed = True
            case other:
                raise HistoryError(
                    f"User cannot apply a {type(other).__name__} ({event.event_type}); it is "
                    "not a bank event",
                    aggregate_id=self.id,
                    expected_version=self.version + 1,
                    event_version=event.aggregate_version,
                )
        broken: list[DomainRuleError] = []
        if not was_created:
            broken.append(NoSuchUser(self.id))
        if was_closed:
            broken.append(AccountClosed(self.id))
        if recorded is not None:
            previous = self.recorded_balance
            expected = previous + self.last_amount
            self.recorded_balance = recorded
            self.balance_drift = recorded - self.balance
            if recorded != expected:
                broken.append(
                    LedgerDriftError(
                        self.id, event.event_id, recorded, expected, previous, self.balance
                    )
                )
            if self.last_amount < 0 and self.balance < -self.overdraft_limit:
                broken.append(
                    OverdraftLimitExceeded(
                        self.id, self.balance + amount, amount, self.overdraft_limit
                    )
                )
        if broken:
            raise DomainRuleErrors.of(broken)


def transfer(
    sender: User,
    receiver: User,
    amount: Decimal | int | str,
    *,
    transfer_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[DomainEvent, DomainEvent]:
    """Move money between two open users.

    TransferSent on the sender, TransferReceived on the receiver, same transfer id. The receiver's
    event is caused by the sender's.

    Both aggregates must then be saved (two streams, two appends).

    Example:
        >>> ada = User.create("1", name="Ada", email="ada@example.com")
        >>> bo = User.create("2", name="Bo", email="bo@example.com")
        >>> sent, received = transfer(ada, bo, "25.00", transfer_id="t1")
        >>> ada.balance, bo.balance, received.causation_id == sent.event_id
        (Decimal('-25.00'), Decimal('25.00'), True)
    """
    sender._require_open()
    if sender.id == receiver.id:
        raise TransferToSelf(sender.id)
    if not receiver._created:
        raise NoSuchUser(receiver.id)
    if receiver.closed:
        raise TransferToClosedUser(sender.id, receiver.id)
    value = _amount(amount)
    sender._require_cover(value)
    tid = transfer_id or str(uuid.uuid4())
    sent = sender.add_event(
        TransferSent(sender.id, tid, receiver.id, value, sender.recorded_balance - value),
        metadata=metadata,
    )
    received_metadata = {**(metadata or {}), CAUSATION_KEY: sent.event_id}
    received = receiver.add_event(
        TransferReceived(receiver.id, tid, sender.id, value, receiver.recorded_balance + value),
        metadata=received_metadata,
    )
    return sent, received
