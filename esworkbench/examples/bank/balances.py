"""The bank's balances, vectorized: window sums instead of a replay.

The same balances as replaying through `esworkbench.examples.bank.User` (which applies every
amount, whatever rule it breaks), many times faster, but checking no rule. A lake's amounts are
read out of the JSON by DuckDB, where the events are (one query through ``Lake.read_sql``: no
payload leaves the database); a frame's by Polars. Polars then runs the sums per stream, in
place when the rows come in commit order (as the lake keeps them), so no sort is needed. The
two give the same frame (tests hold them equal).
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
# Exact money as the bank writes it: a decimal string with at most two places. Anything else
# (the fold reports it as decode_error) moves nothing here either, rather than being rounded.
_MONEY_TEXT = r"^-?[0-9]+(\.[0-9]{1,2})?$"
# The columns a balance row takes from its event.
_EVENT = (
    "stream_name",
    "stream_revision",
    "commit_position",
    "occurred_at",
    "event_type",
    "event_id",
)


def bank_balances(events: Lake | str | Path | pl.DataFrame) -> pl.DataFrame:
    """Every bank balance, vectorized: window sums over signed amounts per user stream.

    Deposits and transfers received add, withdrawals and transfers sent subtract, in revision
    order per ``user-*`` stream. The same balances as replaying through ``bank.User`` with
    on_error="skip" (the bank applies every amount, whatever rule it breaks), many times faster
    than that replay (bench/fold.py prints both), but it checks no rule: ``drift`` is how far
    ``new_balance`` (what the writer recorded) is from ``balance`` (the amounts' sum), and
    ``chain_break`` is non-zero exactly where a recorded balance breaks the writer's own chain
    of statements (the fold's ``ledger_drift`` findings).

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
        moves = _moves(
            events.lazy().filter(
                pl.col("stream_name").str.starts_with(f"{BANK_CATEGORY}-")
                & pl.col("event_type").is_in(list(BANK_SIGNS))
            )
        ).collect()
    else:
        with opened(events) as lake:
            moves = lake.read_sql(_MOVES_SQL, [BANK_CATEGORY, *BANK_SIGNS])
    return _running(
        moves.with_columns(pl.col("stream_revision", "commit_position").cast(pl.UInt64))
    )


# The amounts of a lake, read by DuckDB where the events are (it extracts the JSON on all
# cores, next to the data); the running sums are Polars' (`_running`), as for a frame.
_MONEY_SQL = (
    "CASE WHEN regexp_full_match({text}, '-?[0-9]+(\\.[0-9]{{1,2}})?') "
    "THEN TRY_CAST({text} AS DECIMAL(38, 2)) END"
)
_MOVES_SQL = f"""
WITH texts AS (
    SELECT stream_name, stream_revision, commit_position, occurred_at, event_type,
           event_id::VARCHAR AS event_id,
           json_extract_string(data, '$.amount') AS amount_text,
           json_extract_string(data, '$.newBalance') AS new_balance_text
    FROM events
    WHERE category = ? AND event_type IN ({", ".join("?" * len(BANK_SIGNS))})
)
SELECT stream_name, stream_revision, commit_position, occurred_at, event_type, event_id,
       CAST(CASE WHEN event_type IN ({", ".join(repr(t) for t, s in BANK_SIGNS.items() if s < 0)})
                 THEN -1 ELSE 1 END * ({_MONEY_SQL.format(text="amount_text")})
            AS DECIMAL(38, 2)) AS amount,
       {_MONEY_SQL.format(text="new_balance_text")} AS new_balance
FROM texts
"""


def _moves(scan: pl.LazyFrame) -> pl.LazyFrame:
    """The signed amount and recorded balance of each money event of a frame (as _MOVES_SQL)."""

    def money(key: str) -> pl.Expr:
        text = pl.col("data").str.json_path_match(f"$.{key}")
        exact = text.str.contains(_MONEY_TEXT).fill_null(False)
        # Past 36 whole digits no Decimal(38, 2) holds it: null, like any other non-money.
        return pl.when(exact).then(text).otherwise(None).cast(_MONEY, strict=False)

    sign = pl.col("event_type").replace_strict(BANK_SIGNS, default=0, return_dtype=pl.Int8)
    return scan.select(
        *_EVENT,
        pl.when(sign < 0).then(-money("amount")).otherwise(money("amount")).alias("amount"),
        money("newBalance").alias("new_balance"),
    )


def _running(moves: pl.DataFrame) -> pl.DataFrame:
    """Balances, drift and chain breaks: running sums per stream in revision order.

    Rows come out in commit-position order. When they come in that order with each stream's
    revisions rising (as the lake stores history), the sums run per stream in place; otherwise
    they are sorted by stream and revision first.
    """
    moves = moves.sort("commit_position") if not moves["commit_position"].is_sorted() else moves
    in_place = moves.select(
        (pl.col("stream_revision").diff().over("stream_name").fill_null(1) > 0).all()
    ).item()
    frame = moves if in_place else moves.sort("stream_name", "stream_revision")
    frame = frame.with_columns(
        pl.col("amount").fill_null(0).cast(_MONEY).cum_sum().over("stream_name").alias("balance"),
        # The writer's chain of statements: the previous recorded balance (the last one
        # readable, zero before the first).
        pl.col("new_balance")
        .forward_fill()
        .shift(1)
        .over("stream_name")
        .fill_null(0)
        .alias("previous"),
    ).select(
        *_EVENT,
        pl.col("amount").cast(_MONEY),
        pl.col("balance").cast(_MONEY),
        pl.col("new_balance").cast(_MONEY),
        (pl.col("new_balance") - pl.col("balance")).cast(_MONEY).alias("drift"),
        (pl.col("new_balance") - pl.col("previous") - pl.col("amount"))
        .cast(_MONEY)
        .alias("chain_break"),
    )
    return frame if in_place else frame.sort("commit_position")
