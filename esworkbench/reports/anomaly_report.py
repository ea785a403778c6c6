"""The anomaly report's sections: a check's findings, explained, compared, drilled into.

``anomaly_report`` reads the lake's events in scope (recording what it read, as every report
does), runs the rules (`esworkbench.anomalies.check`), and derives each section of the
``anomaly_report`` notebook: a summary by kind and severity (against the previous run when
given one), findings over business time, a plain-language explanation of every rule with its
parameters, a drill-down into the top findings (the event, its neighbours in the stream, the
aggregate's state before and after), and the complete findings table, exported beside the HTML.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from esworkbench.anomalies import Findings, RuleSpec, check
from esworkbench.errors import ConfigError
from esworkbench.findings import SEVERITIES
from esworkbench.fold import AggregateSpec
from esworkbench.lake import opened
from esworkbench.reports._record import ReadRecord, read_recorded

if TYPE_CHECKING:
    from esworkbench.lake import Lake

__all__ = [
    "AnomalyReport",
    "DrillDown",
    "anomaly_report",
    "previous_findings",
    "show_drill_downs",
]

FINDINGS_FILE = "findings.parquet"
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclasses.dataclass(frozen=True)
class DrillDown:
    """One finding up close.

    Attributes:
        finding: the finding (one row).
        neighbours: the events around it in its stream (envelope and payload).
        state: the aggregate's state just before and just after the event (two rows), when
            the check replayed the stream; empty otherwise.
    """

    finding: dict[str, Any]
    neighbours: pl.DataFrame
    state: pl.DataFrame


@dataclasses.dataclass(frozen=True)
class AnomalyReport:
    """Every section of the anomaly report.

    Attributes:
        read: what was read from the lake (display it to record it in the notebook).
        findings: the check's findings (complete).
        summary: findings per kind and severity; with a previous run, also its count and the
            new, persisting and gone findings per kind.
        since: each finding of this run or the previous one, with its status (None without a
            previous run).
        over_time: findings per kind per period of business time.
        explanations: per rule: its kinds, severity, what it checks, its parameters.
        drill_downs: the top findings up close.
        every: the period of `over_time`.
    """

    read: ReadRecord
    findings: Findings
    summary: pl.DataFrame
    since: pl.DataFrame | None
    over_time: pl.DataFrame
    explanations: pl.DataFrame
    drill_downs: tuple[DrillDown, ...]
    every: str

    def describe(self) -> str:
        """One paragraph: what was checked and what was found."""
        frame = self.findings.frame
        by_severity = ", ".join(
            f"{n:,} {s}" for s, n in frame.group_by("severity").len().sort("severity").iter_rows()
        )
        text = (
            f"Checked {self.findings.events_checked:,} events with "
            f"{len(self.findings.rules)} rules: {frame.height:,} finding(s) "
            f"({by_severity or 'none'}) in {frame['stream_name'].n_unique():,} stream(s)."
        )
        if self.since is not None:
            counts = dict(self.since.group_by("status").len().iter_rows())
            text += (
                f" Since the previous run: {counts.get('new', 0):,} new, "
                f"{counts.get('persisting', 0):,} persisting, {counts.get('gone', 0):,} gone."
            )
        return text

    def export(self, directory: str | os.PathLike[str] | None) -> list[Path]:
        """Write the complete findings as Parquet and CSV into `directory` (None: nothing).

        The Parquet file is what a later run's ``since`` reads back.
        """
        if directory is None:
            return []
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        parquet = self.findings.write_parquet(out / FINDINGS_FILE)
        csv = out / "findings.csv"
        self.findings.frame.write_csv(csv)
        return [parquet, csv]


def anomaly_report(
    lake: str | Path | Lake,
    *,
    rules: RuleSpec | None = None,
    aggregate: AggregateSpec | None = None,
    since: str | os.PathLike[str] | None = None,
    top_n: int = 5,
    every: str = "1w",
    streams: Sequence[str] | None = None,
    stream_prefix: str | None = None,
) -> AnomalyReport:
    """Check the lake and compute every section of the anomaly report.

    Args:
        lake: the lake (a path is opened read-only).
        rules: rules or import paths (default: the generic rules, and replay with `aggregate`).
        aggregate: the production aggregate (or import path) to replay, when rules need it.
        since: a previous anomaly report (its directory or manifest.json) or its findings
            Parquet file: the summary then says what is new, persisting and gone.
        top_n: findings to drill into (the most severe first, then the earliest).
        every: the period of the findings-over-time section ("1d", "1w", "1mo").
        streams: only these streams.
        stream_prefix: only streams whose name starts with this.

    Example:
        >>> report = anomaly_report("data/lake/demo.duckdb",
        ...                         rules="esworkbench.examples.bank.rules:RULES")  # doctest: +SKIP
        >>> report.summary  # doctest: +SKIP
    """
    scope: dict[str, Any] = {"streams": list(streams) if streams else None}
    if stream_prefix:
        scope["stream_prefix"] = stream_prefix
    scope = {k: v for k, v in scope.items() if v is not None}
    if top_n < 0:
        raise ConfigError(f"top_n must be 0 or more, got {top_n}")
    with opened(lake) as lake_:
        _, record = read_recorded(lake_, **scope)
        found = check(lake_, rules, aggregate=aggregate, **scope)
        top = _top(found.frame, top_n)
        drill_downs = tuple(_drill_down(lake_, found, row) for row in top.iter_rows(named=True))
    changes = None if since is None else found.since(previous_findings(since))
    return AnomalyReport(
        read=record,
        findings=found,
        summary=_summary(found, changes),
        since=changes,
        over_time=_over_time(found.frame, every),
        explanations=_explanations(found),
        drill_downs=drill_downs,
        every=every,
    )


def previous_findings(path: str | os.PathLike[str]) -> Path:
    """The findings Parquet file of a previous report (directory, manifest.json, or the file).

    Example:
        >>> previous_findings("reports/anomaly_report/20260101T000000Z")  # doctest: +SKIP
        PosixPath('reports/anomaly_report/20260101T000000Z/findings.parquet')
    """
    given = Path(path)
    if given.suffix == ".parquet":
        candidate = given
    elif given.name == "manifest.json" or given.is_dir():
        directory = given.parent if given.name == "manifest.json" else given
        candidate = directory / FINDINGS_FILE
        manifest = directory / "manifest.json"
        if manifest.exists() and FINDINGS_FILE not in json.loads(manifest.read_text()).get(
            "files", {}
        ):
            raise ConfigError(
                f"the report at {directory} wrote no {FINDINGS_FILE}: pass the directory of "
                "an anomaly report run by `esworkbench report anomaly_report`"
            )
    else:
        raise ConfigError(
            f"{given} is neither a report directory, a manifest.json nor a findings .parquet"
        )
    if not candidate.exists():
        raise ConfigError(f"no earlier findings at {candidate}")
    return candidate


def show_drill_downs(report: AnomalyReport) -> None:
    """Display each drill-down in the notebook: the finding, its neighbours, the state."""
    from IPython.display import Markdown, display

    from esworkbench.reports._record import table

    if not report.drill_downs:
        display(Markdown("No findings to drill into."))
    for n, d in enumerate(report.drill_downs, start=1):
        f = d.finding
        display(
            Markdown(
                f"**{n}. {f['kind']}** ({f['severity']}, rule `{f['rule']}`) at "
                f"`{f['stream_name']}` revision {f['stream_revision']}, position "
                f"{f['commit_position']}: {f['message']}"
            )
        )
        display(table(d.neighbours, page_size=10, caption="the event and its neighbours"))
        if d.state.height:
            display(table(d.state, page_size=5, caption="state before and after the event"))


def _top(frame: pl.DataFrame, n: int) -> pl.DataFrame:
    ranked = frame.with_columns(
        pl.col("severity").replace_strict(_SEVERITY_RANK, default=0).alias("_rank")
    )
    return ranked.sort(["_rank", "commit_position"], descending=[True, False]).head(n).drop("_rank")


def _drill_down(lake: Lake, found: Findings, row: dict[str, Any]) -> DrillDown:
    revision = int(row["stream_revision"])
    events = lake.read_events(streams=[row["stream_name"]], include_system=True)
    neighbours = events.filter(
        (pl.col("stream_revision") >= max(0, revision - 3))
        & (pl.col("stream_revision") <= revision + 3)
    ).select(
        "stream_revision",
        "commit_position",
        "event_type",
        "occurred_at",
        pl.col("event_id"),
        pl.col("data").alias("payload"),
    )
    state = pl.DataFrame()
    if found.replay is not None:
        timeline = found.replay.timeline.filter(pl.col("stream_name") == row["stream_name"])
        state = (
            timeline.filter(pl.col("stream_revision").is_in([revision - 1, revision]))
            .drop("changed")
            .with_columns(
                pl.when(pl.col("stream_revision") == revision)
                .then(pl.lit("after"))
                .otherwise(pl.lit("before"))
                .alias("when")
            )
        )
    return DrillDown(row, neighbours, state)


def _summary(found: Findings, changes: pl.DataFrame | None) -> pl.DataFrame:
    counts = found.counts()
    if changes is None:
        return counts
    per_status = (
        changes.group_by("kind", "status")
        .len()
        .pivot(on="status", index="kind", values="len")
        .fill_null(0)
    )
    for status in ("new", "persisting", "gone"):
        if status not in per_status.columns:
            per_status = per_status.with_columns(pl.lit(0, pl.UInt32).alias(status))
    previous = per_status.select(
        "kind",
        (pl.col("persisting") + pl.col("gone")).alias("previous"),
        "new",
        "persisting",
        "gone",
    )
    return (
        counts.join(previous, on="kind", how="full", coalesce=True)
        .with_columns(pl.col("findings", "previous", "new", "persisting", "gone").fill_null(0))
        .sort("findings", "kind", descending=[True, False])
    )


def _over_time(frame: pl.DataFrame, every: str) -> pl.DataFrame:
    try:
        return (
            frame.sort("occurred_at")
            .group_by(pl.col("occurred_at").dt.truncate(every).alias("period_start"), "kind")
            .agg(pl.len().alias("findings"))
            .sort("period_start", "kind")
        )
    except pl.exceptions.PolarsError as e:
        raise ConfigError(f"every={every!r} is not a period such as '1d', '1w' or '1mo'") from e


def _explanations(found: Findings) -> pl.DataFrame:
    kinds = found.frame.group_by("rule").agg(pl.col("kind").unique().sort())
    seen = {rule: ks for rule, ks in kinds.iter_rows()}
    return pl.DataFrame(
        [
            {
                "rule": r.name,
                "kinds": ", ".join(seen.get(r.name, [r.kind])),
                "findings": found.frame.filter(pl.col("rule") == r.name).height,
                "what it checks": r.description,
                "parameters": ", ".join(f"{k}={v}" for k, v in r.parameters().items()) or "-",
            }
            for r in found.rules
        ]
    )
