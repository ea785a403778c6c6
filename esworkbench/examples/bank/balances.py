"""The bank's balances, vectorized: window sums instead of a replay.

The same balances as replaying through `esworkbench.examples.bank.User` (which applies every
amount, whatever rule it breaks), many times faster, but checking no rule. A lake is summed by
DuckDB, where the events are (one query through ``Lake.read_sql``: no payload leaves the
database); a frame by Polars. The two give the same frame (tests hold them equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from esworkbench.lake import opened

if TYPE_CHECKING:
    from esworkbench.lake import Lake

__all__ = ["BANK_SIGNS", "bank_balances"]

# How each money event of the bank domain (esworkbench.examples.bank) moves the balance.
BANK_SIGNS: dict[str, int] = {
    "BalanceDeposited": 1,
    "TransferReceived": 1,
    "BalanceWithdrawn": -1,
    "TransferSent": -1,
}
BANK_CATEGORY = "user"
_MONEY = pl.Decimal(38, 2)
_BANK_COLUMNS = (
    "stream_name",
    "stream_revision",
    "commit_position",
    "occurred_at",
    "event_type",
    "event_id",
    "amount",
    "balance",
    "new_balance",
    "drift",
    "chain_break",
)
# Exact money as the bank writes it: a decimal string with at most two places. Anything else
# (the fold reports it as decode_error) moves nothing here either, rather than being rounded.
_MONEY_TEXT = r"^-?[0-9]+(\.[0-9]{1,2})?$"


def bank_balances(events: Lake | str | Path | pl.DataFrame) -> pl.DataFrame:
    """Every bank balance, vectorized: window sums over signed amounts per user stream.

    Deposits and transfers received add, withdrawals and transfers sent subtract, in revision
    order per ``user-*`` stream; a lake is summed by DuckDB, a frame by Polars. The same balances
    as replaying through ``bank.User`` with on_error="skip" (the bank applies every amount,
    whatever rule it breaks), ~13x faster than that replay on 320k events (bench/fold.py), but
    it checks no rule: ``drift`` is how far ``new_balance`` (what
    the writer recorded) is from ``balance`` (the amounts' sum), and ``chain_break`` is non-zero
    exactly where a recorded balance breaks the writer's own chain of statements (the fold's
    ``ledger_drift`` findings).

    Args:
        events: a lake, a lake path, or a frame of envelope rows (``lake.read_events()``).

    Returns:
        One row per money event, ordered by commit_position: stream_name, stream_revision,
        commit_position, occurred_at, event_type, event_id, amount (signed), balance (computed),
        new_balance (recorded), drift (new_balance - balance), chain_break (new_balance - the
        previous recorded balance - amount); money as Decimal(38, 2), exact.
        An amount that is not exact money is null and moves nothing.

    Example:
        >>> balances = bank_balances("data/lake/workbench.duckdb")  # doctest: +SKIP
        >>> balances.filter(pl.col("drift") != 0)  # doctest: +SKIP
    """
    if isinstance(events, pl.DataFrame):
        scan = events.lazy().filter(
            pl.col("stream_name").str.starts_with(f"{BANK_CATEGORY}-")
            & pl.col("event_type").is_in(list(BANK_SIGNS))
        )
        return _bank_balances(scan).collect()
    with opened(events) as lake:
        return lake.read_sql(_BANK_BALANCES_SQL, [BANK_CATEGORY, *BANK_SIGNS]).with_columns(
            pl.col("stream_revision", "commit_position").cast(pl.UInt64)
        )


# The Polars plan below in SQL, step for step: measured on 320k events, 3x faster than reading
# the payloads out into Polars (DuckDB extracts the JSON on all cores, next to the data).
_MONEY_SQL = (
    "CASE WHEN regexp_full_match({text}, '-?[0-9]+(\\.[0-9]{{1,2}})?') "
    "THEN TRY_CAST({text} AS DECIMAL(38, 2)) END"
)
_BANK_BALANCES_SQL = f"""
WITH texts AS (
    SELECT stream_name, stream_revision, commit_position, occurred_at, event_type,
           event_id::VARCHAR AS event_id,
           json_extract_string(data, '$.amount') AS amount_text,
           json_extract_string(data, '$.newBalance') AS new_balance_text
    FROM events
    WHERE category = ? AND event_type IN ({", ".join("?" * len(BANK_SIGNS))})
), moves AS (
    SELECT stream_name, stream_revision, commit_position, occurred_at, event_type, event_id,
           CASE WHEN event_type IN ({", ".join(repr(t) for t, s in BANK_SIGNS.items() if s < 0)})
                THEN -1 ELSE 1 END * ({_MONEY_SQL.format(text="amount_text")}) AS amount,
           {_MONEY_SQL.format(text="new_balance_text")} AS new_balance
    FROM texts
), running AS (
    SELECT *,
           sum(coalesce(amount, 0)) OVER stream_so_far AS balance,
           coalesce(last_value(new_balance IGNORE NULLS) OVER stream_before, 0) AS previous
    FROM moves
    WINDOW stream_so_far AS (PARTITION BY stream_name ORDER BY stream_revision
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
           stream_before AS (PARTITION BY stream_name ORDER BY stream_revision
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
)
SELECT stream_name, stream_revision, commit_position, occurred_at, event_type, event_id,
       CAST(amount AS DECIMAL(38, 2)) AS amount,
       CAST(balance AS DECIMAL(38, 2)) AS balance,
       new_balance,
       CAST(new_balance - balance AS DECIMAL(38, 2)) AS drift,
       CAST(new_balance - previous - amount AS DECIMAL(38, 2)) AS chain_break
FROM running
ORDER BY commit_position
"""


def _bank_balances(scan: pl.LazyFrame) -> pl.LazyFrame:
    def money(key: str) -> pl.Expr:
        text = pl.col("data").str.json_path_match(f"$.{key}")
        exact = text.str.contains(_MONEY_TEXT).fill_null(False)
        # Past 36 whole digits no Decimal(38, 2) holds it: null, like any other non-money.
        return pl.when(exact).then(text).otherwise(None).cast(_MONEY, strict=False)

    sign = pl.col("event_type").replace_strict(BANK_SIGNS, default=0, return_dtype=pl.Int8)
    return (
        scan.select(
            "stream_name",
            pl.col("stream_revision").cast(pl.UInt64),
            pl.col("commit_position").cast(pl.UInt64),
            "occurred_at",
            "event_type",
            "event_id",
            pl.when(sign < 0).then(-money("amount")).otherwise(money("amount")).alias("amount"),
            money("newBalance").alias("new_balance"),
        )
        .sort("stream_name", "stream_revision")
        .with_columns(
            pl.col("amount")
            .fill_null(0)
            .cast(_MONEY)
            .cum_sum()
            .over("stream_name")
            .alias("balance")
        )
        .with_columns(
            (pl.col("new_balance") - pl.col("balance")).cast(_MONEY).alias("drift"),
            # The writer's chain of statements: the previous recorded balance (the last one
            # readable, zero before the first) plus the signed amount.
            (
                pl.col("new_balance")
                - pl.col("new_balance").forward_fill().shift(1).over("stream_name").fill_null(0)
                - pl.col("amount")
            )
            .cast(_MONEY)
            .alias("chain_break"),
        )
        .sort("commit_position")
        .select(*_BANK_COLUMNS)
    )
