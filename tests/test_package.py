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
        "heavy = [m for m in ('papermill', 'nbconvert', 'altair', 'esdbclient', 'grpc', 'dask', "
        "'distributed', 'fsspec') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _pip_groups(text: str) -> dict[str, set[str]]:
    """The pip requirements of environment.yml by their "# group: NAME" heading."""
    groups: dict[str, set[str]] = {}
    current: str | None = None
    in_pip = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
        elif in_pip and stripped.startswith("# group:"):
            current = stripped.removeprefix("# group:").split()[0]
            groups[current] = set()
        elif in_pip and stripped.startswith("- ") and not stripped.startswith("- -e"):
            assert current is not None, f"{stripped!r} is under no '# group: NAME' heading"
            groups[current].add(stripped.removeprefix("- "))
    return groups


def test_environment_yml_agrees_with_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: set(reqs) for name, reqs in project["optional-dependencies"].items()}
    text = (ROOT / "environment.yml").read_text()
    env = yaml.safe_load(text)
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    declared = {req for req in pip_section if not req.startswith("-e")}
    # The environment is the developer's: the base, the dev extra, and the optional extras.
    assert declared == set(project["dependencies"]).union(*extras.values())
    groups = _pip_groups(text)
    assert set(groups) == {"dependencies", *extras}
    assert groups["dependencies"] == set(project["dependencies"])
    for name, reqs in extras.items():
        if name != "dev":
            assert groups[name] == reqs, name
    # The dev extra lists each optional extra's pins again (so the suite tests them); its own
    # group holds the rest, each requirement once in the file.
    for name, reqs in extras.items():
        if name != "dev":
            assert reqs <= extras["dev"], f"the dev extra lacks the {name} extra's {reqs}"
    others = set().union(*(r for n, r in extras.items() if n != "dev"))
    assert groups["dev"] == extras["dev"] - others
    assert len(declared) == sum(len(g) for g in groups.values())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python == "python" + project["requires-python"]


def test_base_install_stays_free_of_dask() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {req.split("[")[0].split(">")[0].split("<")[0] for req in project["dependencies"]}
    assert not names & {"dask", "distributed", "fsspec"}
