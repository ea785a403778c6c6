"""Scheduled runs from the command line: typed parameters, files of them, timeouts, quiet logs.

Given the report notebooks (and two small fixtures), when a scheduler runs them the way cron or
CI would (stderr not a terminal), then a mistyped parameter is refused before any kernel
starts, naming the parameter, its type and the value; the log holds no progress bars and no
kernel warnings; and a report that runs too long is stopped with the fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from esworkbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "notebooks"


def test_report_list_shows_each_report_with_typed_parameters() -> None:
    result = CliRunner().invoke(main, ["report", "--list"], env={"ESWORKBENCH_LAKE": None})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert {"anomaly_report", "balance_timeline", "projection_rebuild"} <= set(lines)
    assert '  lake: str = "data/lake/demo.duckdb"' in lines
    assert "  top_n: Optional[int] = 10" in lines
    assert "  lag_seconds: float = 5.0" in lines
    one = CliRunner().invoke(main, ["report", "balance_timeline", "--list"])
    assert one.exit_code == 0 and "anomaly_report" not in one.output


def test_a_mistyped_parameter_is_refused_before_a_kernel_starts(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "report",
            "balance_timeline",
            "--lake",
            str(tmp_path / "lake.duckdb"),
            "-p",
            "top_n",
            "five",
            "--out-dir",
            str(tmp_path / "reports"),
        ],
    )
    assert result.exit_code == 1
    assert "top_n must be Optional[int] (default 10), got 'five' (str)" in result.output
    assert not (tmp_path / "reports").exists()  # refused before anything ran


def test_text_parameters_stay_text_and_lists_are_checked(tmp_path: Path) -> None:
    from esworkbench import reports

    declared = reports.notebook_parameters(ROOT / "notebooks" / "balance_timeline.ipynb")
    parsed = reports.parse_parameters([("until", "2024"), ("user_ids", "7")], declared)
    assert parsed == {"until": "2024", "user_ids": 7}
    result = CliRunner().invoke(
        main,
        ["report", "balance_timeline", "--lake", str(tmp_path / "x.duckdb"), "-p", "user_ids", "7"],
    )
    assert result.exit_code == 1 and "user_ids must be Optional[list[str]]" in result.output


def test_papermill_help_shows_the_parameter_types() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "--help-notebook",
            str(ROOT / "notebooks" / "balance_timeline.ipynb"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "top_n: Optional[int] (default 10)" in out
    assert "resample: Optional[str] (default None)" in out


def test_a_scheduled_run_reads_a_parameters_file_and_logs_no_noise(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("points: 9\nfail: false\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "esworkbench",
            "report",
            str(FIXTURES / "tiny_report.ipynb"),
            "--lake",
            str(tmp_path / "unused.duckdb"),
            "--parameters-file",
            str(params),
            "-p",
            "points",
            "4",
            "--out-dir",
            str(tmp_path / "reports"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "without encryption" not in done.stderr  # the kernel's transport warning
    assert "IProgress" not in done.stderr and "it/s" not in done.stderr
    (manifest,) = (tmp_path / "reports").glob("tiny_report/*/manifest.json")
    parameters = json.loads(manifest.read_text())["parameters"]
    assert parameters["points"] == 4 and parameters["fail"] is False  # -p beats the file


def test_a_bad_parameters_file_names_the_file(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("- top_n\n- 5\n")
    result = CliRunner().invoke(
        main,
        ["report", "balance_timeline", "--lake", str(tmp_path / "x.duckdb"), "-f", str(params)],
    )
    assert result.exit_code == 1
    assert f"the parameters file {params} must hold one mapping" in result.output


def test_a_report_that_runs_too_long_is_stopped_with_the_fix(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "report",
            str(FIXTURES / "slow_report.ipynb"),
            "--lake",
            str(tmp_path / "unused.duckdb"),
            "-p",
            "seconds",
            "60",
            "--timeout",
            "1",
            "--out-dir",
            str(tmp_path / "reports"),
        ],
    )
    assert result.exit_code == 1
    assert "a cell ran longer than the timeout of 1s" in result.output
    assert "--timeout" in result.output
    (manifest,) = (tmp_path / "reports").glob("slow_report/*/manifest.json")
    assert json.loads(manifest.read_text())["outcome"]["status"] == "failed"


def test_quiet_beats_progress_and_logs_get_no_bars(tmp_path: Path) -> None:
    archive = ROOT / "data" / "sample" / "ledger.jsonl.gz"
    for flags, bars in (([], False), (["--progress"], True), (["-q", "--progress"], False)):
        lake = tmp_path / f"{len(flags)}.duckdb"
        result = CliRunner().invoke(
            main, [*flags, "sync", "--archive", str(archive), "--lake", str(lake)]
        )
        assert result.exit_code == 0, result.output
        assert ("events/s" in result.stderr) is bars, flags
        assert "sync ok" in result.stdout
