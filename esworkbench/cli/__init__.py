"""The command line: a thin click group, one subcommand per pipeline stage.

Command bodies parse options and call the public API; anything worth testing lives in the
library. Library errors (EsWorkbenchError) become a one-line message and exit code 1.

Inside: `_group` (the group and the options commands share), `_sources` (devserver, seed, sync,
export, lake), `_analysis` (fold, check, rebuild), `_reports` (report, verify, demo).
"""

from esworkbench.cli import _analysis, _reports, _sources  # noqa: F401  (they add the commands)
from esworkbench.cli._analysis import CHECK_FAILED
from esworkbench.cli._group import main

__all__ = ["CHECK_FAILED", "main"]
