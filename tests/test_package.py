"""The package's public surface and its set-up files."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import esworkbench

ROOT = Path(__file__).resolve().parents[1]


def test_all_is_sorted_unique_and_importable() -> None:
    names = esworkbench.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(esworkbench, name) is not None, name


def test_public_names_have_docstrings() -> None:
    missing = [
        n for n in esworkbench.__all__ if not (getattr(esworkbench, n).__doc__ or "").strip()
    ]
    assert missing == []


def test_import_stays_light() -> None:
    # Report and chart libraries are imported by the functions that need them, not at import.
    code = (
        "import sys, esworkbench; "
        "heavy = [m for m in ('papermill', 'nbconvert', 'altair', 'esdbclient', 'grpc') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_environment_yml_agrees_with_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    declared = {req for req in pip_section if not req.startswith("-e")}
    assert declared == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == "python" + project["requires-python"]
