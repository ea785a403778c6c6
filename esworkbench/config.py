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

__all__ = ["Reader", "Settings", "mask_uri"]

Reader = Literal["fast", "plain"]

_PREFIX = "ESWORKBENCH_"
_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/]*)(:[^@/]*)?@")


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by '***' (user names stay: they help debugging).

    Example:
        >>> mask_uri("esdb://admin:changeit@localhost:2113?tls=true")
        'esdb://admin:***@localhost:2113?tls=true'
    """
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", uri, count=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Workbench settings.

    Example:
        >>> Settings.load(batch_size=500, environ={}).batch_size
        500
    """

    esdb_uri: str | None = None
    lake: Path = Path("data/lake/workbench.duckdb")
    reports_dir: Path = Path("reports")
    batch_size: int = 10_000
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
        uri = values.get("esdb_uri")
        if uri is not None and not re.match(r"^esdb(\+discover)?://", str(uri)):
            raise ConfigError(
                f"{where('esdb_uri')} must be an EventStoreDB connection string such as "
                f"'esdb://127.0.0.1:2113?tls=false', got {mask_uri(str(uri))!r}"
            )
        return cls(**values)
