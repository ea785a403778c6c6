"""Objects named by import path, ``package.module:Name``: aggregates, rules, projections.

Example:
    >>> import_object("esworkbench.examples.bank:User", what="aggregate").stream_prefix
    'user'
"""

from __future__ import annotations

import importlib
from typing import Any

from esworkbench.errors import ConfigError

__all__ = ["import_object"]


def import_object(path: str, *, what: str, example: str = "package.module:Name") -> Any:
    """The object at `path` (``module:Name``, dots inside Name for nested attributes).

    Args:
        path: the import path.
        what: what the object is for, in error messages ("rule", "projection").
        example: an example path for the error message.

    Raises:
        ConfigError: the path is malformed, the module does not import, or has no such name.
    """
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ConfigError(
            f"{what} {path!r} is not an import path; write 'package.module:Name', e.g. {example!r}"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"cannot import {module_name!r} for {what} {path!r}: {e}; is it installed or on "
            "sys.path?"
        ) from e
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no {qualname!r} (for {what} {path!r})"
            ) from None
    return target
