"""Commands that judge and rebuild history: fold, check, rebuild (private; see `cli`)."""

from __future__ import annotations

import contextlib
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import click

from esworkbench.cli._group import (
    clean_errors,
    filter_options,
    given,
    lake_option,
    main,
    progress_wanted,
)


@main.command()
@lake_option("The lake to rebuild from (the read model is written into it).", exists=True)
@click.option("--projection", required=True, help="The projection, as module:Class.")
@click.option(
    "--compare", "compare_with", default=None, help="Diff against this one (module:Class)."
)
@click.option("--first-position", type=click.IntRange(min=0), default=None)
@click.option("--last-position", type=click.IntRange(min=0), default=None)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--estimate", is_flag=True, help="Estimate the time from a sampled prefix first.")
@click.option("--restart", is_flag=True, help="Start again instead of resuming a checkpoint.")
@clean_errors
def rebuild(
    lake: Path,
    projection: str,
    compare_with: str | None,
    first_position: int | None,
    last_position: int | None,
    workers: int,
    estimate: bool,
    restart: bool,
) -> None:
    """Rebuild a projection's read model from the lake (resumable); --compare diffs two."""
    from esworkbench.projections import compare, divergences, rebuild

    if compare_with is None:
        result = rebuild(
            lake,
            projection,
            first_position=first_position,
            last_position=last_position,
            workers=workers,
            resume=not restart,
            estimate=estimate,
            progress=progress_wanted(),
        )
        click.echo(str(result))
        return
    comparison = compare(
        lake,
        projection,
        compare_with,
        first_position=first_position,
        last_position=last_position,
        workers=workers,
        progress=progress_wanted(),
    )
    click.echo(str(comparison.a))
    click.echo(str(comparison.b))
    click.echo(comparison.describe())
    found = divergences(
        lake,
        projection,
        compare_with,
        keys=comparison.diff.keys,
        first_position=comparison.a.first_position,
        last_position=comparison.a.last_position,
    )
    for row in found.table.iter_rows(named=True):
        click.echo(
            f"  key {row['key']}: differs from position {row['commit_position']} "
            f"({row['event_type']} {row['stream_name']}@{row['stream_revision']}) in "
            f"{', '.join(row['columns'])}"
        )


def _position_or_time(value: str | None) -> int | datetime | None:
    """--as-of: all digits is a commit position, anything else an ISO 8601 time (UTC if naive)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a commit position (digits) nor an ISO 8601 time "
            "such as 2024-03-01T12:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@main.command()
@lake_option("The lake to replay.")
@click.option(
    "--aggregate",
    default="esworkbench.examples.bank:User",
    show_default=True,
    help="The production aggregate class, as module:Class.",
)
@click.option("--stream", "streams", multiple=True, help="Only this stream (repeatable).")
@click.option("--stream-prefix", default=None, help="Only streams starting with this.")
@click.option("--as-of", default=None, help="Stop at a commit position (digits) or ISO time.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes (pays only on free cores with heavy aggregates).",
)
@click.option(
    "--on-error",
    type=click.Choice(["skip", "stop"]),
    default="skip",
    show_default=True,
    help="After a finding, carry on (balances follow the amounts) or stop that stream's replay.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the state timeline as Parquet here (findings beside it).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="Fold on this machine, or on a Dask cluster (pip install 'esworkbench[dask]').",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDR",
    help="--engine dask: the scheduler's address (tcp://host:8786); default: a local cluster.",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=1, max=65_536),
    default=16,
    show_default=True,
    help="--engine dask: hash partitions of whole streams, one task each.",
)
@click.option(
    "--workdir",
    default=None,
    help="--engine dask: a directory or fsspec URL the workers reach (default: beside the lake).",
)
@clean_errors
def fold(
    lake: Path,
    aggregate: str,
    streams: tuple[str, ...],
    stream_prefix: str | None,
    as_of: str | None,
    workers: int,
    on_error: Literal["stop", "skip"],
    out: Path | None,
    engine: Literal["local", "dask"],
    scheduler: str | None,
    partitions: int,
    workdir: str | None,
) -> None:
    """Replay the lake through a production aggregate: state after every event, and findings."""
    import polars as pl

    from esworkbench.fold import replay

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # With --out on this machine, results go to Parquet parts batch by batch and are
        # sorted into the file by DuckDB: memory follows the batch size, not the lake.
        parts = (
            stack.enter_context(tempfile.TemporaryDirectory(dir=out.parent))
            if out is not None and engine == "local"
            else None
        )
        result = replay(
            lake,
            aggregate,
            out=parts,
            streams=streams or None,
            stream_prefix=stream_prefix,
            as_of=_position_or_time(as_of),
            workers=workers,
            on_error=on_error,
            progress=progress_wanted(),
            engine=engine,
            scheduler=scheduler,
            partitions=partitions,
            workdir=workdir,
        )
        # Counted and written through scans: the results need not fit in this process.
        events, streams_seen = (
            result.scan_timeline()
            .select(pl.len(), pl.col("stream_name").n_unique())
            .collect()
            .row(0)
        )
        kinds = result.scan_findings().group_by("kind").len().sort("kind").collect()
        click.echo(
            f"replayed {events:,} events of {streams_seen:,} streams through "
            f"{aggregate}: {int(kinds['len'].sum()):,} findings"
        )
        for kind, count in kinds.iter_rows():
            click.echo(f"  {kind}: {count:,}")
        if out is not None:
            findings_path = out.with_name(out.stem + ".findings.parquet")
            result.write_parquet(out, findings_path)
            click.echo(f"wrote {out} and {findings_path}")


# Exit status of `check` when findings at or above --fail-on exist (1 is an error, 2 a usage
# error): a pipeline can tell "the history breaks its rules" from "the check could not run".
CHECK_FAILED = 3


@main.command()
@lake_option("The lake to check.", exists=True)
@click.option(
    "--rules",
    "rule_specs",
    multiple=True,
    help="Rules by import path, package.module:Name (repeatable). Default: the generic rules, "
    "and replay with --aggregate.",
)
@click.option("--aggregate", default=None, help="The production aggregate to replay, module:Class.")
@click.option(
    "--since-manifest",
    "since",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="A previous anomaly report (its directory or manifest.json), or a findings .parquet: "
    "say what is new, persisting and gone.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the findings here (.parquet, or .csv).",
)
@click.option(
    "--fail-on",
    type=click.Choice(["info", "warning", "error", "never"]),
    default="error",
    show_default=True,
    help=f"Exit {CHECK_FAILED} when a finding of this severity or worse exists.",
)
@filter_options
@clean_errors
def check(
    lake: Path,
    rule_specs: tuple[str, ...],
    aggregate: str | None,
    since: Path | None,
    out: Path | None,
    fail_on: str,
    **filters: Any,
) -> None:
    """Hold the lake's history to rules: counts of findings per kind, exit 3 on failures."""
    from esworkbench.anomalies import check as run_check
    from esworkbench.reports.anomaly_report import previous_findings

    found = run_check(lake, list(rule_specs) or None, aggregate=aggregate, **given(filters))
    frame = found.frame
    click.echo(
        f"checked {found.events_checked:,} events with {len(found.rules)} rules: "
        f"{frame.height:,} findings"
    )
    counts = found.counts()
    if since is not None:
        changes = found.since(previous_findings(since))
        status = changes.group_by("kind", "status").len()
        for kind, severity, n, _streams in counts.iter_rows():
            per = {s: c for k, s, c in status.iter_rows() if k == kind}
            click.echo(
                f"  {kind} ({severity}): {n:,} ({per.get('new', 0):,} new, "
                f"{per.get('persisting', 0):,} persisting)"
            )
        gone = changes.filter(changes["status"] == "gone").height
        click.echo(f"  gone since the previous run: {gone:,}")
    else:
        for kind, severity, n, _streams in counts.iter_rows():
            click.echo(f"  {kind} ({severity}): {n:,}")
    if out is not None:
        if out.suffix == ".csv":
            out.parent.mkdir(parents=True, exist_ok=True)
            frame.write_csv(out)
        else:
            found.write_parquet(out)
        click.echo(f"wrote {out}")
    if fail_on != "never":
        failing = found.at_or_above(fail_on)  # type: ignore[arg-type]
        if failing.height:
            click.echo(f"{failing.height:,} finding(s) at or above {fail_on}", err=True)
            raise SystemExit(CHECK_FAILED)
