"""The command line: a thin click group, one subcommand per pipeline stage."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="esworkbench")
def main() -> None:
    """esworkbench: pull EventStoreDB history into a DuckDB lake, replay it, report on it."""
