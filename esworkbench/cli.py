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
