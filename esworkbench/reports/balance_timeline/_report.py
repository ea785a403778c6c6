"""The balance-timeline report as a whole: read, replay, and every section of the notebook."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from esworkbench.aggregates import AggregateRoot
from esworkbench.errors import ConfigError
from esworkbench.filters import utc
from esworkbench.fold import Replay, replay_frame, resolve_aggregate, with_rejected
from esworkbench.lake import opened
from esworkbench.reports._record import STAGES_MIME, ReadRecord, read_recorded
from esworkbench.reports.balance_timeline._sections import (
    _bank_totals,
    _in_window,
    _iso,
    _periods,
    bank_totals,
    end_of_period,
    largest_swings,
    most_active,
    stream_summary,
    window,
    with_payload,
)

if TYPE_CHECKING:
    from esworkbench.fold import OnError
    from esworkbench.lake import Lake

__all__ = ["BalanceReport", "balance_report", "scope_filters"]

# The heatmap shows at most this many streams and cells (an embedded chart stays small).
HEATMAP_STREAMS = 50
HEATMAP_CELLS = 5_000
# The period charts (heatmap, bank total) are 760 pixels wide; a period narrower than 2 pixels
# cannot be told from its neighbours, so the default period gives at most one per 2 pixels.
MAX_AUTO_PERIODS = 760 // 2


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


def _check_every(every: str) -> None:
    try:
        pl.Series([datetime(2024, 1, 1, tzinfo=UTC)]).dt.truncate(every)
    except Exception as e:  # Polars raises several error types for a bad duration string
        raise ConfigError(
            f"every={every!r} is not a Polars duration; use e.g. '1h', '1d', '1w', '1mo' ({e})"
        ) from None
