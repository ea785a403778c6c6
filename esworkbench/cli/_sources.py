"""Commands for events and their lake: devserver, seed, sync, export, lake (private)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
@clean_errors
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
@clean_errors
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
        esdbclient_uri(uri), users=users, seed=seed_value, days=days, progress=progress_wanted()
    )
    click.echo(
        f"seeded {mask_uri(uri)}: {result.written:,} of {result.events:,} events written "
        f"({result.events - result.written:,} already there), {result.streams:,} streams, "
        f"{result.anomalies} injected anomalies, last position "
        f"{result.last_commit_position:,}, {result.seconds:.1f}s"
    )


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
@lake_option("The DuckDB lake file (created when missing).")
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
    help="Events per batch and transaction (memory grows with it). Default: 25,000 from a "
    "server, a row group's 122,880 from an archive.",
)
@filter_options
@clean_errors
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
            filter=EventFilter.of(**given(filters)),
            follow=follow,
        )
        opened = Lake(settings.lake)
        try:
            result = sync_into(
                source, opened, batch_size=settings.batch_size, progress=progress_wanted()
            )
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
@lake_option("The lake to export from.", exists=True)
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
@filter_options
@clean_errors
def export(lake: Path, out: Path, partitioned: bool, **filters: Any) -> None:
    """Write lake events out: a compliance archive that sync reads back, or partitioned Parquet."""
    from esworkbench.lake import Lake

    options = given(filters)
    with Lake(lake, read_only=True) as opened:
        if partitioned:
            written = opened.export_parquet(out, **options)
        else:
            written = opened.export_archive(out, **options)
    click.echo(f"wrote {written}")


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
@clean_errors
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
@filter_options
@clean_errors
def lake_rejected(lake: Path, raw: bool, limit: int | None, **filters: Any) -> None:
    """The events lake file LAKE could not decode: where they are, and why (kept, not dropped)."""
    with _open_for_reading(lake) as opened:
        rejected = opened.read_rejected(**given(filters))
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
