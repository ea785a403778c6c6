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

import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from esworkbench.config import mask_uri
from esworkbench.errors import ReportError
from esworkbench.reports._html import render_html
from esworkbench.reports._record import (
    URI_ENV,
    ReadRecord,
    reads_in_notebook,
)

__all__ = [
    "NOTEBOOKS_DIR",
    "ReportCellError",
    "ReportResult",
    "VerifyResult",
    "accepts",
    "list_reports",
    "notebook_parameters",
    "parse_parameters",
    "read_parameters_file",
    "run_report",
    "verify_manifest",
]

MANIFEST_VERSION = 1
# A notebook parameter the runner fills with the report's own directory, when declared.
REPORT_DIR_PARAMETER = "report_dir"
# The report notebooks ship inside the package, so a plain `pip install` can run every report.
NOTEBOOKS_DIR = Path(__file__).resolve().parent / "notebooks"
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
_KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


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


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, str]]:
    """The parameters a notebook declares (its ``parameters`` cell): name -> type, default, help.

    The type is the cell's annotation (``top_n: "Optional[int]" = 10``, which papermill's
    ``--help-notebook`` shows too), else the type of the default (``resample = "1d"``: str); a
    parameter whose default is None and that has no annotation takes any value ("any").

    Example:
        >>> notebook_parameters("notebooks/balance_timeline.ipynb")["top_n"]  # doctest: +SKIP
        {'type': 'Optional[int]', 'default': '10', 'help': 'chart the N accounts with ...'}
    """
    import papermill

    declared = papermill.inspect_notebook(str(_notebook_path(notebook)))
    return {
        name: {
            "type": _declared_type(info["inferred_type_name"], str(info["default"])),
            "default": str(info["default"]),
            "help": str(info["help"] or ""),
        }
        for name, info in declared.items()
    }


def list_reports(notebooks_dir: str | Path | None = None) -> dict[str, dict[str, dict[str, str]]]:
    """The report notebooks there are, by name, each with its parameters (`notebook_parameters`).

    Looked up as ``run_report`` does: `notebooks_dir`, else ``./notebooks`` and the package's own
    (the first of a name wins).

    Example:
        >>> sorted(list_reports(NOTEBOOKS_DIR))
        ['anomaly_report', 'balance_timeline', 'projection_rebuild']
    """
    found: dict[str, dict[str, dict[str, str]]] = {}
    for directory in _notebook_dirs(notebooks_dir):
        for path in sorted(directory.glob("*.ipynb")) if directory.is_dir() else []:
            if path.stem not in found:
                found[path.stem] = notebook_parameters(path)
    return dict(sorted(found.items()))


def accepts(type_name: str, value: Any) -> bool:
    """Whether `value` fits a parameter type as `notebook_parameters` spells it.

    Types: ``str``, ``int`` (not bool), ``float`` (ints too), ``bool``, ``list[X]``, ``dict``,
    ``Optional[X]``, ``Union[X, Y]``, ``X | Y``, ``None`` and ``any``; a type name it does not
    know accepts anything (the notebook then decides).

    Example:
        >>> accepts("Optional[int]", 5), accepts("Optional[int]", None), accepts("int", "five")
        (True, True, False)
    """
    text = type_name.strip()
    alternatives = _split_top(text, "|")
    if len(alternatives) > 1:
        return any(accepts(t, value) for t in alternatives)
    head, inner = _generic(text)
    if head in ("Optional", "typing.Optional"):
        return value is None or accepts(inner[0] if inner else "any", value)
    if head in ("Union", "typing.Union"):
        return any(accepts(t, value) for t in inner)
    if head in ("list", "List", "tuple", "Sequence"):
        return isinstance(value, list | tuple) and all(
            accepts(inner[0] if inner else "any", v) for v in value
        )
    if head in ("dict", "Dict", "Mapping"):
        return isinstance(value, dict)
    simple: dict[str, Any] = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "None": lambda v: v is None,
        "NoneType": lambda v: v is None,
    }
    check = simple.get(head)
    return True if check is None else bool(check(value))


def parse_parameters(
    pairs: Iterable[tuple[str, str]], declared: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, Any]:
    """Command-line ``-p key value`` pairs as typed values: JSON when it parses, else text.

    With `declared` (from `notebook_parameters`), a value whose JSON reading does not fit its
    parameter's type but whose text does stays text: ``-p until 2024`` for a ``str`` parameter
    is ``"2024"``, not the number.

    Example:
        >>> parse_parameters([("top_n", "5"), ("user_ids", '["1", "2"]'), ("every", "1d"),
        ...                   ("since", "null")])
        {'top_n': 5, 'user_ids': ['1', '2'], 'every': '1d', 'since': None}
    """
    parsed: dict[str, Any] = {}
    for key, raw in pairs:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None if raw == "None" else raw
        wanted = (declared or {}).get(key, {}).get("type")
        if wanted is not None and not accepts(wanted, value) and accepts(wanted, raw):
            value = raw
        parsed[key] = value
    return parsed


def read_parameters_file(path: str | Path) -> dict[str, Any]:
    """Parameters from a YAML (or JSON) file holding one mapping, as papermill's ``-f`` reads.

    Example:
        >>> read_parameters_file("params.yaml")  # doctest: +SKIP
        {'top_n': 5, 'resample': '1w'}
    """
    import yaml

    file = Path(path)
    try:
        loaded = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(f"cannot read the parameters file {file}: {e}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise ReportError(
            f"the parameters file {file} must hold one mapping of parameter names to values "
            f"(such as 'top_n: 5'), got {type(loaded).__name__}"
        )
    return loaded


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


# --- verifying -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadCheck:
    """One recorded read, re-done against the lake."""

    filters: dict[str, Any]
    expected_digest: str
    actual_digest: str
    expected_count: int
    actual_count: int
    history_unchanged: bool | None

    @property
    def matches(self) -> bool:
        """True when the lake still answers the read with the same events."""
        return self.expected_digest == self.actual_digest


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Whether a report still matches its data and its files.

    Attributes:
        matches: every recorded read yields the same digest from the lake today.
        files_intact: the executed notebook and the HTML hash as when written.
        checks: one per recorded read.
        problems: human-readable reasons, empty when all is well.
    """

    manifest_path: Path
    lake: Path
    matches: bool
    files_intact: bool
    checks: tuple[ReadCheck, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Data and files both as recorded."""
        return self.matches and self.files_intact

    def __str__(self) -> str:
        if self.ok:
            reads = sum(c.expected_count for c in self.checks)
            return f"OK: {self.manifest_path} matches {self.lake} ({reads:,} events re-read)"
        return "MISMATCH: " + "; ".join(self.problems)


def verify_manifest(path: str | Path, *, lake: str | Path | None = None) -> VerifyResult:
    """Re-read what a report read and say whether its data (and files) are unchanged.

    Args:
        path: a report's ``manifest.json`` (or its directory); or a notebook executed by plain
            papermill, whose read records are checked the same way (it has no file hashes).
        lake: the lake to check against (default: the lake path recorded).

    Example:
        >>> print(verify_manifest("reports/balance_timeline/20250101T000000Z/manifest.json"))
        ... # doctest: +SKIP
        OK: ... matches ... (1,234 events re-read)
    """
    from esworkbench.lake import Lake

    manifest_path = Path(path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / "manifest.json"
    try:
        document = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read report manifest {manifest_path}: {e}") from e
    if manifest_path.suffix == ".ipynb":
        reads = reads_in_notebook(document)
        manifest: dict[str, Any] = {"lake": {"path": reads[0].lake if reads else ""}}
    else:
        manifest = document
        reads = [ReadRecord.from_json(r) for r in manifest.get("reads", [])]
    lake_path = Path(lake) if lake is not None else Path(manifest["lake"]["path"])
    if not lake_path.is_file():
        raise ReportError(
            f"the lake {lake_path} of {manifest_path} does not exist; pass "
            "lake= (or --lake) to check against a copy"
        )
    problems: list[str] = []
    if not reads:
        problems.append("the manifest records no reads, so there is nothing to verify")
    checks = []
    with Lake(lake_path, read_only=True) as opened:
        for record in reads:
            filters = record.lake_filters()
            actual = opened.digest(**filters)
            count = record.event_count
            pinned = None
            if actual != record.digest and record.last_position is not None:
                # Same filters up to the last position read: tells new events from changed ones.
                pinned_filters = {
                    **filters,
                    "to_position": min(
                        record.last_position, filters.get("to_position", record.last_position)
                    ),
                }
                pinned = opened.digest(**pinned_filters) == record.digest
                count = opened.read_events(**filters).height
            checks.append(
                ReadCheck(record.filters, record.digest, actual, record.event_count, count, pinned)
            )
    for check in checks:
        if check.matches:
            continue
        what = (
            "events were added in scope; the events read are unchanged"
            if check.history_unchanged
            else "events the report read were changed or removed"
        )
        problems.append(
            f"read {json.dumps(check.filters)}: digest {check.actual_digest} != "
            f"recorded {check.expected_digest} ({check.actual_count:,} events now, "
            f"{check.expected_count:,} then; {what})"
        )
    files_intact = True
    for name, digest in manifest.get("files", {}).items():
        file = manifest_path.parent / name
        if not file.exists() or _sha256(file) != digest:
            files_intact = False
            problems.append(f"{name} is missing or was modified since the report was written")
    matches = bool(reads) and all(c.matches for c in checks)
    return VerifyResult(
        manifest_path, lake_path, matches, files_intact, tuple(checks), tuple(problems)
    )


# --- helpers -------------------------------------------------------------------------------


def _notebook_path(name: str | Path, notebooks_dir: str | Path | None = None) -> Path:
    candidate = Path(name)
    if candidate.suffix == ".ipynb":
        if not candidate.exists():
            raise ReportError(f"notebook {candidate} does not exist")
        return candidate.resolve()
    dirs = _notebook_dirs(notebooks_dir)
    # A name is a file name inside the report directories: "../x" or "sub/x" would run a
    # notebook from elsewhere (a path to an .ipynb file is the way to do that on purpose).
    if candidate.name != str(name) or candidate.name in ("", ".", ".."):
        raise ReportError(
            f"report name {str(name)!r} is not a plain name: give the name of a notebook in "
            f"{[str(d) for d in dirs]}, or the path of an .ipynb file"
        )
    for directory in dirs:
        if (directory / f"{name}.ipynb").exists():
            return (directory / f"{name}.ipynb").resolve()
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.ipynb")})
    raise ReportError(
        f"no report notebook named {str(name)!r} in {[str(d) for d in dirs]}; "
        f"known reports: {known or 'none'}"
    )


def _notebook_dirs(notebooks_dir: str | Path | None) -> list[Path]:
    if notebooks_dir is not None:
        return [Path(notebooks_dir)]
    return [Path("notebooks"), NOTEBOOKS_DIR]


def _declared_type(annotation: Any, default: str) -> str:
    """The type of a parameter: its annotation, else the type of its default's value."""
    if annotation not in (None, "None", ""):
        return str(annotation)
    try:
        value = ast.literal_eval(default)
    except (ValueError, SyntaxError):
        return "any"  # an expression (a call, a name): nothing to check against
    if value is None:
        return "any"
    return type(value).__name__


def _generic(text: str) -> tuple[str, list[str]]:
    """``"Optional[list[str]]"`` -> ``("Optional", ["list[str]"])``."""
    if text.endswith("]") and "[" in text:
        head, _, rest = text.partition("[")
        return head.strip(), _split_top(rest[:-1], ",")
    return text, []


def _split_top(text: str, sep: str) -> list[str]:
    """Split at `sep` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _prepare_parameters(
    notebook: Path, lake: str | Path, given: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """(parameters to inject, environment for the kernel, parameters for the manifest)."""
    declared = notebook_parameters(notebook)
    wanted = {"lake": str(lake), **given}
    unknown = sorted(set(wanted) - set(declared))
    if unknown:
        valid = "; ".join(
            f"{k} ({v['type']}, default {v['default']}{': ' + v['help'] if v['help'] else ''})"
            for k, v in sorted(declared.items())
        )
        raise ReportError(
            f"unknown parameter(s) {unknown} for report {notebook.stem!r}; "
            f"valid parameters: {sorted(declared)}. {valid}"
        )
    mismatched = [
        f"{key} must be {declared[key]['type']} (default {declared[key]['default']}), got "
        f"{_mask(value)!r} ({type(value).__name__})"
        for key, value in wanted.items()
        if not accepts(declared[key]["type"], value)
    ]
    if mismatched:
        raise ReportError(
            f"parameter(s) of report {notebook.stem!r} with the wrong type: "
            f"{'; '.join(mismatched)}. On the command line, values are read as JSON "
            '(5, 2.5, true, null, ["1", "2"]) and anything else is text'
        )
    injected: dict[str, Any] = {}
    env: dict[str, str] = {}
    for key, value in wanted.items():
        if isinstance(value, str) and mask_uri(value) != value:
            if URI_ENV in env and env[URI_ENV] != value:
                raise ReportError(
                    "only one URI with a password can be passed to a report; "
                    f"put the others' credentials in {URI_ENV} yourself"
                )
            env[URI_ENV] = value
            injected[key] = mask_uri(value)
        elif _mask(value) != value:
            raise ReportError(
                f"parameter {key!r} holds a password inside a "
                f"{type(value).__name__}; pass the URI as a plain string value"
            )
        else:
            injected[key] = value
    return injected, env, {k: _mask(v) for k, v in injected.items()}


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


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_uri(value)
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    return value


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
