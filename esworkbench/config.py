"""One frozen Settings: explicit arguments, then ``ESWORKBENCH_*`` environment, then defaults.

Validated when built; an invalid value names the variable and the valid choices. Credentials in
an EventStoreDB URI never leave this module unmasked: use ``mask_uri`` for anything printed,
logged or stored.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from esworkbench.errors import ConfigError

__all__ = [
    "DEMO_LAKE",
    "LAKE_ENV",
    "Reader",
    "Settings",
    "check_esdb_uri",
    "esdbclient_uri",
    "mask_uri",
    "project_root",
    "resolve_lake_path",
]

Reader = Literal["fast", "plain"]

_PREFIX = "ESWORKBENCH_"
LAKE_ENV = "ESWORKBENCH_LAKE"
# The lake `make demo` (esworkbench demo) builds, relative to the project root: the default
# of the report notebooks and of every setting that names a lake.
DEMO_LAKE = Path("data/lake/demo.duckdb")
# A directory holding one of these is a project root (where data/ and reports/ live).
_ROOT_MARKERS = ("pyproject.toml", ".git")
_ESDB_SCHEMES = ("esdb", "esdb+discover")
_KURRENT_SCHEMES = ("kurrentdb", "kurrentdb+discover")
_EXAMPLE_URI = "esdb://127.0.0.1:2113?tls=false"
# A well-formed URI: scheme://[user[:password]@]rest, where rest (hosts, path, query) holds no
# '@'. A password may hold anything but the characters that end the authority ('@/?#') and
# line breaks; whatever does not fit this shape is masked by the fallback in mask_uri.
_WELL_FORMED = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://"
    r"(?:(?P<user>[^:@/?#\s]*)(?P<password>:[^@/?#\r\n]*)?@)?"
    r"(?P<rest>[^@\s]*)"
)
_LEADING_SPACE = re.compile(r"\s*")
# Where a malformed URI's user name starts: after a scheme with its slashes (typos such as
# 'esdb:/' included), or after a known scheme written without slashes ('esdb:').
_SCHEME_PREFIX = re.compile(
    r"\s*(?:[A-Za-z][A-Za-z0-9+.\-]*:[/\\]+|(?:esdb|kurrentdb)(?:\+discover)?:)", re.IGNORECASE
)


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by '***' (user names stay: they help debugging).

    A well-formed URI is parsed. Anything else that holds an '@' (a password with '/' or '@'
    in it, leading whitespace, an 'esdb:/' typo, a URI inside a message) has everything from
    the first ':' after the scheme and user name up to the last '@' masked: too much rather
    than too little. Masking a masked URI changes nothing.

    Example:
        >>> mask_uri("esdb://admin:changeit@localhost:2113?tls=true")
        'esdb://admin:***@localhost:2113?tls=true'
        >>> mask_uri("esdb://admin:pa/ss@word@localhost:2113")
        'esdb://admin:***@localhost:2113'
        >>> mask_uri("esdb:/admin:changeit@localhost:2113")
        'esdb:/admin:***@localhost:2113'
    """
    lead = _LEADING_SPACE.match(uri)
    start = lead.end() if lead else 0
    m = _WELL_FORMED.fullmatch(uri.rstrip(), start)
    if m is not None:
        if m["password"] is None:
            return uri
        return f"{uri[: m.start('password')]}:***{uri[m.end('password') :]}"
    at = uri.rfind("@")
    if at < 0:
        return uri
    prefix = _SCHEME_PREFIX.match(uri, 0, at)
    user_start = prefix.end() if prefix else 0
    colon = uri.find(":", user_start, at)
    if colon < 0:
        # What looked like a scheme may be a user and its password ('a:/@host'): mask from
        # the first ':' then. Only a string with no ':' before its '@' is left as it is.
        colon = uri.find(":", 0, at)
        if colon < 0:
            return uri
    return f"{uri[:colon]}:***{uri[at:]}"


def check_esdb_uri(uri: str, *, name: str = "the connection string") -> str:
    """``uri`` if it is an EventStoreDB connection string esdbclient reads as meant.

    ``kurrentdb://`` and ``kurrentdb+discover://`` (KurrentDB's names for the same protocol) are
    accepted; `esdbclient_uri` translates them for the client.

    Args:
        uri: The connection string.
        name: What to call it in the error (a setting, an argument).

    Raises:
        ConfigError: It is not one; the message shows it with the password masked.

    Example:
        >>> check_esdb_uri("esdb://admin:changeit@db:2113?tls=true")
        'esdb://admin:changeit@db:2113?tls=true'
        >>> check_esdb_uri("kurrentdb://db:2113?tls=false")
        'kurrentdb://db:2113?tls=false'
    """
    shown = repr(mask_uri(uri))
    if uri != uri.strip():
        raise ConfigError(f"{name} starts or ends with whitespace: remove it (got {shown})")
    m = _WELL_FORMED.fullmatch(uri)
    schemes = (*_ESDB_SCHEMES, *_KURRENT_SCHEMES)
    if m is None and "@" in uri and uri.lower().startswith(tuple(s + "://" for s in schemes)):
        raise ConfigError(
            f"{name} has a user name or password holding '@', '/', '?', '#' or a line break, "
            "which a connection string cannot carry (the client would read part of the "
            f"password as the host): use a password without them (got {shown})"
        )
    if m is None or m["scheme"].lower() not in schemes:
        raise ConfigError(
            f"{name} must start with esdb://, esdb+discover://, kurrentdb:// or "
            f"kurrentdb+discover:// (an EventStoreDB connection string such as "
            f"{_EXAMPLE_URI!r}), got {shown}"
        )
    if m["scheme"] not in schemes:
        raise ConfigError(
            f"{name} has the scheme {m['scheme']}://, which the client reads only in lower "
            f"case: write it as {m['scheme'].lower()}://... (got {shown})"
        )
    return uri


def esdbclient_uri(uri: str) -> str:
    """The connection string as esdbclient reads it: ``kurrentdb`` schemes become ``esdb``.

    KurrentDB is EventStoreDB renamed; its clients take ``kurrentdb://`` for what esdbclient
    calls ``esdb://``, with the same hosts and options. Mask the result like the input: the
    password is kept.

    Example:
        >>> esdbclient_uri("kurrentdb+discover://admin:changeit@db:2113")
        'esdb+discover://admin:changeit@db:2113'
        >>> esdbclient_uri("esdb://db:2113?tls=false")
        'esdb://db:2113?tls=false'
    """
    scheme, sep, rest = uri.partition("://")
    if sep and scheme in _KURRENT_SCHEMES:
        return scheme.replace("kurrentdb", "esdb") + sep + rest
    return uri


def project_root(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The project root: the nearest directory at or above `start` with a pyproject.toml or .git.

    That is where ``data/`` and ``reports/`` live; `start` defaults to the working directory.
    None outside a project.

    Example:
        >>> (project_root() or Path(".")).joinpath("pyproject.toml").exists()  # doctest: +SKIP
        True
    """
    here = Path.cwd() if start is None else Path(start).resolve()
    for directory in (here, *here.parents):
        if any((directory / marker).exists() for marker in _ROOT_MARKERS):
            return directory
    return None


def resolve_lake_path(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Path:
    """Where a lake path given to a read points, wherever the reader runs from.

    A path that exists as given (or is absolute) is used as it is. A relative one that does
    not exist from the working directory, such as a notebook's default
    ``data/lake/demo.duckdb`` read by a kernel started in ``notebooks/``, is looked up:

    1. ``ESWORKBENCH_LAKE``, when set: the lake you chose for every run;
    2. the same relative path under the project root (see `project_root`).

    Otherwise the path is returned as given, and opening it says how to make a lake.

    Args:
        path: the lake path as written.
        environ: the environment to read (default: ``os.environ``).
        cwd: the working directory to resolve from (default: the current one).

    Example:
        >>> resolve_lake_path("/srv/lakes/bank.duckdb")
        PosixPath('/srv/lakes/bank.duckdb')
    """
    env = os.environ if environ is None else environ
    given = Path(path).expanduser()
    base = Path.cwd() if cwd is None else Path(cwd)
    if given.is_absolute() or (base / given).exists():
        return given if cwd is None or given.is_absolute() else base / given
    chosen = env.get(LAKE_ENV, "").strip()
    if chosen:
        lake = Path(chosen).expanduser()
        if lake.is_absolute() or (base / lake).exists():
            return lake if cwd is None or lake.is_absolute() else base / lake
        given = lake
    root = project_root(base)
    if root is not None and (root / given).exists():
        return root / given
    return given if cwd is None else base / given


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Workbench settings.

    Example:
        >>> Settings.load(batch_size=500, environ={}).batch_size
        500
    """

    esdb_uri: str | None = None
    lake: Path = DEMO_LAKE
    reports_dir: Path = Path("reports")
    # None: the sync's own choice (a row group's worth from an archive, `DEFAULT_BATCH_SIZE`
    # from a server)
    batch_size: int | None = None
    reader: Reader = "fast"

    @classmethod
    def load(cls, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `overrides` (None = not given), then the environment, then defaults."""
        env = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(overrides) - set(fields)
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; valid: {sorted(fields)}")
        values: dict[str, Any] = {}
        for name in fields:
            if overrides.get(name) is not None:
                values[name] = overrides[name]
            elif (_PREFIX + name.upper()) in env:
                values[name] = env[_PREFIX + name.upper()]
        return cls._validated(values)

    @classmethod
    def _validated(cls, values: dict[str, Any]) -> Settings:
        def where(name: str) -> str:
            return f"{name} (or {_PREFIX}{name.upper()})"

        if "lake" in values:
            values["lake"] = Path(values["lake"])
        if "reports_dir" in values:
            values["reports_dir"] = Path(values["reports_dir"])
        if "batch_size" in values:
            try:
                values["batch_size"] = int(values["batch_size"])
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{where('batch_size')} must be a positive integer, got "
                    f"{values['batch_size']!r}"
                ) from None
            if values["batch_size"] <= 0:
                raise ConfigError(
                    f"{where('batch_size')} must be a positive integer, got {values['batch_size']}"
                )
        if "reader" in values and values["reader"] not in get_args(Reader):
            raise ConfigError(
                f"{where('reader')} must be one of {list(get_args(Reader))}, "
                f"got {values['reader']!r}"
            )
        if values.get("esdb_uri") is not None:
            check_esdb_uri(str(values["esdb_uri"]), name=where("esdb_uri"))
        return cls(**values)

    def __repr__(self) -> str:
        # Settings get printed and logged: never with the password.
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "esdb_uri" and value is not None:
                value = mask_uri(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"
