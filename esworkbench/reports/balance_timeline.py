"""The balance-timeline report's sections, computed from a replay: frames in, frames out.

``balance_report`` reads the lake once (recording what it read), replays it through the
production aggregate, and derives every section of the ``balance_timeline`` notebook; the
building blocks are public for analysts who want one section in JupyterLab.

Time is business time (``occurred_at``). "The balance at time T" follows ``fold.state_as_of``:
a stream's state after its highest revision whose ``occurred_at`` is at or before T, so a
back-dated event counts from when it happened, and a late-stamped one does not undo the events
before it. Money stays Decimal throughout; only the charts turn it into floats.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from esworkbench.aggregates import AggregateRoot
from esworkbench.errors import ConfigError
from esworkbench.filters import utc
from esworkbench.fold import Replay, replay_frame, resolve_aggregate, with_rejected
from esworkbench.lake import opened
from esworkbench.reports._record import STAGES_MIME, ReadRecord, read_recorded

if TYPE_CHECKING:
    from esworkbench.fold import OnError
    from esworkbench.lake import Lake

__all__ = [
    "BalanceReport",
    "balance_at",
    "balance_report",
    "bank_totals",
    "end_of_period",
    "largest_swings",
    "most_active",
    "scope_filters",
    "stream_summary",
    "window",
    "with_payload",
]

TIME = "occurred_at"
MAX_PERIODS = 5_000
# The heatmap shows at most this many streams and cells (an embedded chart stays small).
HEATMAP_STREAMS = 50
HEATMAP_CELLS = 5_000
# The period charts (heatmap, bank total) are 760 pixels wide; a period narrower than 2 pixels
# cannot be told from its neighbours, so the default period gives at most one per 2 pixels.
MAX_AUTO_PERIODS = 760 // 2
_OPENING, _CLOSING = "(balance at start)", "(balance at end)"
_EFF = "_effective"
_ONE_US = timedelta(microseconds=1)


@dataclasses.dataclass(frozen=True)
class BalanceReport:
    """Every section of the balance-timeline report.

    Attributes:
        read: what was read from the lake (display it to record it in the notebook).
        replay: the replay of everything read (timeline and findings of all streams in scope).
        streams: the charted streams (the most active ones in the window, at most `top_n`).
        timeline: the charted streams' timeline in the window, with `amount` and
            `new_balance` from the payloads, and opening/closing rows at `since`/`until`.
        periods: end-of-period balances of the most active streams (for a heatmap).
        closing: per charted stream: opening and closing balance, change, low, high, events.
        totals: the sum of all balances in scope at the end of each period (`total`), and
            when the aggregate records them, of the writers' recorded balances
            (`recorded_total`) and the gap between the two (`drift_total`).
        swings: the largest balance changes of single events in the window.
        findings: replay findings in the window (history today's rules reject).
        findings_by_kind: finding counts per kind and event type.
        timings: seconds spent reading the lake, replaying, and computing the sections.
    """

    read: ReadRecord
    replay: Replay
    streams: list[str]
    timeline: pl.DataFrame
    periods: pl.DataFrame
    closing: pl.DataFrame
    totals: pl.DataFrame
    swings: pl.DataFrame
    findings: pl.DataFrame
    findings_by_kind: pl.DataFrame
    since: datetime | None
    until: datetime | None
    every: str
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        # Displayed, the report reads as its description and records its stage timings,
        # which the report runner copies into the manifest (see ``stages_in_notebook``).
        return {"text/plain": self.describe(), STAGES_MIME: self.timings}

    def describe(self) -> str:
        """One paragraph: what was read, replayed and charted."""
        if self.read.event_count == 0:
            scope = json.dumps(self.read.filters) if self.read.filters else "all events"
            return (
                f"No events in the lake match this report's scope ({scope}): the sections "
                "below are empty. Check the filters (user_ids, stream_prefix, since, until), "
                "or sync the lake first."
            )
        span = f"from {_iso(self.since)} " if self.since else ""
        span += (
            f"until {_iso(self.until)}"
            if self.until
            else ("onwards" if self.since else "over all time")
        )
        return (
            f"Read {self.read.event_count:,} events of "
            f"{self.replay.states().height:,} streams; replayed through "
            f"{self.replay.aggregate.__qualname__} with {self.replay.findings.height:,} "
            f"finding(s). Charting {len(self.streams):,} stream(s) {span} (business time, "
            f"UTC), resampled every {self.every}."
        )


def balance_report(
    lake: str | Path | Lake,
    *,
    aggregate: str | type[AggregateRoot] = "esworkbench.examples.bank:User",
    user_ids: Sequence[str | int] | str | int | None = None,
    stream_prefix: str | None = None,
    top_n: int | None = 10,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    every: str | None = None,
    value: str = "balance",
    recorded: str | None = "recorded_balance",
    on_error: OnError = "skip",
) -> BalanceReport:
    """Read, replay and compute every section of the balance-timeline report.

    Args:
        lake: the lake (a path is opened read-only).
        aggregate: the production aggregate, or its import path.
        user_ids: only these aggregates' streams (``<stream_prefix>-<id>``).
        stream_prefix: only streams whose name starts with this (default: the aggregate's
            category).
        top_n: chart the N most active streams in the window (None: all).
        since: the window's start (business time, inclusive; ISO text or datetime; naive=UTC).
        until: the window's end (exclusive).
        every: the resampling period, as Polars durations ("1h", "1d", "1w", "1mo"); None
            picks the finest of 1d, 1w, 1mo, 3mo, 1y whose periods fit the charts.
        value: the state field to chart (what the amounts add up to, for the bank).
        recorded: the state field holding what the writer's own statements said (the bank's
            recorded newBalance); when the aggregate has it, the totals show both. None: skip.
        on_error: after a finding, "skip" the event and go on (default; balances follow the
            amounts), or "stop" the stream there (as production's load would).

    Example:
        >>> report = balance_report("data/lake/workbench.duckdb", top_n=5)  # doctest: +SKIP
        >>> report.read  # displayed in a notebook, this records what was read  # doctest: +SKIP
    """
    cls = resolve_aggregate(aggregate)
    start, end = utc(since or None, "since"), utc(until or None, "until")
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"since ({_iso(start)}) must be before until ({_iso(end)})")
    if every is not None:
        _check_every(every)
    filters = scope_filters(cls.stream_prefix, user_ids=user_ids, stream_prefix=stream_prefix)
    started = time.perf_counter()
    with opened(lake) as lake_:
        events, record = read_recorded(lake_, **filters)
        # Events the lake rejected at ingest are replayed as the undecodable events they are.
        replayed = with_rejected(lake_, events, **filters)
    read_at = time.perf_counter()
    result = replay_frame(replayed, cls, on_error=on_error)
    replayed_at = time.perf_counter()
    # Payloads are read only where a section shows them: the charted streams' events and the
    # largest swings, not the whole timeline.
    full = result.timeline
    if value not in full.columns:
        raise ConfigError(
            f"the {cls.__qualname__} state has no field {value!r}; state fields: "
            f"{[c for c in full.columns if c not in events.columns]}"
        )
    # With no event in scope a fresh aggregate's state columns have no type: give the money
    # columns theirs, so every section comes out empty instead of failing.
    full = full.with_columns(
        pl.col(c).cast(pl.Decimal(38, 2))
        for c in (value, recorded)
        if c is not None and c in full.columns and full.schema[c] == pl.Null
    )
    charted = most_active(full, top_n, since=start, until=end)
    if every is None:
        every = _auto_every(full, start, end, streams=len(charted))
    periods_streams = most_active(
        full, max(top_n or 0, _heatmap_streams(full, every, start, end)), since=start, until=end
    )
    in_window = _in_window(result.findings, start, end)
    in_chart = pl.col("stream_name").is_in(charted)
    charted_events = with_payload(full.filter(in_chart), events.filter(in_chart), value=value)
    report = BalanceReport(
        read=record,
        replay=result,
        streams=charted,
        timeline=window(charted_events, since=start, until=end, value=value),
        periods=end_of_period(
            full.filter(pl.col("stream_name").is_in(periods_streams)),
            every=every,
            since=start,
            until=end,
            value=value,
        ),
        closing=stream_summary(charted_events, since=start, until=end, value=value),
        totals=_totals(full, every=every, since=start, until=end, value=value, recorded=recorded),
        swings=largest_swings(full, since=start, until=end, value=value, events=events),
        findings=in_window,
        findings_by_kind=in_window.group_by("kind", "event_type")
        .agg(pl.len().alias("findings"), pl.col("stream_name").n_unique().alias("streams"))
        .sort("findings", "kind", descending=[True, False]),
        since=start,
        until=end,
        every=every,
    )
    return dataclasses.replace(
        report,
        timings={
            "read": round(read_at - started, 3),
            "replay": round(replayed_at - read_at, 3),
            "sections": round(time.perf_counter() - replayed_at, 3),
        },
    )


def _totals(
    full: pl.DataFrame,
    *,
    every: str,
    since: datetime | None,
    until: datetime | None,
    value: str,
    recorded: str | None,
) -> pl.DataFrame:
    """Bank-wide totals of `value`, and beside them of `recorded` and the gap, when present."""
    if recorded is None or recorded not in full.columns:
        return bank_totals(full, every=every, since=since, until=until, value=value)
    both = _bank_totals(full, [value, recorded], every=every, since=since, until=until)
    return both.select(
        "period_start",
        "period_end",
        pl.col(value).alias("total"),
        pl.col(recorded).alias("recorded_total"),
        (pl.col(recorded) - pl.col(value)).alias("drift_total"),
        "events",
    )


def scope_filters(
    category: str,
    *,
    user_ids: Sequence[str | int] | str | int | None = None,
    stream_prefix: str | None = None,
) -> dict[str, Any]:
    """The lake filters for a report's scope: given users, a stream prefix, or the category.

    Example:
        >>> scope_filters("user", user_ids=["1", 2])
        {'streams': ['user-1', 'user-2']}
        >>> scope_filters("user", user_ids="1, 7")
        {'streams': ['user-1', 'user-7']}
        >>> scope_filters("user")
        {'category': 'user'}
    """
    if user_ids is not None:
        # "1,7" from a command line means two users; so does ["1", "7"].
        raw = str(user_ids).split(",") if isinstance(user_ids, str | int) else list(user_ids)
        ids = [str(i).strip() for i in raw if str(i).strip()]
        if not ids:
            raise ConfigError("user_ids is empty; give at least one id, or None for all users")
        streams = [f"{category}-{i}" for i in ids]
        return {"streams": streams, **({"stream_prefix": stream_prefix} if stream_prefix else {})}
    if stream_prefix:
        return {"stream_prefix": stream_prefix}
    return {"category": category}


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
_AUTO_EVERY = ("1d", "1w", "1mo", "3mo", "1y")


def _auto_every(
    timeline: pl.DataFrame, since: datetime | None, until: datetime | None, *, streams: int
) -> str:
    """The finest default period that the charts can show.

    The heatmap of the charted streams (streams x periods) must fit its cells, and the periods
    the width of the charts (``MAX_AUTO_PERIODS``): one day suits up to about a year of data,
    and the period grows with the span.
    """
    for every in _AUTO_EVERY:
        try:
            periods = _periods(timeline, every, since, until).height
        except ConfigError:  # more periods than MAX_PERIODS: coarser
            continue
        if periods <= MAX_AUTO_PERIODS and periods * max(streams, 1) <= HEATMAP_CELLS:
            return every
    return _AUTO_EVERY[-1]


def _heatmap_streams(
    timeline: pl.DataFrame, every: str, since: datetime | None, until: datetime | None
) -> int:
    periods = max(1, _periods(timeline, every, since, until).height)
    return max(1, min(HEATMAP_STREAMS, HEATMAP_CELLS // periods))


def _in_window(frame: pl.DataFrame, since: datetime | None, until: datetime | None) -> pl.DataFrame:
    cond = pl.lit(True)
    if since is not None:
        cond &= pl.col(TIME) >= since
    if until is not None:
        cond &= pl.col(TIME) < until
    return frame.filter(cond)


def _check_every(every: str) -> None:
    try:
        pl.Series([datetime(2024, 1, 1, tzinfo=UTC)]).dt.truncate(every)
    except Exception as e:  # Polars raises several error types for a bad duration string
        raise ConfigError(
            f"every={every!r} is not a Polars duration; use e.g. '1h', '1d', '1w', '1mo' ({e})"
        ) from None


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat().replace("+00:00", "Z")
