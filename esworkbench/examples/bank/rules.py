"""The bank's anomaly rules, beside the generic ones: what a bank's history must obey.

``RULES`` is the full set for the bank ledger (``--rules esworkbench.examples.bank.rules:RULES``):
the generic rules, the production aggregate's own findings by replay (ledger drift, overdraft,
activity after close), and the rules below, which no single aggregate can check:

    UnmatchedTransfer          a TransferSent with no TransferReceived of the same transfer id
                               within the window (or the reverse), or with another amount
    AmountOutlier              an inflow far beyond what accounts usually receive (robust:
                               median and MAD of log amounts)
    NegativeWithoutFacility    a payment that takes an account with no overdraft facility
                               below zero

Example:
    >>> [r.name for r in RULES][-3:]
    ['unmatched_transfer', 'amount_outlier', 'negative_without_facility']
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import polars as pl

from esworkbench.anomalies import GENERIC_RULES, ReplayRule, Rule, SqlRule, TimelineRule

__all__ = ["RULES", "AmountOutlier", "NegativeWithoutFacility", "UnmatchedTransfer"]

_MONEY = "TRY_CAST(json_extract_string(data, '$.{}') AS DECIMAL(38, 2))"


@dataclasses.dataclass(frozen=True)
class UnmatchedTransfer(SqlRule):
    """Both halves of a transfer, with the same amount, within a window of each other."""

    window: str = "1 day"
    name: ClassVar[str] = "unmatched_transfer"
    kind: ClassVar[str] = "unmatched_transfer"
    description: ClassVar[str] = (
        "A transfer is two events: TransferSent on the sender, TransferReceived on the "
        "receiver, with the same transfer id and amount. A half whose other half is missing "
        "within the window (business time) is money that left one account and reached no "
        "other; halves whose amounts differ are transfer_amount_mismatch."
    )

    def sql(self) -> str:
        """Pair the halves by transfer id (full outer join within the window)."""
        amount = _MONEY.format("amount")
        half = (
            "SELECT event_id::VARCHAR AS event_id, occurred_at, "
            "json_extract_string(data, '$.transferId') AS transfer_id, "
            f"{amount} AS amount FROM events WHERE event_type = '{{}}'"
        )
        within = f"INTERVAL '{self.window}'"
        return f"""
        WITH sent AS ({half.format("TransferSent")}),
             received AS ({half.format("TransferReceived")}),
             pairs AS (
                SELECT s.event_id AS sent_id, r.event_id AS received_id,
                       coalesce(s.transfer_id, r.transfer_id) AS transfer_id,
                       s.amount AS sent, r.amount AS received
                FROM sent s FULL OUTER JOIN received r
                  ON s.transfer_id = r.transfer_id
                 AND r.occurred_at BETWEEN s.occurred_at - {within} AND s.occurred_at + {within}
             )
        SELECT coalesce(sent_id, received_id) AS event_id,
               CASE WHEN sent_id IS NULL OR received_id IS NULL THEN 'unmatched_transfer'
                    ELSE 'transfer_amount_mismatch' END AS kind,
               CASE WHEN received_id IS NULL
                    THEN printf('transfer %s was sent (%s) but never received within %s',
                                transfer_id, sent::VARCHAR, '{self.window}')
                    WHEN sent_id IS NULL
                    THEN printf('transfer %s was received (%s) but never sent within %s',
                                transfer_id, received::VARCHAR, '{self.window}')
                    ELSE printf('transfer %s: sent %s, received %s', transfer_id, sent::VARCHAR,
                                received::VARCHAR)
               END AS message,
               json_object('transfer_id', transfer_id, 'sent', sent::VARCHAR,
                           'received', received::VARCHAR) AS evidence
        FROM pairs
        WHERE sent_id IS NULL OR received_id IS NULL OR sent IS DISTINCT FROM received
        """


@dataclasses.dataclass(frozen=True)
class AmountOutlier(SqlRule):
    """An inflow far beyond what the ledger's accounts receive.

    Robust statistics on a log scale: the median of the log amounts and their median absolute
    deviation (MAD), over the inflows of every account (``per="ledger"``, the default) or of
    each account alone (``per="account"``). Per account sounds closer, but on the bank's
    history it judges a young account's first paycheck against its coffee refunds: on nine
    generated ledgers the per-account score of ordinary inflows reached 42 while injected
    outliers scored as low as 0.7. Ledger-wide, on about 600 generated ledgers of 25-60 users
    over 60 days (few inflows, so a noisy median), ordinary inflows scored up to 2.16, a month's
    pay against a ledger of small deposits, and injected outliers (100-400x a month's income)
    at least 2.95; on 40 ledgers of 75-400 users over 90 days, up to 1.52 and at least 3.06.
    ``threshold`` sits between.
    """

    threshold: float = 2.5
    per: Literal["ledger", "account"] = "ledger"
    name: ClassVar[str] = "amount_outlier"
    kind: ClassVar[str] = "amount_outlier"
    description: ClassVar[str] = (
        "Money received (deposits and transfers) far beyond what accounts usually receive: the "
        "robust z-score of the amount on a log scale (0.6745 x its distance from the median, "
        "divided by the median absolute deviation) passes the threshold. Amounts spread over "
        "orders of magnitude, so the log scale; one huge amount cannot move a median."
    )

    def sql(self) -> str:
        """Robust z of log amounts over the ledger (or per account)."""
        amount = _MONEY.format("amount")
        over = "PARTITION BY stream_name" if self.per == "account" else ""
        return f"""
        WITH inflows AS (
            SELECT event_id::VARCHAR AS event_id, stream_name, {amount} AS amount
            FROM events WHERE event_type IN ('BalanceDeposited', 'TransferReceived')
        ),
        logged AS (
            SELECT *, ln(amount::DOUBLE) AS x, median(ln(amount::DOUBLE)) OVER ({over}) AS center
            FROM inflows WHERE amount > 0
        ),
        scored AS (
            SELECT *, 0.6745 * (x - center)
                      / nullif(median(abs(x - center)) OVER ({over}), 0) AS z
            FROM logged
        )
        SELECT event_id,
               printf('inflow of %s: robust z %.2f against a median inflow of %.2f',
                      amount::VARCHAR, z, exp(center)) AS message,
               json_object('amount', amount::VARCHAR, 'median', round(exp(center), 2),
                           'robust_z', round(z, 2), 'threshold', {self.threshold}) AS evidence
        FROM scored
        WHERE z > {self.threshold}
        """


class NegativeWithoutFacility(TimelineRule):
    """A payment that takes an account without an overdraft facility below zero."""

    name = "negative_without_facility"
    kind = "negative_balance_without_facility"
    description = (
        "An account whose overdraft limit is zero may never go below zero: a withdrawal or "
        "transfer that leaves it negative (the balance the amounts give) is reported, "
        "whatever the writer recorded."
    )

    def where(self) -> pl.Expr:
        """Debits that leave a zero-limit account below zero."""
        return (
            (pl.col("overdraft_limit") == 0)
            & (pl.col("last_amount") < 0)
            & (pl.col("balance") < 0)
            & pl.col("changed").list.contains("balance")
        )

    def message(self) -> pl.Expr:
        """The payment and the balance it left."""
        return pl.format(
            "paying out {} left the balance at {} on an account with no overdraft facility",
            -pl.col("last_amount"),
            pl.col("balance"),
        )

    def evidence(self) -> tuple[str, ...]:
        """Balance, payment and limit."""
        return ("balance", "last_amount", "overdraft_limit")


RULES: tuple[Rule, ...] = (
    *GENERIC_RULES,
    ReplayRule("esworkbench.examples.bank:User"),
    UnmatchedTransfer(),
    AmountOutlier(),
    NegativeWithoutFacility(),
)
