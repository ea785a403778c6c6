"""Frames as chart data: the casts at the chart boundary, sizes, labels and tooltips."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    import altair as alt
    import pandas as pd

__all__ = ["DEFAULT_MAX_POINTS", "plot_frame", "short_label"]

DEFAULT_MAX_POINTS = 5_000
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


def _inline(data: pl.DataFrame) -> dict[str, Any]:
    # Inline values, not a DataFrame: altair's own row limit (5,000, raised at display time)
    # would otherwise override `max_points`; altair still stores them once per chart. A plain
    # {"values": ...} rather than alt.InlineData: altair copies and walks an InlineData's rows
    # one by one when it writes the spec (0.3 s for 4,000 rows), a plain dict it passes on.
    return {"values": data.to_dicts()}


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


def _tooltip(column: str, title: str, dtype: pl.DataType) -> alt.Tooltip:
    import altair as alt

    if isinstance(dtype, pl.Datetime):
        return alt.Tooltip(f"{column}:T", title=title, format=_TIME_FORMAT, formatType="utc")
    if isinstance(dtype, pl.Decimal | pl.Float32 | pl.Float64):
        return alt.Tooltip(f"{column}:Q", title=title, format=",.2f")
    if dtype.is_integer():
        return alt.Tooltip(f"{column}:Q", title=title, format="d")
    return alt.Tooltip(f"{column}:N", title=title)


def _title(title: str, note: str | list[str] | None) -> Any:
    import altair as alt

    if not note:
        return title
    return alt.TitleParams(title, subtitle=[note] if isinstance(note, str) else note)
