"""The click group and the options its commands share (private; see ``esworkbench.cli``)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from esworkbench.errors import EsWorkbenchError

__all__ = [
    "DEMO_LAKE",
    "F",
    "clean_errors",
    "filter_options",
    "given",
    "lake_option",
    "main",
    "progress_wanted",
]

F = TypeVar("F", bound=Callable[..., Any])
DEMO_LAKE = Path("data/lake/demo.duckdb")


def lake_option(help: str, *, exists: bool = False) -> Callable[[F], F]:
    """--lake PATH, required, from ESWORKBENCH_LAKE when not given."""
    return click.option(
        "--lake",
        type=click.Path(exists=exists, dir_okay=False, path_type=Path),
        envvar="ESWORKBENCH_LAKE",
        required=True,
        help=f"{help} Default: $ESWORKBENCH_LAKE.",
    )


def clean_errors(fn: F) -> F:
    """Turn the workbench's own errors into a click error (message, exit 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EsWorkbenchError as e:
            raise click.ClickException(str(e)) from e

    return wrapper  # type: ignore[return-value]


def progress_wanted() -> bool:
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


def filter_options(fn: F) -> F:
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


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The filter options actually given on the command line."""
    return {key: value for key, value in options.items() if value not in (None, ())}
