"""Balance charts: timelines of every event, small multiples, a heatmap, the bank's total."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

from esworkbench.charts._data import (
    _TIME_FORMAT,
    DEFAULT_MAX_POINTS,
    _check_size,
    _inline,
    _require,
    _title,
    _to_polars,
    _tooltip,
    plot_frame,
    short_label,
)

if TYPE_CHECKING:
    import altair as alt
    import pandas as pd

__all__ = ["balance_heatmap", "balance_small_multiples", "balance_timeline", "bank_total"]

# Coarser and coarser buckets to thin a timeline with; the first that fits is used.
_THINNING_STEPS = ("1m", "5m", "15m", "1h", "6h", "1d", "1w", "1mo", "3mo", "1y")
# Tooltip columns of the timeline, in display order, with their titles (present ones are used).
_EVENT_TOOLTIPS = (
    ("stream_name", "stream"),
    ("event_type", "event type"),
    ("amount", "amount"),
    ("new_balance", "newBalance"),
    ("stream_revision", "revision"),
    ("commit_position", "position"),
    ("created", "created"),
    ("occurred_at", "occurred_at"),
)


def balance_timeline(
    timeline: pl.DataFrame | pd.DataFrame,
    *,
    value: str = "balance",
    time: str = "occurred_at",
    series: str = "stream_name",
    max_points: int = DEFAULT_MAX_POINTS,
    title: str = "Balance after every event",
    width: int = 760,
    height: int = 320,
) -> alt.VConcatChart:
    """A step line per stream of `value` over `time`, events as points, zoomed by an overview.

    The balance holds from one event to the next, hence step-after interpolation. Hovering an
    event shows its type, amount, newBalance, revision, position and both times; brushing an
    interval on the small overview below zooms the main chart; clicking a legend entry
    highlights one stream.

    Args:
        timeline: One row per event: `series`, `time`, `value` and any of the tooltip columns
            (event_type, amount, new_balance, stream_revision, commit_position, created).
        value: The state column to plot (Decimal is fine).
        time: The time axis; `occurred_at` (business time) by default.
        series: The column naming the line (one per stream).
        max_points: Above this many rows, keep the last event per stream per time bucket.
        title: Chart title.
        width: Width of the main chart in pixels.
        height: Height of the main chart in pixels.

    Example:
        >>> from datetime import datetime, UTC
        >>> tl = pl.DataFrame({"stream_name": ["user-1"], "balance": [1.0],
        ...                    "occurred_at": [datetime(2024, 1, 1, tzinfo=UTC)]})
        >>> balance_timeline(tl).to_dict()["vconcat"][0]["layer"][0]["mark"]["interpolate"]
        'step-after'
    """
    import altair as alt

    df = _to_polars(timeline)
    _require(df, [series, time, value], "balance_timeline")
    df, note = _thin(df, time=time, series=series, max_points=max_points)
    tooltip_columns = [c for c, _ in _EVENT_TOOLTIPS if c in df.columns]
    source = _inline(plot_frame(df, [*dict.fromkeys([series, time, value, *tooltip_columns])]))

    brush = alt.selection_interval(encodings=["x"], name="zoom")
    pick = alt.selection_point(fields=[series], bind="legend", name="pick")
    x_title = f"{time} (UTC)"
    color = alt.Color(f"{series}:N", title=series, legend=alt.Legend(symbolLimit=50))
    base = alt.Chart(source).encode(
        x=alt.X(f"{time}:T", title=x_title, scale=alt.Scale(type="utc", domain=brush)),
        y=alt.Y(f"{value}:Q", title=value),
        color=color,
    )
    tooltips = [_tooltip(c, t, df.schema[c]) for c, t in _EVENT_TOOLTIPS if c in df.columns]
    if value not in tooltip_columns:
        tooltips.insert(2, _tooltip(value, value, df.schema[value]))
    # clip: zoomed in, marks outside the brushed interval must not spill over the axes.
    lines = base.mark_line(interpolate="step-after", clip=True).encode(
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15))
    )
    points = base.mark_point(filled=True, size=30, clip=True).encode(
        tooltip=tooltips, opacity=alt.condition(pick, alt.value(1.0), alt.value(0.1))
    )
    detail = alt.layer(lines, points).add_params(pick).properties(width=width, height=height)
    overview = (
        alt.Chart(source)
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X(f"{time}:T", title="drag to zoom", scale=alt.Scale(type="utc")),
            y=alt.Y(f"{value}:Q", title=None, axis=alt.Axis(tickCount=3)),
            color=alt.Color(f"{series}:N", legend=None),
        )
        .add_params(brush)
        .properties(width=width, height=60)
    )
    return alt.vconcat(detail, overview).properties(title=_title(title, note))


def balance_small_multiples(
    timeline: pl.DataFrame | pd.DataFrame,
    *,
    value: str = "balance",
    time: str = "occurred_at",
    series: str = "stream_name",
    columns: int = 4,
    max_series: int = 48,
    max_points: int = DEFAULT_MAX_POINTS,
    title: str = "Balance per stream",
) -> alt.FacetChart:
    """One small step chart per stream (each with its own y scale), for a few dozen streams.

    Example:
        >>> from datetime import datetime, UTC
        >>> tl = pl.DataFrame({"stream_name": ["user-1", "user-2"], "balance": [1.0, 2.0],
        ...     "occurred_at": [datetime(2024, 1, 1, tzinfo=UTC)] * 2})
        >>> balance_small_multiples(tl).to_dict()["columns"]
        4
    """
    import altair as alt

    df = _to_polars(timeline)
    _require(df, [series, time, value], "balance_small_multiples")
    n_series = df[series].n_unique()
    if n_series > max_series:
        raise ValueError(
            f"{n_series} streams are too many for small multiples (max_series={max_series}); "
            "use balance_heatmap for many streams, or pass fewer (e.g. the top N by activity)"
        )
    df, note = _thin(df, time=time, series=series, max_points=max_points)
    data = plot_frame(df, [series, time, value])
    chart = (
        alt.Chart(_inline(data))
        # Points as well as the line: a stream with one event in the window has a point to
        # show, where a line alone would leave its panel empty.
        .mark_line(interpolate="step-after", point=alt.OverlayMarkDef(filled=True, size=12))
        .encode(
            x=alt.X(f"{time}:T", title=None, scale=alt.Scale(type="utc")),
            y=alt.Y(f"{value}:Q", title=None),
            tooltip=[
                alt.Tooltip(f"{series}:N"),
                alt.Tooltip(f"{time}:T", format=_TIME_FORMAT, formatType="utc"),
                alt.Tooltip(f"{value}:Q", format=",.2f"),
            ],
        )
        .properties(width=170, height=80)
    )
    faceted: alt.FacetChart = (
        chart.facet(facet=alt.Facet(f"{series}:N", title=None), columns=columns)
        .resolve_scale(y="independent")
        .properties(title=_title(title, note))
    )
    return faceted


def balance_heatmap(
    periods: pl.DataFrame | pd.DataFrame,
    *,
    value: str = "balance",
    start: str = "period_start",
    end: str = "period_end",
    series: str = "stream_name",
    max_points: int = DEFAULT_MAX_POINTS,
    title: str = "Balance at the end of each period",
) -> alt.Chart:
    """A stream x period heatmap of `value` (e.g. end-of-period balances), for many streams.

    Colours diverge around zero, so overdrawn periods stand out.

    Args:
        periods: One row per stream and period: `series`, `start`, `end`, `value`; an `events`
            column (events in the period) is shown in the tooltip when present.
        value: The column to colour by (Decimal is fine).
        start: Period start column.
        end: Period end column.
        series: The row label column.
        max_points: Refuse more cells than this: resample coarser or pass fewer streams.
        title: Chart title.

    Example:
        >>> from datetime import datetime, UTC
        >>> p = pl.DataFrame({"stream_name": ["user-1"], "balance": [5.0],
        ...     "period_start": [datetime(2024, 1, 1, tzinfo=UTC)],
        ...     "period_end": [datetime(2024, 1, 2, tzinfo=UTC)]})
        >>> balance_heatmap(p).to_dict()["mark"]["type"]
        'rect'
    """
    import altair as alt

    df = _to_polars(periods)
    _require(df, [series, start, end, value], "balance_heatmap")
    _check_size(df, max_points, "balance_heatmap", "resample to a coarser period")
    extra = ["events"] if "events" in df.columns else []
    data = plot_frame(df, [series, start, end, value, *extra]).with_columns(
        short_label(pl.col(series)).alias("_label")
    )
    if data["_label"].n_unique() < data[series].n_unique():  # two would share a label
        data = data.with_columns(pl.col(series).alias("_label"))
    tooltips = [
        alt.Tooltip(f"{series}:N"),
        alt.Tooltip(f"{start}:T", title="from", format=_TIME_FORMAT, formatType="utc"),
        alt.Tooltip(f"{end}:T", title="to", format=_TIME_FORMAT, formatType="utc"),
        alt.Tooltip(f"{value}:Q", format=",.2f"),
    ] + [alt.Tooltip("events:Q")] * bool(extra)
    n_series = df[series].n_unique()
    heatmap: alt.Chart = (
        alt.Chart(_inline(data))
        .mark_rect()
        .encode(
            x=alt.X(f"{start}:T", title="period (UTC)", scale=alt.Scale(type="utc")),
            x2=alt.X2(f"{end}:T"),
            # Short labels (category and the id's first characters), never cut mid-way.
            y=alt.Y("_label:N", title=None, sort=None, axis=alt.Axis(labelLimit=0)),
            # A symmetric log scale: a few large accounts would otherwise take the whole colour
            # range and leave every other account one pale shade.
            color=alt.Color(
                f"{value}:Q",
                title=value,
                scale=alt.Scale(type="symlog", scheme="redblue", domainMid=0),
            ),
            tooltip=tooltips,
        )
        .properties(width=760, height=max(60, min(16 * n_series, 900)), title=title)
    )
    return heatmap


def bank_total(
    totals: pl.DataFrame | pd.DataFrame,
    *,
    value: str = "total",
    compare: str | None = "recorded_total",
    time: str = "period_end",
    max_points: int = DEFAULT_MAX_POINTS,
    title: str = "Bank-wide total balance",
) -> alt.LayerChart:
    """The sum of all balances at the end of each period, as a line with points.

    Args:
        totals: One row per period: `time` (the period's end) and `value` (Decimal is fine);
            `events` (events in the period) is shown in the tooltip when present.
        value: The total column.
        compare: A second total drawn beside it when the frame has it (by default the sum of
            the writers' recorded balances, so a drift between the two shows as a gap).
        time: The period end column.
        max_points: Refuse more periods than this: resample coarser.
        title: Chart title.

    Example:
        >>> from datetime import datetime, UTC
        >>> t = pl.DataFrame({"period_end": [datetime(2024, 1, 2, tzinfo=UTC)], "total": [9.0]})
        >>> bank_total(t).to_dict()["layer"][0]["mark"]["type"]
        'line'
    """
    import altair as alt

    df = _to_polars(totals)
    _require(df, [time, value], "bank_total")
    _check_size(df, max_points, "bank_total", "resample to a coarser period")
    extra = ["events"] if "events" in df.columns else []
    series = [value] + ([compare] if compare is not None and compare in df.columns else [])
    data = plot_frame(df, [time, *series, *extra])
    base = (
        alt.Chart(_inline(data))
        .transform_fold(list[Any](series), as_=["series", "amount"])
        .encode(
            x=alt.X(f"{time}:T", title="end of period (UTC)", scale=alt.Scale(type="utc")),
            y=alt.Y("amount:Q", title=" / ".join(series)),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="top")),
        )
    )
    tooltips = [
        alt.Tooltip(f"{time}:T", title="end of period", format=_TIME_FORMAT, formatType="utc"),
        alt.Tooltip("series:N"),
        alt.Tooltip("amount:Q", format=",.2f"),
    ] + [alt.Tooltip("events:Q")] * bool(extra)
    line = base.mark_line()
    points = base.mark_point(filled=True, size=20).encode(tooltip=tooltips)
    return alt.LayerChart(layer=[line, points]).properties(width=760, height=240, title=title)


def _thin(
    df: pl.DataFrame, *, time: str, series: str, max_points: int
) -> tuple[pl.DataFrame, str | None]:
    """At most `max_points` rows: the last event per stream per bucket, the finest that fits.

    The last event of a bucket carries the balance the bucket ends with, so the thinned step
    line passes through true balances at true times; only intermediate steps disappear.
    """
    if df.height <= max_points:
        return df, None
    ordered = df.sort([series, time])
    for every in _THINNING_STEPS:
        thinned = (
            ordered.with_columns(pl.col(time).dt.truncate(every).alias("_bucket"))
            .group_by([series, "_bucket"], maintain_order=True)
            .last()
            .drop("_bucket")
        )
        if thinned.height <= max_points:
            note = (
                f"thinned: the last event per stream per {every} "
                f"({thinned.height:,} of {df.height:,} events)"
            )
            return thinned, note
    raise ValueError(
        f"{df[series].n_unique():,} streams do not fit in {max_points:,} points even at one "
        "point per year; chart fewer streams (e.g. the top N by activity)"
    )
