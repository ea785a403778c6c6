"""The command line: a thin click group, one subcommand per pipeline stage.

Command bodies parse options and call the public API; anything worth testing lives in the
library. Library errors (EsWorkbenchError) become a one-line message and exit code 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from esworkbench.errors import EsWorkbenchError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _clean_errors(fn: F) -> F:
    """Turn the workbench's own errors into a click error (message, exit 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EsWorkbenchError as e:
            raise click.ClickException(str(e)) from e

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="esworkbench")
def main() -> None:
    """esworkbench: pull EventStoreDB history into a DuckDB lake, replay it, report on it.

    Stages, in data-flow order: devserver, seed, sync, export, fold, report, verify; demo runs
    them end to end on the sample ledger.
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
@_clean_errors
def devserver(host: str, port: int, data_dir: Path | None, max_append_size: int | None) -> None:
    """Run the EventStoreDB-compatible development server in the foreground (Ctrl-C stops)."""
    from esworkbench.devserver import serve_forever

    options = {} if max_append_size is None else {"max_append_size": max_append_size}
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
    help="Write into this EventStoreDB instead (esdb://host:port?tls=false).",
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
        from esworkbench.sample import generate, write_archive

        ledger = generate(users=users, seed=seed_value, days=days)
        archive, truth = write_archive(ledger, out)
        click.echo(
            f"wrote {len(ledger):,} events to {archive} and "
            f"{len(ledger.truth)} anomalies to {truth}"
        )
        return
    from esworkbench.config import Settings
    from esworkbench.seed import seed_esdb

    uri = Settings.load(esdb_uri=uri).esdb_uri
    assert uri is not None
    result = seed_esdb(uri, users=users, seed=seed_value, days=days, progress=True)
    click.echo(
        f"seeded {mask_uri(uri)}: {result.written:,} of {result.events:,} events written "
        f"({result.events - result.written:,} already there), {result.streams:,} streams, "
        f"{result.anomalies} injected anomalies, last position "
        f"{result.last_commit_position:,}, {result.seconds:.1f}s"
    )
