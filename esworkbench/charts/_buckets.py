"""Timelines denser than the pixels, aggregated per series per time bucket.

A chart 760 pixels wide cannot show a year of one account's thousand events: the points
overlap into a smear, and every one of them is embedded in the page. So when a series has more
rows than the chart has room for (one per `MIN_BUCKET_PIXELS` pixels), the timeline is
aggregated per series per time bucket, the finest of `BUCKET_STEPS` that fits, keeping what a
step line drawn through every row would show: where each bucket ends, and the lowest and highest
value the series held inside it. A chart drawn from the buckets says so, and at what bucket.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

__all__ = ["BUCKET_STEPS", "MIN_BUCKET_PIXELS", "bucket_timeline", "choose_bucket"]

# Finest first; `choose_bucket` takes the first that gives few enough buckets.
BUCKET_STEPS = (
    "1s",
    "10s",
    "1m",
    "5m",
    "15m",
    "1h",
    "3h",
    "6h",
    "12h",
    "1d",
    "2d",
    "3d",
    "1w",
    "2w",
    "1mo",
    "3mo",
    "6mo",
    "1y",
)
# A bucket narrower than this many pixels would be drawn over its neighbours.
MIN_BUCKET_PIXELS = 3
# Lengths to count buckets with; months and years by their average length.
_LENGTHS = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "mo": timedelta(days=30.44),
    "y": timedelta(days=365.25),
}
_NAMES = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month"}
_NAMES["y"] = "year"


def choose_bucket(
    frame: pl.DataFrame,
    *,
    time: str = "occurred_at",
    series: str = "stream_name",
    width: int,
    max_points: int,
) -> str | None:
    """The bucket to aggregate a timeline with for a chart `width` pixels wide, or None.

    None when every series has a row per `MIN_BUCKET_PIXELS` pixels or fewer and the frame
    has at most `max_points` rows: then each row can be shown. Otherwise the finest of
    `BUCKET_STEPS` whose buckets over the frame's time span fit the width and whose rows (at
    most one per series per bucket) fit `max_points`.

    Raises:
        ValueError: the series do not fit in `max_points` even at one bucket per year.

    Example:
        >>> from datetime import datetime, timedelta, UTC
        >>> t0 = datetime(2024, 1, 1, tzinfo=UTC)
        >>> year = pl.DataFrame({"stream_name": ["a"] * 1000,
        ...     "occurred_at": [t0 + timedelta(hours=9 * i) for i in range(1000)]})
        >>> choose_bucket(year, width=760, max_points=5000)
        '2d'
        >>> choose_bucket(year.head(200), width=760, max_points=5000) is None
        True
    """
    if frame.is_empty():
        return None
    room = max(1, width // MIN_BUCKET_PIXELS)
    densest = frame.group_by(series).len()["len"].max()
    if densest is not None and int(densest) <= room and frame.height <= max_points:  # type: ignore[arg-type]
        return None
    span = timedelta(
        microseconds=frame.select(
            (pl.col(time).max() - pl.col(time).min()).dt.total_microseconds()
        ).item()
    )
    n_series = frame[series].n_unique()
    for every in BUCKET_STEPS:
        buckets = int(span / _length(every)) + 1
        if buckets <= room and min(buckets * n_series, frame.height) <= max_points:
            return every
    raise ValueError(
        f"{n_series:,} series do not fit in {max_points:,} points even at one point per year; "
        "chart fewer series (e.g. the top N by activity)"
    )


def bucket_timeline(
    frame: pl.DataFrame,
    every: str,
    *,
    time: str = "occurred_at",
    series: str = "stream_name",
    value: str = "balance",
    keep: tuple[str, ...] = (),
) -> pl.DataFrame:
    """A timeline aggregated per series per time bucket of `every` (a Polars duration).

    The rows of each series are taken in `time` order (ties in their order in `frame`), as a
    step line through them is drawn. One row per series per bucket with rows in it:

    - `series`, ``bucket_start``, ``bucket_end`` (the bucket, [start, end));
    - ``events``: the rows in the bucket;
    - ``low``, ``high``: the lowest and highest `value` the series held during the bucket: the
      value carried in from its previous row (if any) and the value of each row in the bucket;
    - `value`: the value of the bucket's last row (what the bucket ends with); `time`: that
      row's time; and each column of `keep`, from that row.

    Money stays exact: `value`, ``low`` and ``high`` keep `value`'s type (Decimal stays
    Decimal).

    Example:
        >>> from datetime import datetime, UTC
        >>> from decimal import Decimal
        >>> tl = pl.DataFrame({"stream_name": ["a"] * 3, "balance": [Decimal(5), Decimal(-2),
        ...     Decimal(1)], "occurred_at": [datetime(2024, 1, 1, h, tzinfo=UTC) for h in (1,
        ...     2, 3)]})
        >>> bucket_timeline(tl, "1d").select("events", "low", "high", "balance").rows()
        [(3, Decimal('-2'), Decimal('5'), Decimal('1'))]
    """
    before = "_esw_before"
    ordered = frame.sort(series, time, maintain_order=True).with_columns(
        pl.col(time).dt.truncate(every).alias("bucket_start"),
        pl.col(value).shift(1).over(series).alias(before),
    )
    carried = pl.col(before).first()  # the value the bucket's first row was carried in on
    return (
        ordered.group_by(series, "bucket_start", maintain_order=True)
        .agg(
            pl.len().cast(pl.UInt32).alias("events"),
            pl.min_horizontal(pl.col(value).min(), carried).alias("low"),
            pl.max_horizontal(pl.col(value).max(), carried).alias("high"),
            pl.col(value).last(),
            pl.col(time).last(),
            *(pl.col(c).last() for c in keep if c not in (series, time, value)),
        )
        .with_columns(pl.col("bucket_start").dt.offset_by(every).alias("bucket_end"))
        .select(
            series,
            "bucket_start",
            "bucket_end",
            "events",
            "low",
            "high",
            value,
            time,
            *(c for c in keep if c not in (series, time, value)),
        )
        .sort(series, "bucket_start", maintain_order=True)
    )


def spell_bucket(every: str) -> str:
    """A bucket in words: "1d" -> "day", "2w" -> "2 weeks", "15m" -> "15 minutes".

    Example:
        >>> spell_bucket("1d"), spell_bucket("3mo")
        ('day', '3 months')
    """
    count, unit = _split(every)
    name = _NAMES[unit]
    return name if count == 1 else f"{count} {name}s"


def _length(every: str) -> timedelta:
    count, unit = _split(every)
    return count * _LENGTHS[unit]


def _split(every: str) -> tuple[int, str]:
    digits = "".join(ch for ch in every if ch.isdigit())
    return int(digits), every[len(digits) :]
