"""The README's Python snippet runs as written (on a lake built from the committed sample)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import polars as pl
import pytest

from esworkbench.lake import Lake, sync
from esworkbench.sources.files import open_archive

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snippets = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert snippets, "README.md should show how to use the library from Python"
    monkeypatch.chdir(tmp_path)
    lake_path = Path("data/lake/demo.duckdb")
    lake_path.parent.mkdir(parents=True)
    with Lake(lake_path) as lake:
        sync(open_archive(ROOT / "data" / "sample" / "ledger.jsonl.gz"), lake)
    scope: dict[str, object] = {}
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), scope)
    run = scope["run"]
    # Ground truth from the archive itself, read with a plain loop.
    lines = [
        json.loads(line)
        for line in gzip.decompress(
            (ROOT / "data/sample/ledger.jsonl.gz").read_bytes()
        ).splitlines()
    ]
    readable_deposits = sum(
        e["event_type"] == "BalanceDeposited" and "data" in e and _is_json(e["data"]) for e in lines
    )
    # Every event the ledger wrote has a row, those the lake rejected as not JSON included.
    assert run.timeline.height == len(lines)  # type: ignore[attr-defined]
    assert "decode_error" in set(run.findings["kind"])  # type: ignore[attr-defined]
    assert scope["deposits"].height == readable_deposits  # type: ignore[attr-defined]
    # Written batch by batch to Parquet parts, then sorted into one file: the same rows.
    assert scope["written"].timeline.equals(run.timeline)  # type: ignore[attr-defined]
    assert pl.read_parquet("data/lake/timeline.parquet").equals(run.timeline)  # type: ignore[attr-defined]
    # The Dask snippet folds the same rows on a local cluster.
    assert scope["on_dask"].timeline.equals(run.timeline)  # type: ignore[attr-defined]


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
