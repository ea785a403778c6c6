"""The bank's reference read models: an account summary (v1, v2) and account totals in SQL.

``AccountSummaryV1`` keeps one row per user: name, email, status, balance (the sum of the
amounts, never a writer's recorded ``newBalance``), counts and totals of deposits, withdrawals
and transfers, and the last activity. It applies every event it is given, as the ledger
recorded it.

``AccountSummaryV2`` changes one rule: **a closed account's row is frozen**. Events recorded on
a user's stream after its ``UserClosed`` (history that today's rules reject: the sample ledger's
``activity_after_close``) no longer move its balance, counts or last activity. Rebuilding both
over the same window and diffing them shows which accounts the change affects, and bisection
finds the event from which each one differs.

``AccountTotals`` is the SQL twin of the money columns: one aggregation over the typed views.

Example:
    >>> from esworkbench.projections import resolve_projection
    >>> resolve_projection(AccountSummaryV2).schema_name
    'rm_account_summary_v2'
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

import pyarrow as pa

from esworkbench.examples.bank.events import (
    BalanceDeposited,
    BalanceWithdrawn,
    TransferReceived,
    TransferSent,
    registry,
)
from esworkbench.projections import Event, Projection, Row, SqlProjection, handles

__all__ = ["AccountSummaryV1", "AccountSummaryV2", "AccountTotals"]

_MONEY = pa.decimal128(18, 2)
_ZERO = Decimal("0.00")
_TIME = pa.timestamp("us", tz="UTC")


class AccountSummaryV1(Projection):
    """One row per user: identity, status, balance, movements; every event counts."""

    name = "account_summary"
    version = 1
    key = "user_id"
    registry = registry
    partition = "stream"
    columns: ClassVar[pa.Schema] = pa.schema(
        [
            ("user_id", pa.string()),
            ("name", pa.string()),
            ("email", pa.string()),
            ("status", pa.string()),
            ("balance", _MONEY),
            ("deposits", pa.int64()),
            ("deposited", _MONEY),
            ("withdrawals", pa.int64()),
            ("withdrawn", _MONEY),
            ("transfers_in", pa.int64()),
            ("transfers_out", pa.int64()),
            ("events", pa.int64()),
            ("last_activity", _TIME),
        ]
    )

    def key_of(self, event: Event) -> str | None:
        """The user id (the stream is ``user-<id>``)."""
        user_id: str = event.payload.user_id
        return user_id

    def stream_of(self, key: str) -> str | None:
        """A user's events are in ``user-<id>``."""
        return f"user-{key}"

    def new_row(self, key: str) -> Row:
        """Zero balance and counts before the first event."""
        row = super().new_row(key)
        row.update(
            status="open",
            balance=_ZERO,
            deposits=0,
            deposited=_ZERO,
            withdrawals=0,
            withdrawn=_ZERO,
            transfers_in=0,
            transfers_out=0,
            events=0,
        )
        return row

    def applies(self, row: Row) -> bool:
        """Whether an event on this row changes it (v1: always)."""
        return True

    def _touch(self, row: Row, event: Event) -> None:
        row["events"] += 1
        row["last_activity"] = event.occurred_at

    @handles("UserCreated")
    def created(self, row: Row, event: Event) -> None:
        """A new account."""
        row["name"] = event.payload.name
        row["email"] = event.payload.email
        self._touch(row, event)

    @handles("EmailChanged")
    def email_changed(self, row: Row, event: Event) -> None:
        """A new email address."""
        if self.applies(row):
            row["email"] = event.payload.email
            self._touch(row, event)

    @handles("BalanceDeposited")
    def deposited(self, row: Row, event: Event) -> None:
        """Money in."""
        if self.applies(row):
            payload: BalanceDeposited = event.payload
            row["balance"] += payload.amount
            row["deposits"] += 1
            row["deposited"] += payload.amount
            self._touch(row, event)

    @handles("BalanceWithdrawn")
    def withdrawn(self, row: Row, event: Event) -> None:
        """Money out."""
        if self.applies(row):
            payload: BalanceWithdrawn = event.payload
            row["balance"] -= payload.amount
            row["withdrawals"] += 1
            row["withdrawn"] += payload.amount
            self._touch(row, event)

    @handles("TransferSent")
    def sent(self, row: Row, event: Event) -> None:
        """The sender's half of a transfer."""
        if self.applies(row):
            payload: TransferSent = event.payload
            row["balance"] -= payload.amount
            row["transfers_out"] += 1
            self._touch(row, event)

    @handles("TransferReceived")
    def received(self, row: Row, event: Event) -> None:
        """The receiver's half of a transfer."""
        if self.applies(row):
            payload: TransferReceived = event.payload
            row["balance"] += payload.amount
            row["transfers_in"] += 1
            self._touch(row, event)

    @handles("UserClosed")
    def closed(self, row: Row, event: Event) -> None:
        """The account is closed."""
        if self.applies(row):
            row["status"] = "closed"
            self._touch(row, event)


class AccountSummaryV2(AccountSummaryV1):
    """Version 2: nothing recorded after ``UserClosed`` changes a closed account's row."""

    version = 2

    def applies(self, row: Row) -> bool:
        """A closed account's row is frozen."""
        return bool(row["status"] != "closed")


class AccountTotals(SqlProjection):
    """Per user: deposits, withdrawals and transfers in and out, and the balance they give."""

    name = "account_totals"
    version = 1
    key = "user_id"
    sql = """
        WITH moves AS (
            SELECT "userId" AS user_id, amount AS delta, 'deposit' AS kind
            FROM {BalanceDeposited}
            UNION ALL SELECT "userId", -amount, 'withdrawal' FROM {BalanceWithdrawn}
            UNION ALL SELECT "userId", -amount, 'transfer_out' FROM {TransferSent}
            UNION ALL SELECT "userId", amount, 'transfer_in' FROM {TransferReceived}
        ),
        users AS (SELECT DISTINCT "userId" AS user_id FROM {UserCreated})
        SELECT
            user_id,
            CAST(coalesce(sum(delta), 0) AS DECIMAL(18, 2)) AS balance,
            count(*) FILTER (kind = 'deposit') AS deposits,
            CAST(coalesce(sum(delta) FILTER (kind = 'deposit'), 0) AS DECIMAL(18, 2))
                AS deposited,
            count(*) FILTER (kind = 'withdrawal') AS withdrawals,
            CAST(coalesce(-sum(delta) FILTER (kind = 'withdrawal'), 0) AS DECIMAL(18, 2))
                AS withdrawn,
            count(*) FILTER (kind = 'transfer_in') AS transfers_in,
            count(*) FILTER (kind = 'transfer_out') AS transfers_out
        FROM users FULL JOIN moves USING (user_id)
        GROUP BY user_id
    """
