"""Chart builders: a frame in, an altair chart out.

Every builder takes a Polars (or pandas) frame of the shape the fold and the timeline helpers
produce and returns an altair chart; none reads the lake or replays anything. altair is imported
inside the functions, so ``import esworkbench`` stays light.

Two boundaries are handled here and nowhere else:

- **Money is exact upstream and float only on the chart.** Decimal columns are cast to float when
  the frame becomes chart data (JSON has no decimal), never before.
- **Charts stay small.** A chart embeds its data, so builders refuse to embed more than
  ``max_points`` rows: the balance timeline thins itself to the last event per stream per time
  bucket (and says so in its subtitle); the others expect resampled frames.

Charts are interactive wherever Vega runs (JupyterLab, the report HTML). ``enable_renderer``
makes notebook outputs also carry the Vega-Lite spec itself, which the report runner turns into
an offline rendering (see ``esworkbench.reports``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    import altair as alt
    import pandas as pd

__all__ = [
    "DEFAULT_MAX_POINTS",
    "SPEC_MIME_PREFIX",
    "balance_heatmap",
    "balance_small_multiples",
    "balance_timeline",
    "bank_total",
    "enable_renderer",
    "findings_over_time",
    "plot_frame",
    "projection_lag",
    "static_svg",
    "vega_lite_version",
]

DEFAULT_MAX_POINTS = 5_000
# Notebook outputs carrying a Vega-Lite spec use this MIME type prefix (+ "vN+json").
# The spec travels under a MIME type of our own: nbconvert and JupyterLab have renderers for
# Vega-Lite's that fetch Vega from a CDN (or none for altair's version), and would pick them
# over the static SVG beside it; an unknown type leaves the SVG to show.
SPEC_MIME_PREFIX = "application/vnd.esworkbench.vegalite."
_RENDERER = "esworkbench"
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
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def plot_frame(
    frame: pl.DataFrame | pd.DataFrame, columns: list[str] | None = None
) -> pl.DataFrame:
    """The frame as chart data: the chosen columns, Decimals as floats, times as epoch millis.

    Casting happens only here, at the chart boundary: the analysis keeps exact Decimals. Times
    become milliseconds since the epoch (UTC): Vega formats numbers as dates wherever they
    appear, where a date string that only a tooltip uses is never parsed and shows as NaN.
    Unsigned 64-bit positions become signed ones (JSON numbers; positions stay far below 2**53).

    Example:
        >>> from decimal import Decimal
        >>> plot_frame(pl.DataFrame({"balance": [Decimal("1.50")]}))["balance"].to_list()
        [1.5]
    """
    df = frame if isinstance(frame, pl.DataFrame) else pl.from_pandas(frame)
    if columns is not None:
        df = df.select([c for c in columns if c in df.columns])
    casts: list[pl.Expr] = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.Decimal):
            casts.append(pl.col(name).cast(pl.Float64))
        elif isinstance(dtype, pl.Datetime):
            utc = pl.col(name) if dtype.time_zone else pl.col(name).dt.replace_time_zone("UTC")
            casts.append(utc.dt.epoch("ms").alias(name))
        elif dtype == pl.UInt64:
            casts.append(pl.col(name).cast(pl.Int64))
    return df.with_columns(casts) if casts else df


def enable_renderer() -> None:
    """Make notebook charts render with no network, and carry their Vega-Lite spec.

    Each chart output is a static SVG (drawn by vl-convert in the kernel) plus the spec under
    ``application/vnd.esworkbench.vegalite.vN+json``. JupyterLab and a plain
    ``jupyter nbconvert`` show the SVG, offline: altair's default output loads Vega from a CDN
    (nothing renders without a network), and JupyterLab has no renderer for the Vega-Lite
    version altair writes. The report runner replaces the SVG with the same SVG plus an inline,
    interactive Vega rendering. Calling it twice is harmless.
    """
    import altair as alt

    if alt.renderers.active == _RENDERER:
        return
    mime = f"{SPEC_MIME_PREFIX}{alt.SCHEMA_VERSION.split('.')[0]}+json"

    def render(spec: dict[str, Any], **metadata: Any) -> Any:
        title = spec.get("title")
        text = title.get("text") if isinstance(title, dict) else title
        return {
            "image/svg+xml": static_svg(spec),
            mime: spec,
            "text/plain": f"<chart: {text or 'untitled'}>",
        }, {}

    alt.renderers.register(_RENDERER, render)
    alt.renderers.enable(_RENDERER)


def vega_lite_version(spec: dict[str, Any]) -> tuple[int, int]:
    """The vl-convert Vega-Lite version closest to (not above) the spec's ``$schema`` version.

    Raises:
        ValueError: vl-convert knows no version of that major (upgrade vl-convert-python).
    """
    import vl_convert as vlc

    available = sorted(tuple(int(p) for p in v.split(".")[:2]) for v in vlc.get_vegalite_versions())
    match = re.search(r"/v(\d+)\.(\d+)", str(spec.get("$schema", "")))
    wanted = (int(match[1]), int(match[2])) if match else available[-1]
    same_major = [v for v in available if v[0] == wanted[0] and v <= wanted]
    if not same_major:
        raise ValueError(
            f"vl-convert cannot render Vega-Lite {wanted[0]}.{wanted[1]} charts "
            f"(it knows {available}); upgrade vl-convert-python"
        )
    return same_major[-1]  # type: ignore[return-value]


def static_svg(spec: dict[str, Any]) -> str:
    """A chart spec drawn as SVG text, offline (vl-convert), without an XML declaration."""
    import vl_convert as vlc

    major, minor = vega_lite_version(spec)
    svg = vlc.vegalite_to_svg(spec, vl_version=f"{major}.{minor}")
    return re.sub(r"^<\?xml[^>]*>\s*", "", svg)


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


def findings_over_time(
    over_time: pl.DataFrame | pd.DataFrame,
    *,
    time: str = "period_start",
    kind: str = "kind",
    value: str = "findings",
    title: str = "Findings over business time",
) -> alt.Chart:
    """Findings per period, stacked by kind (one colour per kind).

    Args:
        over_time: One row per period and kind: `time`, `kind`, `value`.
        time: The period start column.
        kind: The finding kind column.
        value: The count column.
        title: Chart title.

    Example:
        >>> from datetime import datetime, UTC
        >>> f = pl.DataFrame({"period_start": [datetime(2024, 1, 1, tzinfo=UTC)],
        ...                   "kind": ["overdraft"], "findings": [2]})
        >>> findings_over_time(f).to_dict()["mark"]["type"]
        'bar'
    """
    import altair as alt

    df = _to_polars(over_time)
    _require(df, [time, kind, value], "findings_over_time")
    data = plot_frame(df, [time, kind, value])
    chart: alt.Chart = (
        alt.Chart(_inline(data))
        .mark_bar()
        .encode(
            x=alt.X(f"{time}:T", title="period (business time, UTC)", scale=alt.Scale(type="utc")),
            y=alt.Y(f"{value}:Q", title="findings", stack="zero"),
            color=alt.Color(f"{kind}:N", title="kind"),
            tooltip=[
                alt.Tooltip(f"{time}:T", title="period", format=_TIME_FORMAT, formatType="utc"),
                alt.Tooltip(f"{kind}:N"),
                alt.Tooltip(f"{value}:Q"),
            ],
        )
        .properties(width=760, height=240, title=title)
    )
    return chart


def short_label(stream: pl.Expr, *, keep: int = 8) -> pl.Expr:
    """A short, still distinct stream label: ``user-6ee9a1c2…`` for ``user-6ee9a1c2-7d1f-...``.

    Example:
        >>> pl.select(short_label(pl.lit("user-6ee9a1c2-7d1f-5a3e-9c7b-2f1e0a9b8c7d")))
        ... # doctest: +NORMALIZE_WHITESPACE
        shape: (1, 1)
        ┌────────────────┐
        │ literal        │
        │ ---            │
        │ str            │
        ╞════════════════╡
        │ user-6ee9a1c2… │
        └────────────────┘
    """
    head = stream.str.extract(r"^([^-]*-)?(.*)$", 1).fill_null("")
    rest = stream.str.extract(r"^([^-]*-)?(.*)$", 2).fill_null("")
    return (
        pl.when(rest.str.len_chars() > keep + 1)
        .then(head + rest.str.slice(0, keep) + pl.lit("…"))
        .otherwise(stream)
    )


def _inline(data: pl.DataFrame) -> alt.InlineData:
    # Inline values, not a DataFrame: altair's own row limit (5,000, raised at display time)
    # would otherwise override `max_points`; altair still stores them once per chart.
    import altair as alt

    return alt.InlineData(values=data.to_dicts())


def _to_polars(frame: pl.DataFrame | pd.DataFrame) -> pl.DataFrame:
    return frame if isinstance(frame, pl.DataFrame) else pl.from_pandas(frame)


def _require(df: pl.DataFrame, columns: list[str], builder: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{builder} needs the column(s) {missing}; the frame has {df.columns}")


def _check_size(df: pl.DataFrame, max_points: int, builder: str, fix: str) -> None:
    if df.height > max_points:
        raise ValueError(
            f"{builder} would embed {df.height:,} rows in the chart (max_points={max_points:,}); "
            f"{fix} first"
        )


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


def _tooltip(column: str, title: str, dtype: pl.DataType) -> alt.Tooltip:
    import altair as alt

    if isinstance(dtype, pl.Datetime):
        return alt.Tooltip(f"{column}:T", title=title, format=_TIME_FORMAT, formatType="utc")
    if isinstance(dtype, pl.Decimal | pl.Float32 | pl.Float64):
        return alt.Tooltip(f"{column}:Q", title=title, format=",.2f")
    if dtype.is_integer():
        return alt.Tooltip(f"{column}:Q", title=title, format="d")
    return alt.Tooltip(f"{column}:N", title=title)


def _title(title: str, note: str | None) -> Any:
    import altair as alt

    return alt.TitleParams(title, subtitle=[note]) if note else title


def projection_lag(
    samples: pl.DataFrame | pd.DataFrame,
    *,
    time: str = "at",
    measures: tuple[str, ...] = ("events_behind", "positions_behind", "seconds_behind"),
    title: str = "Projection lag",
    max_points: int = DEFAULT_MAX_POINTS,
) -> alt.VConcatChart:
    """A live projection's lag over time: one line chart per measure, stacked, shared time axis.

    Example:
        >>> from datetime import datetime, UTC
        >>> s = pl.DataFrame({"at": [datetime(2024, 1, 1, tzinfo=UTC)], "events_behind": [3],
        ...                   "positions_behind": [90], "seconds_behind": [0.5]})
        >>> len(projection_lag(s).to_dict()["vconcat"])
        3
    """
    import altair as alt

    df = _to_polars(samples)
    present = [m for m in measures if m in df.columns]
    _require(df, [time, *present[:1]], "projection_lag")
    _check_size(df, max_points, "projection_lag", "sample less often")
    data = plot_frame(df, [time, *present])
    charts = [
        alt.Chart(_inline(data))
        .mark_line(interpolate="step-after", point=True)
        .encode(
            x=alt.X(f"{time}:T", title="sampled at (UTC)", scale=alt.Scale(type="utc")),
            y=alt.Y(f"{m}:Q", title=m.replace("_", " ")),
            tooltip=[
                alt.Tooltip(f"{time}:T", format="%H:%M:%S.%L", formatType="utc"),
                alt.Tooltip(f"{m}:Q"),
            ],
        )
        .properties(width=760, height=120)
        for m in present
    ]
    return alt.vconcat(*charts).properties(title=title)
