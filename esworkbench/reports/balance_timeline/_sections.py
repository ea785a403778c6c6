"""The sections of the balance-timeline report: a state timeline in, a frame out, exactly.

Time is business time (``occurred_at``); see the package docstring for what "the balance at
time T" means. Money stays Decimal.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from esworkbench.errors import ConfigError

__all__ = [
    "balance_at",
    "bank_totals",
    "end_of_period",
    "largest_swings",
    "most_active",
    "stream_summary",
    "window",
    "with_payload",
]

TIME = "occurred_at"
MAX_PERIODS = 5_000
_OPENING, _CLOSING = "(balance at start)", "(balance at end)"
_EFF = "_effective"
_ONE_US = timedelta(microseconds=1)


def with_payload(
    timeline: pl.DataFrame, events: pl.DataFrame, *, value: str = "balance"
) -> pl.DataFrame:
    """The timeline with each event's `amount` and `newBalance` (as ``new_balance``).

    Both are taken from the payload JSON as exact decimals (the scale of `value` when it is a
    Decimal, else two places); events without them get nulls.
    """
    dtype = timeline.schema.get(value)
    scale = dtype.scale if isinstance(dtype, pl.Decimal) else 2
    money = pl.Decimal(38, scale)
    payload = events.select(
        "event_id",
        pl.col("data").str.json_path_match("$.amount").cast(money, strict=False).alias("amount"),
        pl.col("data")
        .str.json_path_match("$.newBalance")
        .cast(money, strict=False)
        .alias("new_balance"),
    )
    keep = [c for c in timeline.columns if c not in ("amount", "new_balance")]
    return timeline.select(keep).join(payload, on="event_id", how="left", maintain_order="left")


def most_active(
    timeline: pl.DataFrame,
    n: int | None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[str]:
    """The `n` streams with the most events in the window (ties: by name); None = all."""
    counts = (
        _in_window(timeline, since, until)
        .group_by("stream_name")
        .len()
        .sort(["len", "stream_name"], descending=[True, False])
    )
    names = counts["stream_name"].to_list()
    return sorted(names if n is None else names[:n])


def balance_at(timeline: pl.DataFrame, moment: datetime, *, value: str = "balance") -> pl.DataFrame:
    """Each stream's `value` at `moment` (after its highest revision that had happened by then).

    Streams with no event by then are left out.

    Example:
        >>> balance_at(report.replay.timeline, datetime(2024, 6, 30, tzinfo=UTC))  # doctest: +SKIP
    """
    eff = _effective(timeline, value).filter(pl.col(TIME) <= moment)
    return eff.group_by("stream_name").agg(pl.col(_EFF).last().alias(value)).sort("stream_name")


def window(
    timeline: pl.DataFrame,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    value: str = "balance",
) -> pl.DataFrame:
    """The events in [since, until), plus each stream's balance at the window's edges.

    The edge rows (event_type "(balance at start)" / "(balance at end)", null envelope fields)
    let a step chart begin and end at the window's edges instead of at the first/last event.
    """
    inside = _in_window(timeline, since, until)
    edges = []
    for moment, label in ((since, _OPENING), (until, _CLOSING)):
        if moment is not None:
            # Both edges show the state after the events strictly before the edge.
            at = balance_at(timeline, moment - _ONE_US, value=value)
            edges.append(
                at.with_columns(
                    pl.lit(moment).cast(timeline.schema[TIME]).alias(TIME),
                    pl.lit(label).alias("event_type"),
                )
            )
    if not edges:
        return inside
    return pl.concat([inside, *edges], how="diagonal_relaxed").sort("stream_name", TIME)


def end_of_period(
    timeline: pl.DataFrame,
    *,
    every: str = "1d",
    since: datetime | None = None,
    until: datetime | None = None,
    value: str = "balance",
) -> pl.DataFrame:
    """Each stream's `value` at the end of each period, with the period's event count.

    Periods are [period_start, period_end), `every` long, covering the window (or the data).
    A stream has no row before its first event.
    """
    grid = _periods(timeline, every, since, until)
    eff = _effective(timeline, value).select("stream_name", TIME, _EFF)
    cells = (
        grid.join(eff.select("stream_name").unique(), how="cross")
        .sort("stream_name", "period_end")
        # The balance at a period's end: after the events strictly before it.
        .join_asof(
            eff.sort("stream_name", TIME),
            left_on="period_end",
            right_on=TIME,
            by="stream_name",
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,
        )
        .filter(pl.col(_EFF).is_not_null())
    )
    counts = (
        _in_window(timeline, since, until)
        .with_columns(_bucket(every, since))
        .group_by("stream_name", "period_start")
        .agg(pl.len().cast(pl.UInt32).alias("events"))
    )
    return (
        cells.join(counts, on=["stream_name", "period_start"], how="left")
        .select(
            "stream_name",
            "period_start",
            "period_end",
            pl.col(_EFF).alias(value),
            pl.col("events").fill_null(0),
        )
        .sort("stream_name", "period_start")
    )


def bank_totals(
    timeline: pl.DataFrame,
    *,
    every: str = "1d",
    since: datetime | None = None,
    until: datetime | None = None,
    value: str = "balance",
) -> pl.DataFrame:
    """The sum of every stream's `value` at the end of each period (the bank-wide total).

    Exact and linear in the events: each event that moves a stream's effective balance adds
    the change to the running total at its business time.
    """
    totals = _bank_totals(timeline, [value], every=every, since=since, until=until)
    return totals.rename({value: "total"})


def _bank_totals(
    timeline: pl.DataFrame,
    values: list[str],
    *,
    every: str,
    since: datetime | None,
    until: datetime | None,
) -> pl.DataFrame:
    """``bank_totals`` of several state fields at once, one column each (named as the field).

    The effective value of each row (see ``_effective``) is found within its stream in
    business-time order without sorting the whole timeline: the row whose revision is the
    highest so far is the one whose state holds, so each row points at that row (a forward
    fill of its index) and takes its values.
    """
    grid = _periods(timeline, every, since, until)
    order = [TIME, "stream_revision"]
    at = timeline.select("stream_name", "stream_revision", TIME, *values).with_row_index("_row")
    highest = pl.col("stream_revision").cum_max().over("stream_name", order_by=order)
    source = (
        pl.when(pl.col("stream_revision") == highest)
        .then(pl.col("_row"))
        .forward_fill()
        .over("stream_name", order_by=order)
    )
    at = at.with_columns(source.alias("_source"))
    effective = at.select(
        "stream_name",
        "stream_revision",
        TIME,
        *(pl.col(v).gather(pl.col("_source")).fill_null(0) for v in values),
    )
    # The change each row makes to its stream's effective value (from 0 before its first row).
    previous = pl.col(values).shift(1).over("stream_name", order_by=order).fill_null(0)
    deltas = effective.select(TIME, pl.col(values) - previous)
    money = {v: deltas.schema[v] for v in values}
    opening = (
        deltas.filter(pl.col(TIME) < since).select(pl.col(values).sum()).row(0, named=True)
        if since is not None
        else dict.fromkeys(values, 0)
    )
    per_period = (
        _in_window(deltas, since, until)
        .with_columns(_bucket(every, since))
        .group_by("period_start")
        .agg(pl.col(values).sum(), pl.len().cast(pl.UInt32).alias("events"))
    )
    return (
        grid.join(per_period, on="period_start", how="left")
        .sort("period_start")
        .with_columns(
            *(
                (pl.col(v).fill_null(0).cum_sum() + pl.lit(opening[v])).cast(money[v])
                for v in values
            ),
            pl.col("events").fill_null(0),
        )
        .select("period_start", "period_end", *values, "events")
    )


def largest_swings(
    timeline: pl.DataFrame,
    *,
    n: int = 10,
    since: datetime | None = None,
    until: datetime | None = None,
    value: str = "balance",
    events: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The `n` events in the window that changed a stream's `value` the most (either way).

    Ties go to the earlier commit position. With `events` (the lake's events the timeline was
    replayed from), each swing gets its event's `amount` from the payload, read for those `n`
    events only.
    """
    before = f"{value}_before"
    # Each stream's previous value in revision order; no sort of the whole timeline needed.
    changed = timeline.with_columns(
        pl.col(value).shift(1).over("stream_name", order_by="stream_revision").alias(before),
    ).with_columns((pl.col(value) - pl.col(before).fill_null(0)).alias("change"))
    order = [pl.col("change").abs(), pl.col("commit_position")]
    top = (
        _in_window(changed, since, until)
        .filter(pl.col("change") != 0)
        .top_k(n, by=order, reverse=[False, True])
        .sort(order, descending=[True, False])
    )
    if events is not None:
        ids = top["event_id"].to_list()
        top = with_payload(top, events.filter(pl.col("event_id").is_in(ids)), value=value)
    columns = [
        "stream_name",
        "stream_revision",
        "commit_position",
        TIME,
        "event_type",
        "amount",
        before,
        value,
        "change",
    ]
    return top.select([c for c in columns if c in top.columns])


def stream_summary(
    timeline: pl.DataFrame,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    value: str = "balance",
) -> pl.DataFrame:
    """Per stream: `value` at the window's start and end, the change, the low, high and events.

    The low and high include the opening balance, so a quiet stream shows its one balance.
    """
    streams = timeline.select("stream_name").unique()
    if since is not None:
        opening = balance_at(timeline, since - _ONE_US, value=value).rename({value: "opening"})
    else:
        opening = streams.with_columns(pl.lit(0).cast(timeline.schema[value]).alias("opening"))
    inside = _in_window(timeline, since, until).select("stream_name", value)
    values = pl.concat([inside, opening.rename({"opening": value})], how="vertical_relaxed")
    stats = values.group_by("stream_name").agg(
        pl.col(value).min().alias("low"), pl.col(value).max().alias("high")
    )
    counts = inside.group_by("stream_name").agg(pl.len().cast(pl.UInt32).alias("events"))
    closing = (
        balance_at(timeline, until - _ONE_US, value=value)
        if until is not None
        else timeline.group_by("stream_name").agg(pl.col(value).sort_by("stream_revision").last())
    ).rename({value: "closing"})
    return (
        streams.join(opening, on="stream_name", how="left")
        .join(closing, on="stream_name", how="left")
        .join(stats, on="stream_name", how="left")
        .join(counts, on="stream_name", how="left")
        .with_columns(
            (pl.col("closing") - pl.col("opening").fill_null(0)).alias("change"),
            pl.col("events").fill_null(0),
        )
        .select("stream_name", "opening", "closing", "change", "low", "high", "events")
        .sort("stream_name")
    )


# --- helpers -------------------------------------------------------------------------------


def _effective(timeline: pl.DataFrame, value: str) -> pl.DataFrame:
    """Rows in business-time order per stream, with `_effective`.

    `_effective` is the value after the highest revision that had happened by that row's time
    (see the module docstring).
    """
    values = timeline.select("stream_name", "stream_revision", pl.col(value).alias(_EFF))
    return (
        timeline.select("stream_name", "stream_revision", TIME)
        .sort("stream_name", TIME, "stream_revision")
        .with_columns(pl.col("stream_revision").cum_max().over("stream_name").alias("_rev"))
        .join(
            values,
            left_on=["stream_name", "_rev"],
            right_on=["stream_name", "stream_revision"],
            how="left",
            maintain_order="left",
        )
        .drop("_rev")
    )


def _periods(
    timeline: pl.DataFrame, every: str, since: datetime | None, until: datetime | None
) -> pl.DataFrame:
    """Periods [period_start, period_end) of `every`, aligned to it, clipped to the window."""
    dtype = timeline.schema[TIME]
    times = timeline[TIME]
    first = since if since is not None else times.min()
    last = until if until is not None else times.max()
    if first is None or last is None:
        return pl.DataFrame(schema={"period_start": dtype, "period_end": dtype})
    aligned = pl.Series([first, last]).cast(dtype).dt.truncate(every)
    starts = pl.datetime_range(aligned[0], aligned[1], every, eager=True).cast(dtype)
    if starts.len() > MAX_PERIODS:
        raise ConfigError(
            f"resampling every {every} gives {starts.len():,} periods (max "
            f"{MAX_PERIODS:,}); choose a coarser period or a shorter window"
        )
    grid = pl.DataFrame({"period_start": starts}).with_columns(
        pl.col("period_start").dt.offset_by(every).alias("period_end")
    )
    if since is not None:
        grid = grid.with_columns(pl.max_horizontal("period_start", pl.lit(since).cast(dtype)))
    if until is not None:
        grid = grid.with_columns(pl.min_horizontal("period_end", pl.lit(until).cast(dtype)))
    return grid.filter(pl.col("period_start") < pl.col("period_end"))


def _bucket(every: str, since: datetime | None) -> pl.Expr:
    start = pl.col(TIME).dt.truncate(every)
    if since is not None:
        start = pl.max_horizontal(start, pl.lit(since, dtype=pl.Datetime("us", "UTC")))
    return start.alias("period_start")


# Default resampling periods, finest first: a day as before, coarser as the span grows.


def _in_window(frame: pl.DataFrame, since: datetime | None, until: datetime | None) -> pl.DataFrame:
    cond = pl.lit(True)
    if since is not None:
        cond &= pl.col(TIME) >= since
    if until is not None:
        cond &= pl.col(TIME) < until
    return frame.filter(cond)


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat().replace("+00:00", "Z")
