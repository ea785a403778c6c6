"""The command line: a thin click group, one subcommand per pipeline stage.

Command bodies parse options and call the public API; anything worth testing lives in the
library. Library errors (EsWorkbenchError) become a one-line message and exit code 1.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
from click.core import ParameterSource

from esworkbench.errors import EsWorkbenchError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
_DEMO_LAKE = Path("data/lake/demo.duckdb")


def _lake_option(help: str, *, exists: bool = False) -> Callable[[F], F]:
    """--lake PATH, required, from ESWORKBENCH_LAKE when not given."""
    return click.option(
        "--lake",
        type=click.Path(exists=exists, dir_okay=False, path_type=Path),
        envvar="ESWORKBENCH_LAKE",
        required=True,
        help=f"{help} Default: $ESWORKBENCH_LAKE.",
    )


def _clean_errors(fn: F) -> F:
    """Turn the workbench's own errors into a click error (message, exit 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EsWorkbenchError as e:
            raise click.ClickException(str(e)) from e

    return wrapper  # type: ignore[return-value]


def _progress() -> bool:
    """Progress bars for a person watching: not with --quiet, nor into a log unless --progress."""
    ctx = click.get_current_context(silent=True)
    params = ctx.find_root().params if ctx is not None else {}
    if params.get("quiet"):
        return False
    return bool(params.get("progress")) or sys.stderr.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="esworkbench")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No progress bars (they are also left out when stderr is not a terminal, as under "
    "cron or CI); results and errors are still printed.",
)
@click.option(
    "--progress",
    is_flag=True,
    help="Progress bars even when stderr is not a terminal (a CI log someone watches).",
)
def main(quiet: bool, progress: bool) -> None:
    """esworkbench: pull EventStoreDB history into a DuckDB lake, replay it, report on it.

    Stages, in data-flow order: devserver, seed, sync, export, fold, check, rebuild, report,
    verify; demo runs them end to end on the sample ledger; lake shows what a lake holds.
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=2113, show_default=True, help="Port (0 picks a free one).")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep an append-only log here (default: in memory only).",
)
@click.option("--max-append-size", type=int, default=None, help="Largest append in bytes.")
@click.option(
    "--salvage",
    is_flag=True,
    help="Repair a log damaged before its last frame: copy it aside, keep every frame that "
    "still verifies, list what is dropped. Without it such a log is refused, untouched.",
)
@click.option(
    "--advertise-host",
    default=None,
    help="Host announced to clients by gossip (default: --host, or 127.0.0.1 for 0.0.0.0).",
)
@click.option(
    "--compress-responses",
    type=click.Choice(["gzip"]),
    default=None,
    help="Gzip responses for clients that accept gzip (as KurrentDB 25.1+ can).",
)
@_clean_errors
def devserver(
    host: str,
    port: int,
    data_dir: Path | None,
    max_append_size: int | None,
    advertise_host: str | None,
    compress_responses: str | None,
    salvage: bool,
) -> None:
    """Run the EventStoreDB-compatible development server in the foreground (Ctrl-C stops)."""
    from esworkbench.devserver import serve_forever

    options: dict[str, Any] = {"salvage": salvage}
    if max_append_size is not None:
        options["max_append_size"] = max_append_size
    if advertise_host:
        options["advertise_host"] = advertise_host
    if compress_responses:
        options["compress_responses"] = compress_responses
    serve_forever(host, port, data_dir, **options)


@main.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JSONL(.gz) archive here (its ground truth beside it).",
)
@click.option(
    "--uri",
    envvar="ESWORKBENCH_ESDB_URI",
    help="Write into this EventStoreDB instead (esdb://host:2113?tls=false; kurrentdb:// too).",
)
@click.option("--users", type=click.IntRange(min=1), default=75, show_default=True)
@click.option(
    "--seed",
    "seed_value",
    type=int,
    default=7,
    show_default=True,
    help="Random seed: the same seed gives the same ledger, byte for byte.",
)
@click.option("--days", type=click.IntRange(min=1), default=90, show_default=True)
@_clean_errors
def seed(out: Path | None, uri: str | None, users: int, seed_value: int, days: int) -> None:
    """Generate the sample bank ledger, with injected anomalies, into an archive or EventStoreDB."""
    from esworkbench.config import mask_uri

    if (out is None) == (uri is None):
        raise click.UsageError("give exactly one of --out PATH (an archive) or --uri URI")
    if out is not None:
        from esworkbench.examples.bank.sample import generate, write_archive

        ledger = generate(users=users, seed=seed_value, days=days)
        archive, truth = write_archive(ledger, out)
        click.echo(
            f"wrote {len(ledger):,} events to {archive} and "
            f"{len(ledger.truth)} anomalies to {truth}"
        )
        return
    from esworkbench.config import Settings, esdbclient_uri
    from esworkbench.examples.bank.seed import seed_esdb

    uri = Settings.load(esdb_uri=uri).esdb_uri
    assert uri is not None
    result = seed_esdb(
        esdbclient_uri(uri), users=users, seed=seed_value, days=days, progress=_progress()
    )
    click.echo(
        f"seeded {mask_uri(uri)}: {result.written:,} of {result.events:,} events written "
        f"({result.events - result.written:,} already there), {result.streams:,} streams, "
        f"{result.anomalies} injected anomalies, last position "
        f"{result.last_commit_position:,}, {result.seconds:.1f}s"
    )


@main.command()
@click.argument("name", required=False)
@click.option(
    "--lake",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ESWORKBENCH_LAKE",
    default=None,
    help="The lake the notebook reads (its lake parameter). Default: $ESWORKBENCH_LAKE.",
)
@click.option(
    "-p",
    "--parameter",
    "pairs",
    type=(str, str),
    multiple=True,
    metavar="KEY VALUE",
    help='A notebook parameter (JSON values are parsed: 5, null, ["1","2"]); checked against '
    "the parameter's type before the notebook starts. Overrides --parameters-file.",
)
@click.option(
    "-f",
    "--parameters-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A YAML file of parameters (top_n: 5), as papermill's -f reads.",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Reports go to OUT_DIR/NAME/<UTC timestamp>/ (default: reports, or "
    "$ESWORKBENCH_REPORTS_DIR).",
)
@click.option("--no-input", is_flag=True, help="Hide code cells in the HTML (for reviewers).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop the report when one cell runs longer than this (default: no limit).",
)
@click.option(
    "--list",
    "list_only",
    is_flag=True,
    help="List the reports and their parameters (types and defaults), then exit.",
)
@_clean_errors
def report(
    name: str | None,
    lake: Path | None,
    pairs: tuple[tuple[str, str], ...],
    parameters_file: Path | None,
    out_dir: Path | None,
    no_input: bool,
    timeout: float | None,
    list_only: bool,
) -> None:
    """Run report notebook NAME (see --list) into HTML, notebook and manifest.

    The report lands in reports/NAME/<UTC timestamp>/: NAME.html, the executed NAME.ipynb
    and manifest.json; the last lines printed name the HTML and the manifest.
    """
    from esworkbench.config import Settings
    from esworkbench.reports import (
        list_reports,
        notebook_parameters,
        parse_parameters,
        read_parameters_file,
        run_report,
    )

    if list_only:
        found = list_reports()
        for report_name, declared in found.items():
            if name is not None and report_name != name:
                continue
            click.echo(report_name)
            for key, info in declared.items():
                click.echo(f"  {key}: {info['type']} = {info['default']}")
                if info["help"]:
                    click.echo(f"      {info['help']}")
        return
    if name is None:
        raise click.UsageError("name a report (esworkbench report --list shows them)")
    declared = notebook_parameters(name)
    parameters = read_parameters_file(parameters_file) if parameters_file else {}
    parameters.update(parse_parameters(pairs, declared))
    # --lake on the command line, then a lake among the parameters, then $ESWORKBENCH_LAKE.
    given = parameters.pop("lake", None)
    source = click.get_current_context().get_parameter_source("lake")
    if lake is None or (given is not None and source != ParameterSource.COMMANDLINE):
        lake = None if given is None else Path(str(given))
    if lake is None:
        raise click.UsageError("give --lake PATH (or set ESWORKBENCH_LAKE)")
    settings = Settings.load(reports_dir=out_dir)
    result = run_report(
        name,
        lake=lake,
        parameters=parameters,
        out_dir=settings.reports_dir,
        no_input=no_input,
        timeout=timeout,
    )
    click.echo(str(result))


@main.command()
@_lake_option("The lake to rebuild from (the read model is written into it).", exists=True)
@click.option("--projection", required=True, help="The projection, as module:Class.")
@click.option(
    "--compare", "compare_with", default=None, help="Diff against this one (module:Class)."
)
@click.option("--first-position", type=click.IntRange(min=0), default=None)
@click.option("--last-position", type=click.IntRange(min=0), default=None)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--estimate", is_flag=True, help="Estimate the time from a sampled prefix first.")
@click.option("--restart", is_flag=True, help="Start again instead of resuming a checkpoint.")
@_clean_errors
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
            progress=_progress(),
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
        progress=_progress(),
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


@main.command()
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--lake",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Check against this lake instead of the one the manifest names.",
)
@_clean_errors
def verify(manifest: Path, lake: Path | None) -> None:
    """Re-read what a report read and say whether it still matches its data (exit 1 if not).

    MANIFEST is a report's manifest.json or its directory (reports/NAME/<UTC timestamp>/), or a
    notebook executed by plain papermill.
    """
    from esworkbench.reports import verify_manifest

    result = verify_manifest(manifest, lake=lake)
    click.echo(str(result))
    if not result.ok:
        raise SystemExit(1)


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
@_lake_option("The lake to replay.")
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
@_clean_errors
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

    result = replay(
        lake,
        aggregate,
        streams=streams or None,
        stream_prefix=stream_prefix,
        as_of=_position_or_time(as_of),
        workers=workers,
        on_error=on_error,
        progress=_progress(),
        engine=engine,
        scheduler=scheduler,
        partitions=partitions,
        workdir=workdir,
    )
    # Counted and written through scans: a replay on Dask need not fit in this process.
    events, streams_seen = (
        result.scan_timeline().select(pl.len(), pl.col("stream_name").n_unique()).collect().row(0)
    )
    kinds = result.scan_findings().group_by("kind").len().sort("kind").collect()
    click.echo(
        f"replayed {events:,} events of {streams_seen:,} streams through "
        f"{aggregate}: {int(kinds['len'].sum()):,} findings"
    )
    for kind, count in kinds.iter_rows():
        click.echo(f"  {kind}: {count:,}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        findings_path = out.with_name(out.stem + ".findings.parquet")
        result.scan_timeline().sink_parquet(out)
        result.scan_findings().sink_parquet(findings_path)
        click.echo(f"wrote {out} and {findings_path}")


@main.command()
@click.option(
    "--lake",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("data/lake/demo.duckdb"),
    show_default=True,
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
)
@click.option("--users", type=click.IntRange(min=20), default=75, show_default=True)
@_clean_errors
def demo(lake: Path, out_dir: Path, users: int) -> None:
    """Dev server + sample ledger -> lake -> balance-timeline report; prints the HTML path."""
    from esworkbench.demo import run_demo

    replace = lake == _DEMO_LAKE  # the demo's own lake is rebuilt; any other is never deleted
    run_demo(lake=lake, out_dir=out_dir, users=users, replace=replace, say=click.echo)


def _filter_options(fn: F) -> F:
    """The event filters shared by sync and export, one option per `FilterOptions` keyword."""
    from esworkbench.filters import OPTION_HELP

    for name, help in reversed(OPTION_HELP.items()):
        flag = "--" + name.replace("_", "-")
        if name in ("streams", "event_types"):  # repeatable, named in the singular
            fn = click.option(flag[:-1], name, multiple=True, help=help)(fn)
        elif name.endswith("_position"):
            fn = click.option(flag, type=click.IntRange(min=0), help=help)(fn)
        elif name == "include_system":
            fn = click.option(flag, is_flag=True, default=None, help=help)(fn)
        else:
            fn = click.option(flag, help=help)(fn)
    return fn


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The filter options actually given on the command line."""
    return {key: value for key, value in options.items() if value not in (None, ())}


@main.command()
@click.option(
    "--uri",
    envvar="ESWORKBENCH_ESDB_URI",
    help="EventStoreDB connection string: esdb://host:2113?tls=false for a server without TLS "
    "(such as the dev server), esdb://user:password@host:2113 with TLS; kurrentdb:// works too.",
)
@click.option(
    "--archive",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Or a JSONL(.gz)/Parquet archive of events.",
)
@_lake_option("The DuckDB lake file (created when missing).")
@click.option(
    "--reader",
    type=click.Choice(["fast", "plain"]),
    default=None,
    help="fast: lean protobuf decoding (default); plain: esdbclient's read_all.",
)
@click.option("--follow", is_flag=True, help="Keep syncing new events until Ctrl-C.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Events per batch and transaction (memory grows with it).",
)
@_filter_options
@_clean_errors
def sync(
    uri: str | None,
    archive: Path | None,
    lake: Path,
    reader: str | None,
    follow: bool,
    batch_size: int | None,
    **filters: Any,
) -> None:
    """Copy new events from EventStoreDB (or an archive) into the lake, exactly once."""
    from esworkbench.config import Settings
    from esworkbench.filters import EventFilter
    from esworkbench.lake import Lake, SyncInterrupted
    from esworkbench.lake import sync as sync_into
    from esworkbench.sources import open_source

    if (uri is None) == (archive is None):
        raise click.UsageError("give exactly one of --uri URI or --archive PATH")
    settings = Settings.load(esdb_uri=uri, lake=lake, reader=reader, batch_size=batch_size)
    location = settings.esdb_uri or str(archive)
    # sync() turns Ctrl-C into a stop at a batch boundary; one that lands before it starts
    # (opening the lake, connecting) or after it ends (closing) is just as harmless, and
    # gets the same quiet exit rather than click's "Aborted!".
    try:
        source = open_source(
            location,
            reader=settings.reader,
            filter=EventFilter.of(**_given(filters)),
            follow=follow,
        )
        opened = Lake(settings.lake)
        try:
            result = sync_into(source, opened, batch_size=settings.batch_size, progress=_progress())
        except SyncInterrupted as stopped:
            opened.close()
            click.echo(stopped.result.summary())
            click.echo("interrupted: the lake is consistent; run the same command to resume")
            raise SystemExit(130) from None
        except BaseException:
            # A first sync that fails (server down, wrong URI) leaves nothing behind: an empty
            # lake file would look like a lake that synced and found no events.
            empty = opened.created and opened.head_position() is None
            opened.close()
            if empty:
                opened.remove()
            raise
        opened.close()
    except KeyboardInterrupt:
        click.echo("interrupted: the lake is consistent; run the same command to resume")
        raise SystemExit(130) from None
    click.echo(result.summary())


@main.command()
@_lake_option("The lake to export from.", exists=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="An archive (.jsonl, .jsonl.gz, .parquet), or a directory with --partitioned.",
)
@click.option(
    "--partitioned",
    is_flag=True,
    help="Parquet partitioned by category and month (hive layout) into the --out dir.",
)
@_filter_options
@_clean_errors
def export(lake: Path, out: Path, partitioned: bool, **filters: Any) -> None:
    """Write lake events out: a compliance archive that sync reads back, or partitioned Parquet."""
    from esworkbench.lake import Lake

    options = _given(filters)
    with Lake(lake, read_only=True) as opened:
        if partitioned:
            written = opened.export_parquet(out, **options)
        else:
            written = opened.export_archive(out, **options)
    click.echo(f"wrote {written}")


# Exit status of `check` when findings at or above --fail-on exist (1 is an error, 2 a usage
# error): a pipeline can tell "the history breaks its rules" from "the check could not run".
CHECK_FAILED = 3


@main.command()
@_lake_option("The lake to check.", exists=True)
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
@_filter_options
@_clean_errors
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

    found = run_check(lake, list(rule_specs) or None, aggregate=aggregate, **_given(filters))
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


@main.group(name="lake")
def lake_group() -> None:
    """What a lake holds: counts, positions, syncs (info) and the events it rejected."""


def _open_for_reading(path: Path) -> Any:
    from esworkbench.config import resolve_lake_path
    from esworkbench.lake import Lake

    return Lake(resolve_lake_path(path), read_only=True)


@lake_group.command(name="info")
@click.argument("lake", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--runs",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many of the latest sync runs to show.",
)
@_clean_errors
def lake_info(lake: Path, runs: int) -> None:
    """Counts, positions, checkpoints, the latest sync runs and the views of lake file LAKE."""
    with _open_for_reading(lake) as opened:
        summary = opened.summary()
        sync_runs = opened.read_sync_runs()
        views = opened.typed_event_types()
        models = opened.read_model_schemas()
    click.echo(str(summary))
    if runs and sync_runs.height:
        click.echo(f"  latest sync runs (of {sync_runs.height}):")
        for row in sync_runs.tail(runs).iter_rows(named=True):
            finished = row["finished"].isoformat(timespec="seconds") if row["finished"] else "-"
            line = (
                f"    #{row['run_id']} {row['started'].isoformat(timespec='seconds')} .. "
                f"{finished} {row['outcome']}: {row['events']:,} events, "
                f"{row['rejected']:,} rejected, positions "
                f"{_position(row['from_position'])}..{_position(row['to_position'])}, "
                f"from {row['source']}"
            )
            click.echo(line)
            if row["error"]:
                click.echo(f"      error: {row['error']}")
    click.echo(f"  typed views ({len(views)}): " + (", ".join(f"typed.{v}" for v in views) or "-"))
    click.echo(f"  read models ({len(models)}): " + (", ".join(models) or "-"))


@lake_group.command(name="rejected")
@click.argument("lake", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--raw", is_flag=True, help="Also show each event's payload and metadata bytes.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    help="Show at most this many (default: all).",
)
@_filter_options
@_clean_errors
def lake_rejected(lake: Path, raw: bool, limit: int | None, **filters: Any) -> None:
    """The events lake file LAKE could not decode: where they are, and why (kept, not dropped)."""
    with _open_for_reading(lake) as opened:
        rejected = opened.read_rejected(**_given(filters))
    click.echo(f"{rejected.height:,} rejected event(s)")
    shown = rejected if limit is None else rejected.head(limit)
    for row in shown.iter_rows(named=True):
        click.echo(
            f"  {row['commit_position']} {row['stream_name']}@{row['stream_revision']} "
            f"{row['event_type']} ({row['content_type']}, event {row['event_id']}): "
            f"{row['reason']}"
        )
        if raw:
            click.echo(f"    data ({len(row['data'])} bytes): {_bytes(row['data'])}")
            click.echo(f"    metadata ({len(row['metadata'])} bytes): {_bytes(row['metadata'])}")
    if limit is not None and rejected.height > limit:
        click.echo(f"  ... {rejected.height - limit:,} more (--limit)")


def _position(value: int | None) -> str:
    return "start" if value is None else str(value)


def _bytes(value: bytes) -> str:
    """Raw bytes as a Python bytes literal: printable text stays readable, the rest escaped."""
    return repr(bytes(value))
