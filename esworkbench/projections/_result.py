"""What a rebuild reports: `RebuildResult` and `Estimate`, shared by every rebuild engine."""

from __future__ import annotations

import dataclasses

import polars as pl
import pyarrow as pa

from esworkbench.findings import FINDINGS_SCHEMA

__all__ = ["Estimate", "RebuildResult", "findings_frame", "per_type"]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A predicted rebuild time, from a sampled prefix.

    Attributes:
        seconds: the predicted wall time of the whole rebuild.
        events: events in the window.
        sample_events: events in the sampled prefix.
        sample_seconds: the prefix's measured rebuild time.
    """

    seconds: float
    events: int
    sample_events: int
    sample_seconds: float

    def error(self, actual_seconds: float) -> float:
        """The relative error against a measured time: +0.1 means 10% too high."""
        return (self.seconds - actual_seconds) / actual_seconds if actual_seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"estimated {self.seconds:.2f}s for {self.events:,} events (from a prefix of "
            f"{self.sample_events:,} events rebuilt in {self.sample_seconds:.2f}s)"
        )


@dataclasses.dataclass(frozen=True)
class RebuildResult:
    """What a rebuild did and how long it took.

    Attributes:
        projection: the projection's import path.
        schema: the DuckDB schema its rows are in.
        kind: "python" or "sql".
        first_position: the pinned window's first commit position.
        last_position: the pinned window's last commit position.
        events: events applied by this run (after ``resumed_from``).
        rows: rows in the read model now.
        rows_written: row writes this run committed (a key touched in several chunks counts
            once per chunk).
        seconds: wall time of this run.
        per_type: event_type, events, seconds, us_per_event (handler time incl. decoding).
        findings: events the projection could not apply (``FINDINGS_SCHEMA`` columns).
        resumed_from: the checkpoint this run resumed after (None: built from scratch).
        chunks: transactions committed.
        workers: processes that applied events.
        estimate: the estimate made before the run, if one was asked for.
    """

    projection: str
    schema: str
    kind: str
    first_position: int
    last_position: int
    events: int
    rows: int
    rows_written: int
    seconds: float
    per_type: pl.DataFrame
    findings: pl.DataFrame
    resumed_from: int | None
    chunks: int
    workers: int
    estimate: Estimate | None = None

    @property
    def events_per_second(self) -> float:
        """Throughput of this run."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def timings(self) -> pl.DataFrame:
        """One row of figures: events, rows, seconds, events/s, estimate and its error."""
        return pl.DataFrame(
            {
                "projection": [self.projection],
                "schema": [self.schema],
                "events": [self.events],
                "rows": [self.rows],
                "rows_written": [self.rows_written],
                "seconds": [round(self.seconds, 3)],
                "events_per_second": [round(self.events_per_second)],
                "estimated_seconds": [
                    None if self.estimate is None else round(self.estimate.seconds, 3)
                ],
                "estimate_error": [
                    None if self.estimate is None else round(self.estimate.error(self.seconds), 3)
                ],
            }
        )

    def __str__(self) -> str:
        resumed = "" if self.resumed_from is None else f", resumed after {self.resumed_from}"
        text = (
            f"rebuilt {self.schema} ({self.kind}) from {self.events:,} events in "
            f"{self.seconds:.2f}s ({self.events_per_second:,.0f} events/s{resumed}): "
            f"{self.rows:,} rows, {self.rows_written:,} row writes in {self.chunks} "
            f"transaction(s), positions {self.first_position}..{self.last_position}"
        )
        if self.estimate is not None:
            text += (
                f"; estimate {self.estimate.seconds:.2f}s "
                f"({self.estimate.error(self.seconds):+.0%} off)"
            )
        if self.findings.height:
            text += f"; {self.findings.height:,} finding(s)"
        return text


def per_type(timings: dict[str, list[float]]) -> pl.DataFrame:
    """Per event type: events, handler seconds and microseconds per event, busiest first."""
    frame = pl.DataFrame(
        {
            "event_type": list(timings),
            "events": [int(v[0]) for v in timings.values()],
            "seconds": [float(v[1]) for v in timings.values()],
        },
        schema={"event_type": pl.String, "events": pl.Int64, "seconds": pl.Float64},
    )
    return frame.with_columns(
        (pl.col("seconds") / pl.col("events") * 1e6).alias("us_per_event")
    ).sort("events", descending=True)


def findings_frame(tables: list[pa.Table]) -> pl.DataFrame:
    """Findings tables as one frame in commit-position order."""
    table = pa.concat_tables(
        [t.cast(FINDINGS_SCHEMA) for t in tables] or [FINDINGS_SCHEMA.empty_table()]
    )
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("commit_position", maintain_order=True)
