"""The projection-rebuild report's sections: rebuild timings, blue/green diff, divergences, lag.

``projection_report`` reads what the rebuild will read (recording it for the manifest), rebuilds
the projection (and the one to compare with) over that pinned window with an estimate first,
diffs the two read models, traces each difference to its first event, and, given an EventStoreDB
source, runs the projection live to measure its lag. The notebook shows these frames.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from esworkbench.config import resolve_lake_path
from esworkbench.lake import Lake
from esworkbench.projections import (
    Comparison,
    Divergences,
    LagReport,
    RebuildResult,
    compare,
    divergences,
    follow_lag,
    pin_window,
    rebuild,
    resolve_projection,
)
from esworkbench.reports._record import ReadRecord, read_recorded, resolve_masked_uri

__all__ = ["ProjectionReport", "projection_report"]


@dataclasses.dataclass(frozen=True)
class ProjectionReport:
    """Every section of the projection-rebuild report.

    Attributes:
        read: what was read from the lake (display it to record it in the notebook).
        rebuilds: the rebuild of the projection (and of the compared one), with estimates.
        timings: one row per rebuild: events, rows, seconds, events/s, estimate and its error.
        per_type: time per event type of each rebuild.
        comparison: the blue/green diff (None without a projection to compare with).
        divergences: the first event where each differing key diverges (None without one).
        lag: the live lag run (None without an EventStoreDB source).
    """

    read: ReadRecord
    rebuilds: list[RebuildResult]
    timings: pl.DataFrame
    per_type: pl.DataFrame
    comparison: Comparison | None
    divergences: Divergences | None
    lag: LagReport | None

    def describe(self) -> str:
        """One paragraph: what was rebuilt, compared and followed."""
        text = " ".join(str(r) + "." for r in self.rebuilds)
        if self.comparison is not None:
            text += " " + self.comparison.describe()
        if self.lag is not None:
            text += " " + self.lag.describe()
        return text


def projection_report(
    lake: str | Path,
    projection: str,
    *,
    compare_with: str | None = None,
    first_position: int | None = None,
    last_position: int | None = None,
    workers: int = 1,
    source: str | None = None,
    lag_seconds: float = 5.0,
    max_keys: int = 200,
) -> ProjectionReport:
    """Rebuild, compare, trace and (with an EventStoreDB `source`) follow a projection.

    Args:
        lake: the lake file (read models are written into it).
        projection: the projection's import path.
        compare_with: the other version's import path (None: no diff).
        first_position: the window's first commit position (default: the lake's first).
        last_position: the window's last commit position (default: the lake's head).
        workers: processes for the rebuilds.
        source: an ``esdb://`` URI to run the projection live against (None: no lag section).
        lag_seconds: how long to follow it.
        max_keys: trace at most this many differing keys.

    Example:
        >>> report = projection_report("data/lake/demo.duckdb",
        ...     "esworkbench.examples.bank.projections:AccountSummaryV1",
        ...     compare_with="esworkbench.examples.bank.projections:AccountSummaryV2")
        ... # doctest: +SKIP
    """
    spec = resolve_projection(projection)
    types = set(spec.event_types())
    if compare_with:
        types |= set(resolve_projection(compare_with).event_types())
    # Read models are written into the lake, so it is opened for writing, but never created:
    # a lake path that names nothing is a mistake to report, not an empty lake to make.
    with Lake(resolve_lake_path(lake), create=False) as lake_:
        first, last = pin_window(lake_, first_position, last_position)
        _, record = read_recorded(
            lake_, event_types=sorted(types), from_position=first, to_position=last
        )
        comparison = found = None
        if compare_with:
            comparison = compare(
                lake_, spec, compare_with, first_position=first, last_position=last, workers=1
            )
            found = divergences(
                lake_,
                spec,
                compare_with,
                keys=comparison.diff.keys[:max_keys],
                first_position=first,
                last_position=last,
            )
        # Timed runs with an estimate first: from scratch, so the figures are comparable.
        rebuilds = [
            rebuild(
                lake_,
                p,
                first_position=first,
                last_position=last,
                workers=workers,
                resume=False,
                estimate=True,
            )
            for p in [spec.path, *([compare_with] if compare_with else [])]
        ]
    lag = None
    if source:
        lag = follow_lag(resolve_masked_uri(source), spec, duration=lag_seconds)
    return ProjectionReport(
        read=record,
        rebuilds=rebuilds,
        timings=pl.concat([r.timings() for r in rebuilds]),
        per_type=pl.concat(
            [r.per_type.with_columns(pl.lit(r.schema).alias("schema")) for r in rebuilds]
        ).select("schema", "event_type", "events", "seconds", "us_per_event"),
        comparison=comparison,
        divergences=found,
        lag=lag,
    )
