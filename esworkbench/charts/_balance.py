"""Balance charts: timelines of every event, small multiples, a heatmap, the bank's total."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

from esworkbench.charts._buckets import bucket_timeline, choose_bucket, spell_bucket
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
    bucket: str | None = "auto",
    max_points: int = DEFAULT_MAX_POINTS,
    title: str | None = None,
    width: int = 760,
    height: int = 320,
) -> alt.VConcatChart:
    """A step line per stream of `value` over `time`, events as points, zoomed by an overview.

    The balance holds from one event to the next, hence step-after interpolation. Hovering an
    event shows its type, amount, newBalance, revision, position and both times; brushing an
    interval on the small overview below zooms the main chart; clicking a legend entry
    highlights one stream.

    When a stream has more events than the chart has pixels for (see ``bucket``), the chart
    shows one point per stream per time bucket instead (``bucket_timeline``): a band from the
    lowest to the highest balance the stream held in the bucket, and the step line and point
    of the balance after the bucket's last event, whose details the tooltip gives with the
    bucket's event count. The subtitle says so and names the bucket.

    Args:
        timeline: One row per event: `series`, `time`, `value` and any of the tooltip columns
            (event_type, amount, new_balance, stream_revision, commit_position, created).
        value: The state column to plot (Decimal is fine).
        time: The time axis; `occurred_at` (business time) by default.
        series: The column naming the line (one per stream).
        bucket: "auto": aggregate per time bucket when the events are denser than the pixels
            (or more than `max_points`), at the finest bucket that fits (``choose_bucket``);
            a Polars duration ("1d"): aggregate at that bucket; None: one point per event.
        max_points: The most rows the chart embeds; more is an error.
        title: Chart title. Default: what the chart draws, "Balance after every event", or
            "Balance per day" (the bucket) when aggregated.
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
    every = _bucket(df, bucket, time=time, series=series, width=width, max_points=max_points)
    event_columns = [c for c, _ in _EVENT_TOOLTIPS if c in df.columns]
    if every is None:
        _check_size(df, max_points, "balance_timeline", "aggregate it (bucket='auto')")
        data, note = df, None
        tooltips = [_tooltip(c, t, df.schema[c]) for c, t in _EVENT_TOOLTIPS if c in df.columns]
        if value not in event_columns:
            tooltips.insert(2, _tooltip(value, value, df.schema[value]))
        columns = [*dict.fromkeys([series, time, value, *event_columns])]
    else:
        data = bucket_timeline(
            df, every, time=time, series=series, value=value, keep=tuple(event_columns)
        )
        note = _bucket_note(every, events=df.height, buckets=data.height, value=value)
        tooltips = _bucket_tooltips(data, every, time=time, series=series, value=value)
        columns = list(data.columns)
    source = _inline(plot_frame(data, columns))

    brush = alt.selection_interval(encodings=["x"], name="zoom")
    pick = alt.selection_point(fields=[series], bind="legend", name="pick")
    x_title = f"{time} (UTC)"
    color = alt.Color(
        f"{series}:N", title=series, legend=alt.Legend(symbolLimit=50, symbolOpacity=1)
    )
    x = alt.X(f"{time}:T", title=x_title, scale=alt.Scale(type="utc", domain=brush))
    base = alt.Chart(source).encode(x=x, y=alt.Y(f"{value}:Q", title=value), color=color)
    # clip: zoomed in, marks outside the brushed interval must not spill over the axes.
    lines = base.mark_line(interpolate="step-after", clip=True).encode(
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15))
    )
    points = base.mark_point(filled=True, size=30 if every is None else 14, clip=True).encode(
        tooltip=tooltips, opacity=alt.condition(pick, alt.value(1.0), alt.value(0.1))
    )
    layers = [lines, points]
    if every is not None:
        band = (
            alt.Chart(source)
            .mark_rect(clip=True)
            .encode(
                x=alt.X("bucket_start:T", title=x_title, scale=alt.Scale(type="utc", domain=brush)),
                x2="bucket_end:T",
                y=alt.Y("low:Q", title=value),
                y2="high:Q",
                color=color,
                opacity=alt.condition(pick, alt.value(0.25), alt.value(0.04)),
                tooltip=tooltips,
            )
        )
        layers.insert(0, band)
    detail = alt.layer(*layers).add_params(pick).properties(width=width, height=height)
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
    if title is None:
        title = (
            f"{_spoken(value)} after every event"
            if every is None
            else f"{_spoken(value)} per {spell_bucket(every)}"
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
    bucket: str | None = "auto",
    max_points: int = DEFAULT_MAX_POINTS,
    title: str = "Balance per stream",
    width: int = 170,
) -> alt.FacetChart:
    """One small step chart per stream (each with its own y scale), for a few dozen streams.

    Panels are small: a stream with more events than its panel has pixels for is drawn per
    time bucket, as in ``balance_timeline`` (band: lowest to highest balance in the bucket;
    line and points: the balance after its last event), and the subtitle says so.

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
    every = _bucket(df, bucket, time=time, series=series, width=width, max_points=max_points)
    x = alt.X(f"{time}:T", title=None, scale=alt.Scale(type="utc"))
    # Points as well as the line: a stream with one event in the window has a point to show,
    # where a line alone would leave its panel empty.
    point = alt.OverlayMarkDef(filled=True, size=12)
    if every is None:
        _check_size(df, max_points, "balance_small_multiples", "aggregate it (bucket='auto')")
        data = plot_frame(df, [series, time, value])
        chart: Any = (
            alt.Chart(_inline(data))
            .mark_line(interpolate="step-after", point=point)
            .encode(
                x=x,
                y=alt.Y(f"{value}:Q", title=None),
                tooltip=[
                    alt.Tooltip(f"{series}:N"),
                    alt.Tooltip(f"{time}:T", format=_TIME_FORMAT, formatType="utc"),
                    alt.Tooltip(f"{value}:Q", format=",.2f"),
                ],
            )
            .properties(width=width, height=80)
        )
        note = None
    else:
        buckets = bucket_timeline(df, every, time=time, series=series, value=value)
        note = _bucket_note(every, events=df.height, buckets=buckets.height, value=value)
        source = _inline(plot_frame(buckets))
        tooltips = _bucket_tooltips(buckets, every, time=time, series=series, value=value)
        band = (
            alt.Chart()
            .mark_rect(opacity=0.3)
            .encode(
                x=alt.X("bucket_start:T", title=None, scale=alt.Scale(type="utc")),
                x2="bucket_end:T",
                y=alt.Y("low:Q", title=None),
                y2="high:Q",
                tooltip=tooltips,
            )
        )
        line = (
            alt.Chart()
            .mark_line(interpolate="step-after", point=point)
            .encode(x=x, y=f"{value}:Q", tooltip=tooltips)
        )
        chart = alt.layer(band, line, data=source).properties(width=width, height=80)
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


def _bucket(
    df: pl.DataFrame,
    bucket: str | None,
    *,
    time: str,
    series: str,
    width: int,
    max_points: int,
) -> str | None:
    if bucket == "auto":
        return choose_bucket(df, time=time, series=series, width=width, max_points=max_points)
    return bucket


def _spoken(column: str) -> str:
    return column.replace("_", " ").capitalize()


def _bucket_note(every: str, *, events: int, buckets: int, value: str) -> list[str]:
    """The subtitle of an aggregated chart: that it is, at what bucket, and how to read it."""
    return [
        f"Aggregated per {spell_bucket(every)} ({every}): {events:,} events, too dense to "
        f"show one by one, drawn as {buckets:,} buckets.",
        f"Band: lowest to highest {value} within a bucket; line and points: the {value} after "
        "the bucket's last event (hover for its details).",
    ]


def _bucket_tooltips(
    buckets: pl.DataFrame, every: str, *, time: str, series: str, value: str
) -> list[alt.Tooltip]:
    import altair as alt

    schema = buckets.schema
    shown = [
        alt.Tooltip(f"{series}:N", title="stream"),
        _tooltip("bucket_start", f"{spell_bucket(every)} from", schema["bucket_start"]),
        _tooltip("bucket_end", "to", schema["bucket_end"]),
        alt.Tooltip("events:Q", title="events in it", format=","),
        _tooltip("low", f"lowest {value}", schema["low"]),
        _tooltip("high", f"highest {value}", schema["high"]),
        _tooltip(value, f"{value} at its end", schema[value]),
    ]
    shown += [
        _tooltip(c, f"last event: {t}", schema[c])
        for c, t in _EVENT_TOOLTIPS
        if c in schema and c not in (series, value)
    ]
    return shown
