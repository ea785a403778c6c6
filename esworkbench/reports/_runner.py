"""Report notebooks: run them with papermill, render offline HTML, pin what they read.

``run_report(name, lake=..., parameters=...)`` runs the report notebook ``<name>.ipynb`` (shipped
in ``esworkbench/reports/notebooks/``) into
``reports/<name>/<UTC timestamp>/``::

    <name>.ipynb    the executed notebook (kept, partial, when a cell fails)
    <name>.html     a self-contained rendering: nothing is fetched when it opens
    manifest.json   parameters and source (credentials masked), what was read, versions,
                    hashes, timings and the outcome (with the failing cell)

**What was read.** A notebook reads the lake through ``read_recorded``, which returns the
events and a ``ReadRecord`` (filters, count, first and last commit position, the lake's digest
of exactly those events, the lake's head and checkpoints). Displaying the record stores it in
the notebook itself, as an output of type ``READ_MIME``, and the runner copies the records from
the executed notebook into the manifest. So the notebook never depends on the runner (plain
``papermill`` works, and its output carries the same records), and the manifest states what
the notebook's code read rather than what the runner guessed it would. ``verify_manifest``
recomputes each digest from the lake with the recorded filters.

**Offline HTML**: see ``esworkbench.reports._html`` (static SVG from vl-convert, made
interactive by one inline Vega bundle; no CDN script).

**Credentials** never reach a notebook, a manifest or a log: a parameter holding a URI with a
password is injected masked, and the real URI reaches the kernel through the
``ESWORKBENCH_ESDB_URI`` environment variable (``resolve_masked_uri`` picks it up there).

papermill, nbconvert, nbformat and vl-convert are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from esworkbench.config import mask_uri
from esworkbench.errors import ReportError
from esworkbench.reports._html import render_html
from esworkbench.reports._parameters import (
    _mask,
    _notebook_path,
    _prepare_parameters,
    notebook_parameters,
)
from esworkbench.reports._record import (
    ReadRecord,
    reads_in_notebook,
    stages_in_notebook,
)
from esworkbench.reports._verify import _sha256

__all__ = [
    "MANIFEST_VERSION",
    "REPORT_DIR_PARAMETER",
    "ReportCellError",
    "ReportResult",
    "run_report",
    "skip_iri_grammar",
]

MANIFEST_VERSION = 1
# A notebook parameter the runner fills with the report's own directory, when declared.
REPORT_DIR_PARAMETER = "report_dir"
_VERSIONED = (
    "esworkbench",
    "polars",
    "duckdb",
    "pyarrow",
    "altair",
    "vl-convert-python",
    "papermill",
    "nbconvert",
    "nbformat",
    "ipykernel",
    "esdbclient",
)
# The kernel logs warnings to the terminal of whoever runs the report; the one about its TCP
# transport being unencrypted concerns loopback sockets to a kernel the runner itself started,
# so kernel warnings are kept out of scheduled runs' output (errors still show).
#
# jsonschema (which altair imports in the kernel, and nbformat in the runner's process) builds
# the grammar of `_IRI_GRAMMAR` when imported, ~0.8 s, only to check the "iri" string formats,
# which neither asks it to check. It imports that module under try/except ImportError, and a
# None entry in sys.modules is such an error: kernels the runner starts skip it, and so does the
# CLI's own process (`skip_iri_grammar`). A user's own kernel or process is left as it is.
_IRI_GRAMMAR = "rfc3987_syntax"
_KERNEL_ARGUMENTS = [
    "--IPKernelApp.log_level=ERROR",
    f"--IPKernelApp.exec_lines=__import__('sys').modules.setdefault({_IRI_GRAMMAR!r}, None)",
]


def skip_iri_grammar() -> None:
    """Keep jsonschema from building a grammar no report uses, in a process we own (see above)."""
    sys.modules.setdefault(_IRI_GRAMMAR, None)  # type: ignore[arg-type]  # None: "not importable"


# --- running -------------------------------------------------------------------------------


class ReportCellError(ReportError):
    """A report notebook failed in a cell; its partial notebook and HTML were kept.

    Attributes:
        cell_index: the cell's index in the source notebook (None if it was an injected one).
        execution_count: the cell's ``In [n]`` number.
        source: the cell's code.
        ename: the exception class raised in the cell.
        evalue: the exception message.
        result: the kept partial report (directory, notebook, HTML, manifest).
    """

    def __init__(self, name: str, failure: Mapping[str, Any], result: ReportResult) -> None:
        self.cell_index: int | None = failure.get("cell_index")
        self.execution_count: int | None = failure.get("execution_count")
        self.source: str = failure.get("source", "")
        self.ename: str = failure.get("ename", "")
        self.evalue: str = failure.get("evalue", "")
        self.result = result
        first_line = next((ln for ln in self.source.splitlines() if ln.strip()), "")
        where = "the injected parameters" if self.cell_index is None else self.cell_index
        super().__init__(
            f"report {name!r} failed in cell {where} (In [{self.execution_count}]: "
            f"{first_line!r}): {self.ename}: {self.evalue}. The partial notebook and its HTML "
            f"are in {result.directory}"
        )


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """A rendered report: its directory, files and manifest."""

    name: str
    directory: Path
    notebook: Path
    html: Path
    manifest_path: Path
    manifest: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when every cell ran."""
        return bool(self.manifest["outcome"]["status"] == "ok")

    def __str__(self) -> str:
        m = self.manifest
        return (
            f"{self.name}: {m['event_count']:,} events read (commit positions "
            f"{m['first_position']}..{m['last_position']}, digest {m['digest']})\n"
            f"  html:     {self.html}\n  manifest: {self.manifest_path}"
        )


def run_report(
    name: str,
    *,
    lake: str | Path,
    parameters: Mapping[str, Any] | None = None,
    out_dir: str | Path = "reports",
    no_input: bool = False,
    notebooks_dir: str | Path | None = None,
    timeout: float | None = None,
) -> ReportResult:
    """Run a report notebook with papermill and render it to offline HTML with a manifest.

    Args:
        name: the notebook's name in `notebooks_dir` (``balance_timeline``), or a path to an
            ``.ipynb`` file.
        lake: the lake file, passed to the notebook as its ``lake`` parameter.
        parameters: other notebook parameters; unknown ones are refused before anything runs.
        out_dir: reports go to ``<out_dir>/<name>/<UTC timestamp>/``.
        no_input: hide code cells in the HTML (for reviewers).
        notebooks_dir: where notebooks live (default: ./notebooks, else the package's own).
        timeout: seconds a single cell may run (default: no limit).

    Returns:
        The report; ``ReportCellError`` (a ``ReportError``) is raised, after the partial
        notebook, its HTML and the manifest were written, when a cell fails.

    Example:
        >>> result = run_report("balance_timeline", lake="data/lake/workbench.duckdb",
        ...                     parameters={"top_n": 5})  # doctest: +SKIP
        >>> result.html  # doctest: +SKIP
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source_nb = _notebook_path(name, notebooks_dir)
    report = source_nb.stem
    injected, kernel_env, shown = _prepare_parameters(source_nb, lake, parameters or {})
    directory = _new_report_dir(Path(out_dir) / report)
    if REPORT_DIR_PARAMETER in notebook_parameters(source_nb) and (
        REPORT_DIR_PARAMETER not in injected
    ):
        # A notebook that exports files (the findings as CSV and Parquet) writes them here,
        # beside its HTML, and the manifest pins them with the rest.
        injected[REPORT_DIR_PARAMETER] = str(directory)
    executed, html_path = directory / f"{report}.ipynb", directory / f"{report}.html"
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    failure: dict[str, Any] | None = None
    try:
        with _environment(kernel_env):
            papermill.execute_notebook(
                str(source_nb),
                str(executed),
                parameters=injected,
                engine_name=_save_at_end_engine(),
                progress_bar=False,
                log_output=False,
                execution_timeout=timeout,
                extra_arguments=_KERNEL_ARGUMENTS,
            )
    except PapermillExecutionError as e:
        failure = _cell_failure(e, source_nb)
    except Exception as e:  # kernel death, timeouts, bad notebooks: keep what exists, say so
        failure = {"stage": "execute", "ename": type(e).__name__, "evalue": mask_uri(str(e))}
        if type(e).__name__ == "CellTimeoutError":
            failure["evalue"] = (
                f"a cell ran longer than the timeout of {timeout:g}s and was stopped; give "
                f"more time (--timeout), or read less (narrow the filters). {failure['evalue']}"
            )
    t1 = time.perf_counter()
    nb_json = json.loads(executed.read_text()) if executed.exists() else {}
    reads = reads_in_notebook(nb_json)
    provenance = {
        "report": report,
        "notebook": {"path": _shown_path(source_nb), "sha256": _sha256(source_nb)},
        "parameters": shown,
        "source": _mask(injected.get("source")),
        "lake": _lake_section(lake, reads),
        **_read_summary(reads),
        "versions": _versions(),
    }
    html_problem = None
    if executed.exists():
        try:
            render_html(executed, html_path, no_input=no_input, provenance=provenance)
        except ReportError as e:
            html_problem = str(e)
    t2 = time.perf_counter()
    outcome: dict[str, Any] = {"status": "ok"}
    if failure is not None:
        outcome = {"status": "failed", **failure}
    elif html_problem is not None:
        outcome = {"status": "failed", "stage": "render", "message": html_problem}
    if failure is not None and html_problem is not None:
        outcome["render_error"] = html_problem
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "report": report,
        "notebook": provenance["notebook"],
        "parameters": shown,
        "source": _mask(injected.get("source")),
        "lake": provenance["lake"],
        **_read_summary(reads),
        "reads": [r.to_json() for r in reads],
        "no_input": no_input,
        "files": {
            p.relative_to(directory).as_posix(): _sha256(p)
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != "manifest.json"
        },
        "versions": provenance["versions"],
        "timings": {
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "execute_seconds": round(t1 - t0, 3),
            "render_seconds": round(t2 - t1, 3),
            "cells": _cell_durations(nb_json),
            # What the notebook's own objects timed inside their cells (e.g. read, replay).
            "stages": stages_in_notebook(nb_json),
        },
        "outcome": outcome,
    }
    manifest_path = directory / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    result = ReportResult(report, directory, executed, html_path, manifest_path, manifest)
    if failure is not None and "cell_index" in failure:
        raise ReportCellError(report, failure, result)
    if outcome["status"] != "ok":
        raise ReportError(
            f"report {report!r} failed ({outcome.get('stage')}): "
            f"{outcome.get('ename', '')} {outcome.get('evalue') or outcome.get('message')}"
            f"; what exists is in {directory}"
        )
    return result


# --- helpers -------------------------------------------------------------------------------

_ENGINE = "esworkbench-save-at-end"


@functools.cache
def _save_at_end_engine() -> str:
    """A papermill engine that writes the executed notebook once, when it ends (however).

    Papermill's own engine writes the whole notebook at every cell's start and end, so that a
    watcher sees progress; with charts and complete tables in it that is a few MB each time,
    seconds in all, and nobody watches a scheduled report's file. This one writes it when the
    run ends, whether every cell ran, one failed, the kernel died or a cell timed out (papermill
    completes the notebook in a ``finally``), so a partial notebook is still kept.
    """
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    class SaveAtEnd(NotebookExecutionManager):  # type: ignore[misc]
        def save(self, **kwargs: Any) -> None:
            if self.end_time is not None:  # set by notebook_complete, just before it saves
                super().save(**kwargs)

    class Engine(NBClientEngine):  # type: ignore[misc]
        @classmethod
        def execute_notebook(
            cls,
            nb: Any,
            kernel_name: str,
            output_path: str | None = None,
            progress_bar: bool = True,
            log_output: bool = False,
            autosave_cell_every: int = 30,
            **kwargs: Any,
        ) -> Any:
            # papermill's Engine.execute_notebook, with the manager above.
            manager = SaveAtEnd(
                nb,
                output_path=output_path,
                progress_bar=progress_bar,
                log_output=log_output,
                autosave_cell_every=autosave_cell_every,
            )
            manager.notebook_start()
            try:
                cls.execute_managed_notebook(manager, kernel_name, log_output=log_output, **kwargs)
            finally:
                manager.cleanup_pbar()
                manager.notebook_complete()
            return manager.nb

    papermill_engines.register(_ENGINE, Engine)
    return _ENGINE


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    # The kernel is a child process started by papermill/nbclient, which offer no way to pass it
    # an environment; it inherits ours, so set the values for the run and restore them after.
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _cell_failure(error: Any, source_nb: Path) -> dict[str, Any]:
    """Name the failing cell in terms of the source notebook (papermill injects one cell)."""
    source = str(error.source)
    original = json.loads(source_nb.read_text())
    index = next(
        (
            i
            for i, c in enumerate(original.get("cells", []))
            if c.get("cell_type") == "code" and _joined(c.get("source")) == source
        ),
        None,
    )
    tags = (
        original["cells"][index].get("metadata", {}).get("tags", [])
        if index is not None
        else ["injected-parameters"]
    )
    return {
        "stage": "execute",
        "cell_index": index,
        "execution_count": error.exec_count,
        "tags": tags,
        "source": mask_uri(source),
        "ename": str(error.ename),
        "evalue": mask_uri(str(error.evalue)),
    }


def _joined(source: Any) -> str:
    return "".join(source) if isinstance(source, list) else str(source or "")


def _new_report_dir(parent: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        directory = parent / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            continue
        return directory
    raise ReportError(f"cannot create a new report directory under {parent}")


def _shown_path(notebook: Path) -> str:
    """A notebook's path for the page: relative to the package or the working directory."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        if notebook.is_relative_to(base):
            return notebook.relative_to(base).as_posix()
    return str(notebook)


def _lake_section(lake: str | Path, reads: list[ReadRecord]) -> dict[str, Any]:
    # The path as the user gave it: a report carries no absolute local path it was not given.
    section: dict[str, Any] = {"path": str(lake)}
    if reads:
        section["head_position"] = reads[-1].head_position
        section["checkpoints"] = reads[-1].checkpoints
    return section


def _read_summary(reads: list[ReadRecord]) -> dict[str, Any]:
    firsts = [r.first_position for r in reads if r.first_position is not None]
    lasts = [r.last_position for r in reads if r.last_position is not None]
    if len(reads) == 1:
        digest: str | None = reads[0].digest
    elif reads:
        joined = "\n".join(r.digest for r in reads).encode()
        digest = "sha256:" + hashlib.sha256(joined).hexdigest()
    else:
        digest = None
    return {
        "first_position": min(firsts) if firsts else None,
        "last_position": max(lasts) if lasts else None,
        "event_count": sum(r.event_count for r in reads),
        "digest": digest,
    }


def _cell_durations(nb_json: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for index, cell in enumerate(nb_json.get("cells", [])):
        info = cell.get("metadata", {}).get("papermill", {})
        if cell.get("cell_type") == "code" and info.get("duration") is not None:
            out.append({"index": index, "seconds": round(float(info["duration"]), 3)})
    return out


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found
