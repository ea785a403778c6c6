"""The main job on the embedded default: dev server -> sample ledger -> lake -> report.

`esworkbench demo` (and `make demo`) runs it: an in-process development server, the sample
bank ledger written into it through the production write path, a sync into a DuckDB lake, the
lake's summary, and the balance-timeline report rendered to offline HTML.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from esworkbench.errors import ConfigError
from esworkbench.examples.bank.seed import SeedResult, seed_esdb
from esworkbench.lake import Lake, LakeSummary, SyncResult, sync
from esworkbench.reports import ReportResult, run_report
from esworkbench.sources import open_source

__all__ = ["DemoResult", "run_demo"]


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What the demo produced, stage by stage."""

    seeded: SeedResult
    synced: SyncResult
    summary: LakeSummary
    report: ReportResult


def run_demo(
    *,
    lake: str | Path = "data/lake/demo.duckdb",
    out_dir: str | Path = "reports",
    users: int = 75,
    seed: int = 7,
    days: int = 90,
    replace: bool = False,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run the whole pipeline on the sample ledger and return where everything went.

    Args:
        lake: the lake file to (re)build.
        out_dir: parent of ``balance_timeline/<UTC timestamp>/``.
        users: the sample ledger's accounts (see ``sample.generate``).
        seed: the sample ledger's random seed.
        days: the sample ledger's span in days.
        replace: delete an existing lake at `lake` first. The demo always builds a new
            lake (its dev server is new each run, so an old lake's checkpoint would not apply);
            without `replace`, an existing file is refused rather than destroyed.
        say: where progress lines go.

    Example:
        >>> result = run_demo(lake="/tmp/demo.duckdb", users=20, days=30)  # doctest: +SKIP
        >>> result.report.html  # doctest: +SKIP
    """
    from esworkbench.devserver import start

    lake_path = Path(lake)
    lake_path.parent.mkdir(parents=True, exist_ok=True)
    if lake_path.exists() and not replace:
        raise ConfigError(
            f"{lake_path} already exists and the demo builds a new lake: remove it, or give "
            "another path (--lake), or leave --lake at its default to rebuild the demo lake"
        )
    for leftover in (lake_path, lake_path.with_name(lake_path.name + ".wal")):
        leftover.unlink(missing_ok=True)
    with start() as server:
        say(f"development server at {server.uri}")
        seeded = seed_esdb(server.uri, users=users, seed=seed, days=days, progress=True)
        say(
            f"seeded {seeded.written:,} events ({seeded.anomalies} injected anomalies) "
            f"in {seeded.seconds:.1f} s"
        )
        with Lake(lake_path) as opened:
            synced = sync(open_source(server.uri), opened, progress=True)
            say(synced.summary())
            summary = opened.summary()
            say(str(summary))
    say("rendering the balance-timeline report ...")
    report = run_report("balance_timeline", lake=lake_path, out_dir=out_dir)
    say(str(report))
    say(f"open {report.html.resolve()} in a browser (no network needed)")
    return DemoResult(seeded=seeded, synced=synced, summary=summary, report=report)
