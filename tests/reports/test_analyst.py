"""JupyterLab as an analyst opens it: notebooks run from notebooks/ with their defaults.

Given a project whose demo lake is at data/lake/demo.duckdb, when the balance-timeline notebook
runs with the working directory notebooks/ (as `jupyter lab notebooks/` then Run All does) and
no parameters, then it reads the project's demo lake; and notebook progress bars have their
widgets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from esworkbench import reports
from esworkbench.events import archive_line
from esworkbench.examples.bank import sample
from esworkbench.lake import Lake, sync
from esworkbench.sources.files import open_archive

ROOT = Path(__file__).resolve().parents[2]


def test_run_all_from_the_notebooks_directory_reads_the_demo_lake(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    shutil.copy(ROOT / "notebooks" / "balance_timeline.ipynb", project / "notebooks")
    ledger = sample.generate(users=8, seed=3, days=14)
    archive = tmp_path / "ledger.jsonl"
    archive.write_text("".join(archive_line(e) + "\n" for e in ledger.events))
    lake = project / "data" / "lake" / "demo.duckdb"
    with Lake(lake) as opened:
        sync(open_archive(archive), opened)
    env = {k: v for k, v in os.environ.items() if k != "ESWORKBENCH_LAKE"}
    out = tmp_path / "out.ipynb"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "notebooks/balance_timeline.ipynb",
            str(out),
            "--cwd",
            "notebooks",
            "--no-progress-bar",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = reports.reads_in_notebook(json.loads(out.read_text()))
    assert Path(record.lake) == lake.resolve()
    assert record.event_count > 0
    assert not (project / "notebooks" / "data").exists()  # no stray lake made beside them


def test_notebook_progress_bars_have_their_widgets() -> None:
    # tqdm.notebook falls back to text (TqdmWarning: IProgress not found) without ipywidgets.
    from tqdm.notebook import IProgress  # type: ignore[attr-defined]

    assert IProgress is not None
