"""Lag: a projection run live against EventStoreDB while writers append, measured over time.

``follow_lag`` runs a Python projection on a catch-up subscription to ``$all`` (the EventStoreDB
source in follow mode) in a thread of its own, and samples, every ``interval`` seconds, the head
of the log, read independently from the server (its own connection; never the projection's
checkpoint), and the projection's position. After the run the samples become lag in three
units: events (of the projection's types between its position and the head), commit position,
and seconds (the sample's time minus the ``created`` time of the oldest event not yet
processed). The events the projection never got to are read from the server afterwards, so the
counts are exact. A stall is a stretch of at least ``stall_after`` seconds in which the
projection did not move while the head was ahead of it.

With ``group``, each sample also records a persistent-subscription group's last checkpointed
and last known position and its parked messages (``esworkbench.sources.persistent``).

Example:
    >>> report = follow_lag("esdb://127.0.0.1:2113?tls=false",
    ...                     "esworkbench.examples.bank.projections:AccountSummaryV1",
    ...                     duration=10)  # doctest: +SKIP
    >>> report.samples.select("at", "events_behind", "seconds_behind")  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from esworkbench.errors import ConfigError
from esworkbench.filters import EventFilter
from esworkbench.projections import _engine as engine
from esworkbench.projections._definition import ProjectionLike, Row, resolve_projection

if TYPE_CHECKING:
    from esworkbench.sources.esdb import EsdbSource

__all__ = ["LagReport", "follow_lag"]


@dataclasses.dataclass(frozen=True)
class LagReport:
    """A live projection's lag over time.

    Attributes:
        projection: the projection's import path.
        samples: one row per sample: ``at`` (UTC), ``head_position`` (read from the server),
            ``position`` (the projection's), ``events_processed``, ``events_behind``,
            ``positions_behind``, ``seconds_behind``, and with a group ``group_checkpoint``,
            ``group_last_known``, ``group_parked``, ``group_behind`` (head - checkpoint).
        stalls: stretches with no progress while the head was ahead: ``started``, ``ended``,
            ``seconds``, ``position``, ``head_position``.
        events: events the projection applied.
        rows: rows its read model held at the end.
    """

    projection: str
    samples: pl.DataFrame
    stalls: pl.DataFrame
    events: int
    rows: int

    @property
    def stalled(self) -> bool:
        """True when the projection stalled at least once."""
        return not self.stalls.is_empty()

    @property
    def caught_up(self) -> bool:
        """True when the last sample shows no lag in events."""
        return self.samples.height > 0 and self.samples["events_behind"][-1] == 0

    def describe(self) -> str:
        """One paragraph for a report."""
        if self.samples.is_empty():
            return f"{self.projection}: no samples"
        worst = self.samples.select(pl.col("events_behind", "seconds_behind").max()).row(0)
        state = "caught up" if self.caught_up else "behind"
        stalls = f"; {self.stalls.height} stall(s)" if self.stalled else "; no stalls"
        return (
            f"{self.projection} applied {self.events:,} events live; at most {worst[0]:,} "
            f"events and {worst[1]:.2f}s behind; {state} at the end{stalls}."
        )


def follow_lag(
    uri: str,
    projection: ProjectionLike,
    *,
    duration: float,
    interval: float = 0.1,
    stall_after: float = 1.0,
    from_position: int | None = None,
    group: str | None = None,
    group_stream: str | None = None,
    batch_size: int = 500,
) -> LagReport:
    """Run `projection` live on EventStoreDB for `duration` seconds and measure its lag.

    Args:
        uri: the EventStoreDB connection string.
        projection: a Python projection (class or import path).
        duration: seconds to run.
        interval: seconds between samples.
        stall_after: no progress for this long while behind is a stall.
        from_position: start after this commit position (default: from the beginning).
        group: a persistent-subscription group to sample beside the projection.
        group_stream: the group's stream (default: ``$all``).
        batch_size: events per batch the subscription hands over.

    Example:
        >>> follow_lag(uri, "pkg.projections:Summary", duration=5).stalled  # doctest: +SKIP
        False
    """
    spec = resolve_projection(projection)
    if duration <= 0 or interval <= 0 or stall_after <= 0:
        raise ConfigError("duration, interval and stall_after must be positive seconds")
    # Imported here: the EventStoreDB client and gRPC stay out of `import esworkbench`.
    from esworkbench.sources.esdb import EsdbSource

    instance = spec.python()
    types = EventFilter.of(event_types=list(spec.event_types()))
    source = EsdbSource(uri, filter=types, follow=True)
    head_source = EsdbSource(uri)
    run = _Live(instance, source, from_position, batch_size)
    thread = threading.Thread(target=run.consume, name="projection-lag", daemon=True)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    thread.start()
    try:
        while time.monotonic() - started < duration and run.error is None:
            samples.append(_sample(run, head_source, uri, group, group_stream))
            time.sleep(interval)
        samples.append(_sample(run, head_source, uri, group, group_stream))
    finally:
        source.cancel()
        thread.join(timeout=2 * interval + 1)
        head_source.close()
    if run.error is not None:
        raise run.error
    tail = _unprocessed(uri, types, run.position)
    frame = _lag_frame(samples, run.seen + tail, group is not None)
    return LagReport(
        projection=spec.path,
        samples=frame,
        stalls=_stalls(frame, stall_after),
        events=run.processed,
        rows=len(run.state),
    )


class _Live:
    """The projection on the subscription, in its own thread; progress under a lock."""

    def __init__(
        self, projection: Any, source: EsdbSource, after: int | None, batch_size: int
    ) -> None:
        self.projection = projection
        self.source = source
        self.after = after
        self.batch_size = batch_size
        self.state: dict[str, Row] = {}
        self.lock = threading.Lock()
        self.position: int | None = after
        self.processed = 0
        # (commit position, created) of every event applied, for the lag in events and seconds.
        self.seen: list[tuple[int, datetime]] = []
        self.error: BaseException | None = None

    def consume(self) -> None:
        try:
            for batch in self.source.read_batches(self.after, batch_size=self.batch_size):
                events = batch.events
                if events.num_rows:
                    table = _input(events)
                    engine.apply_events(self.projection, table, self.state)
                    positions = table.column("commit_position").to_pylist()
                    created = table.column("created").to_pylist()
                    with self.lock:
                        self.seen.extend(zip(positions, created, strict=True))
                        self.processed += table.num_rows
                        self.position = max(positions[-1], batch.checkpoint or 0)
                elif batch.checkpoint is not None:
                    with self.lock:
                        self.position = max(self.position or 0, batch.checkpoint)
        except BaseException as e:  # reported by the sampling thread
            self.error = e


def _input(raw: pa.RecordBatch) -> pa.Table:
    """A RAW batch as the envelope columns handlers read (``occurred_at`` = ``created``)."""
    table = pa.Table.from_batches([raw])

    def text(name: str) -> pa.Array:
        column = table.column(name)
        try:
            return pc.cast(column, pa.string())
        except pa.ArrowInvalid:  # not UTF-8: the registry reports it as undecodable
            return pa.array([v.decode("utf-8", "replace") for v in column.to_pylist()])

    return pa.table(
        {
            "stream_name": table.column("stream_name"),
            "stream_revision": table.column("stream_revision"),
            "commit_position": table.column("commit_position"),
            "created": table.column("created"),
            "occurred_at": table.column("created"),
            "event_type": table.column("event_type"),
            "event_id": table.column("event_id"),
            "data": text("data"),
            "metadata": text("metadata"),
        }
    )


def _sample(
    run: _Live, head: EsdbSource, uri: str, group: str | None, group_stream: str | None
) -> dict[str, Any]:
    head_position = head.head_position()
    at = datetime.now(UTC)
    with run.lock:
        sample: dict[str, Any] = {
            "at": at,
            "head_position": head_position,
            "position": run.position,
            "events_processed": run.processed,
        }
    if group is not None:
        from esworkbench.sources.persistent import read_subscription_info

        info = read_subscription_info(uri, group, stream=group_stream)
        sample.update(
            group_checkpoint=info.last_checkpointed_position,
            group_last_known=info.last_known_position,
            group_parked=info.parked_messages,
        )
    return sample


def _unprocessed(uri: str, types: EventFilter, after: int | None) -> list[tuple[int, datetime]]:
    """The events of the projection's types the run did not get to (read once, at the end)."""
    from esworkbench.sources.esdb import EsdbSource

    source = EsdbSource(uri, filter=types)
    try:
        out: list[tuple[int, datetime]] = []
        for batch in source.read_batches(after, batch_size=10_000):
            out.extend(
                zip(
                    batch.events.column("commit_position").to_pylist(),
                    batch.events.column("created").to_pylist(),
                    strict=True,
                )
            )
        return out
    finally:
        source.close()


def _lag_frame(
    samples: list[dict[str, Any]], events: list[tuple[int, datetime]], group: bool
) -> pl.DataFrame:
    events = sorted(set(events))
    positions = [p for p, _ in events]
    rows = []
    for s in samples:
        head = s["head_position"] or 0
        position = s["position"]
        start = 0 if position is None else bisect.bisect_right(positions, position)
        end = bisect.bisect_right(positions, head)
        behind = max(0, end - start)
        seconds = (s["at"] - events[start][1]).total_seconds() if behind else 0.0
        row = {
            **s,
            "events_behind": behind,
            "positions_behind": max(0, head - (position or 0)),
            "seconds_behind": max(0.0, seconds),
        }
        if group:
            checkpoint = s.get("group_checkpoint")
            row["group_behind"] = None if checkpoint is None else max(0, head - checkpoint)
        rows.append(row)
    frame = pl.DataFrame(rows)
    return frame.with_columns(pl.col("at").cast(pl.Datetime("us", "UTC")))


def _stalls(samples: pl.DataFrame, stall_after: float) -> pl.DataFrame:
    """Stretches where the position did not move while the head was ahead."""
    out = []
    run: list[dict[str, Any]] = []
    for s in [*samples.to_dicts(), None]:
        extends = (
            s is not None
            and s["positions_behind"] > 0
            and (not run or s["position"] == run[0]["position"])
        )
        if extends:
            run.append(s)  # type: ignore[arg-type]
            continue
        if len(run) > 1:
            seconds = (run[-1]["at"] - run[0]["at"]).total_seconds()
            if seconds >= stall_after and run[-1]["head_position"] >= run[0]["head_position"]:
                out.append(
                    {
                        "started": run[0]["at"],
                        "ended": run[-1]["at"],
                        "seconds": seconds,
                        "position": run[0]["position"],
                        "head_position": run[-1]["head_position"],
                    }
                )
        run = [s] if s is not None and s["positions_behind"] > 0 else []
    schema: dict[str, pl.DataType] = {
        "started": pl.Datetime("us", "UTC"),
        "ended": pl.Datetime("us", "UTC"),
        "seconds": pl.Float64(),
        "position": pl.Int64(),
        "head_position": pl.Int64(),
    }
    return pl.DataFrame(out, schema=schema)
