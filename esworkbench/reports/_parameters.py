"""Report parameters and notebooks: what a report declares, typed and checked (private).

A report notebook declares its parameters in its one ``parameters`` cell (``name: type =
default  # help``); values are checked against those types before any kernel starts, so a
scheduled run fails in a second with the parameter named, not after minutes in a cell.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from esworkbench.config import mask_uri
from esworkbench.errors import ReportError
from esworkbench.reports._record import URI_ENV

__all__ = [
    "NOTEBOOKS_DIR",
    "accepts",
    "list_reports",
    "notebook_parameters",
    "parse_parameters",
    "read_parameters_file",
]

# The report notebooks ship inside the package, so a plain `pip install` can run every report.
NOTEBOOKS_DIR = Path(__file__).resolve().parent / "notebooks"


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


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_uri(value)
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    return value
