"""Activity charts: findings per period, a live projection's lag."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from esworkbench.charts._data import (
    _TIME_FORMAT,
    DEFAULT_MAX_POINTS,
    _check_size,
    _inline,
    _require,
    _to_polars,
    plot_frame,
)

if TYPE_CHECKING:
    import altair as alt
    import pandas as pd

__all__ = ["findings_over_time", "projection_lag"]


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
