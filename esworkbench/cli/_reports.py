"""Commands that render and check reports: report, verify, demo (private; see `cli`)."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from esworkbench.cli._group import DEMO_LAKE, clean_errors, main


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
@clean_errors
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
        skip_iri_grammar,
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
    skip_iri_grammar()
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
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--lake",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Check against this lake instead of the one the manifest names.",
)
@clean_errors
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
@clean_errors
def demo(lake: Path, out_dir: Path, users: int) -> None:
    """Dev server + sample ledger -> lake -> balance-timeline report; prints the HTML path."""
    from esworkbench.demo import run_demo
    from esworkbench.reports import skip_iri_grammar

    skip_iri_grammar()
    replace = lake == DEMO_LAKE  # the demo's own lake is rebuilt; any other is never deleted
    run_demo(lake=lake, out_dir=out_dir, users=users, replace=replace, say=click.echo)
