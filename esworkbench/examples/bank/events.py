"""The bank's stored event types: payload classes, exact money, the registry and upcasters.

These are the contract with the data (``esworkbench.examples.bank`` re-exports them; behaviour
lives there). Stored type names and JSON shapes:

    UserCreated       {userId, name, email, overdraftLimit}   (v3; v1: fullName, v2: no limit)
    BalanceDeposited  {userId, amount, newBalance}
    BalanceWithdrawn  {userId, amount, newBalance}
    TransferSent      {userId, transferId, toUserId, amount, newBalance}
    TransferReceived  {userId, transferId, fromUserId, amount, newBalance}
    EmailChanged      {userId, email, oldEmail?}
    UserClosed        {userId, reason?}

Money is ``Decimal`` in Python and a decimal string with exactly two places in JSON ("12.50"),
never a float, so it round-trips without loss; a stored number is a decode error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Self

from esworkbench.events import EventRegistry

__all__ = [
    "DEFAULT_OVERDRAFT_LIMIT",
    "BalanceDeposited",
    "BalanceWithdrawn",
    "EmailChanged",
    "TransferReceived",
    "TransferSent",
    "UserClosed",
    "UserCreated",
    "money",
    "registry",
]

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
# The overdraft every account had before limits became per user (UserCreated v3).
DEFAULT_OVERDRAFT_LIMIT = Decimal("100.00")

registry = EventRegistry()


# --- money ------------------------------------------------------------------------------------


def money(value: Decimal | int | str) -> Decimal:
    """An exact amount of money: a Decimal with two places. Floats are refused, never rounded.

    Example:
        >>> money("12.5"), money(3), money(Decimal("0.10"))
        (Decimal('12.50'), Decimal('3.00'), Decimal('0.10'))
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(f"money must be a Decimal, int or decimal string, not {value!r}")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(value)
        exact = amount.quantize(CENT)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a finite decimal amount") from None
    if exact != amount:
        raise ValueError(f"{value!r} has more than two decimal places")
    return exact


def _money_from_json(value: Any) -> Decimal:
    # The shape every writer uses ("12.50"): Decimal of it already has two places, so the
    # checks below (a third of the cost of decoding a payload) can only agree.
    if type(value) is str and _CANONICAL_MONEY(value):
        return Decimal(value)
    # Decimal strings only: a JSON number would have passed through a float somewhere.
    if not isinstance(value, str):
        raise TypeError(f"money must be a decimal string like '12.50', got {value!r}")
    amount = Decimal(value)
    exponent = amount.as_tuple().exponent
    return amount if exponent == -2 else money(amount)


_CANONICAL_MONEY = re.compile(r"-?[0-9]+\.[0-9][0-9]").fullmatch


def _money_to_json(amount: Decimal) -> str:
    return format(amount, ".2f")


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, got {value!r}")
    return value


# --- payloads ---------------------------------------------------------------------------------


class _JsonPayload:
    """The JSON shape of a payload dataclass, read off its fields.

    One camelCase key per field, in field order; `Decimal` fields are money strings, the others
    strings; a field that defaults to None is left out while None and optional when read.
    """

    __slots__ = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The payload from its stored JSON object (current shape)."""
        plan = _PLANS.get(cls)
        if plan is None:
            plan = _PLANS[cls] = _plan(cls)
        values: list[Any] = []
        for key, optional, read in plan:
            if optional and data.get(key) is None:
                values.append(None)
            else:
                values.append(read(data[key]) if read is not None else _text(data, key))
        return cls(*values)

    def to_json(self) -> dict[str, Any]:
        """The payload as the JSON object production stores."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if value is None and field.default is None:
                continue
            out[_camel(field.name)] = _money_to_json(value) if field.type == "Decimal" else value
        return out


# Per payload class: (JSON key, optional, money reader or None for text) for each field, read
# off the dataclass once (dataclasses.fields and the key names cost more than the decoding).
_Plan = tuple[tuple[str, bool, Callable[[Any], Decimal] | None], ...]
_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    return tuple(
        (
            _camel(field.name),
            field.default is None,
            _money_from_json if field.type == "Decimal" else None,
        )
        for field in dataclasses.fields(cls)
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@registry.register("UserCreated", version=3)
@dataclasses.dataclass(frozen=True, slots=True)
class UserCreated(_JsonPayload):
    """A user opened an account (v3: with its own overdraft limit)."""

    user_id: str
    name: str
    email: str
    overdraft_limit: Decimal = DEFAULT_OVERDRAFT_LIMIT


@registry.upcaster("UserCreated", from_version=1)
def _user_created_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 called the name `fullName`.
    out = {k: v for k, v in data.items() if k != "fullName"}
    out["name"] = data["fullName"]
    return out


@registry.upcaster("UserCreated", from_version=2)
def _user_created_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    # Before v3 every account had the standard limit.
    return {**data, "overdraftLimit": _money_to_json(DEFAULT_OVERDRAFT_LIMIT)}


@registry.register("BalanceDeposited")
@dataclasses.dataclass(frozen=True, slots=True)
class BalanceDeposited(_JsonPayload):
    """Money paid in; `new_balance` is the balance the writer computed after it."""

    user_id: str
    amount: Decimal
    new_balance: Decimal


@registry.register("BalanceWithdrawn")
@dataclasses.dataclass(frozen=True, slots=True)
class BalanceWithdrawn(_JsonPayload):
    """Money paid out; `new_balance` is the balance the writer computed after it."""

    user_id: str
    amount: Decimal
    new_balance: Decimal


@registry.register("TransferSent")
@dataclasses.dataclass(frozen=True, slots=True)
class TransferSent(_JsonPayload):
    """The sender's half of a transfer; the receiver records TransferReceived (same id)."""

    user_id: str
    transfer_id: str
    to_user_id: str
    amount: Decimal
    new_balance: Decimal


@registry.register("TransferReceived")
@dataclasses.dataclass(frozen=True, slots=True)
class TransferReceived(_JsonPayload):
    """The receiver's half of a transfer."""

    user_id: str
    transfer_id: str
    from_user_id: str
    amount: Decimal
    new_balance: Decimal


@registry.register("EmailChanged")
@dataclasses.dataclass(frozen=True, slots=True)
class EmailChanged(_JsonPayload):
    """A new email address (the old one is recorded when known)."""

    user_id: str
    email: str
    old_email: str | None = None


@registry.register("UserClosed")
@dataclasses.dataclass(frozen=True, slots=True)
class UserClosed(_JsonPayload):
    """The account was closed; nothing may happen on it afterwards."""

    user_id: str
    reason: str | None = None
