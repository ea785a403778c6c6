"""The package reads as the pipeline: stage packages, one-way imports, no cycles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

import esworkbench

PACKAGE = Path(esworkbench.__file__).parent
ROOT = PACKAGE.parent


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("esworkbench")


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), ignoring a package's
    imports of its own submodules (its public face re-exporting them)."""
    modules = sorted(graph.modules)
    edges = {
        m: sorted(
            n
            for n in graph.find_modules_directly_imported_by(m)
            if n.startswith("esworkbench") and not n.startswith(m + ".")
        )
        for m in modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in edges.get(m, []):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == m:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in modules:
        if m not in index:
            visit(m)
    return groups


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    # The check itself must be able to fail: a graph with a loop is reported.
    graph = grimp.ImportGraph()
    for name in ("esworkbench.a", "esworkbench.b"):
        graph.add_module(name)
    graph.add_import(importer="esworkbench.a", imported="esworkbench.b")
    graph.add_import(importer="esworkbench.b", imported="esworkbench.a")
    assert _cycles(graph) == [["esworkbench.a", "esworkbench.b"]]


def test_no_private_stage_modules_beside_the_packages() -> None:
    # A split module becomes a package with private modules inside, never a `_stage_x.py`.
    siblings = [
        p.name for p in PACKAGE.glob("_*.py") if p.name not in ("__init__.py", "__main__.py")
    ]
    assert siblings == []


def test_layers_contract_holds() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" in out.stdout and "0 broken" in out.stdout


def test_report_notebooks_ship_inside_the_package() -> None:
    from esworkbench.reports import NOTEBOOKS_DIR

    assert NOTEBOOKS_DIR.is_relative_to(PACKAGE)
    assert (NOTEBOOKS_DIR / "balance_timeline.ipynb").is_file()
