"""Opening a lake's DuckDB file: waiting for another process's lock, naming its holder (private).

DuckDB lets one process write a file, or several read it, at a time. A scheduled sync and an
analyst's notebook meet here: the opener waits (saying once for whom) instead of failing, and
tells a lock from a permission problem.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from esworkbench.errors import LakeError

__all__ = ["DEFAULT_LOCK_TIMEOUT", "connect", "permission_error"]

# Seconds to wait for another process to let go of the lake before giving up: long enough for
# a scheduled sync to finish its batch, short enough that a forgotten notebook is noticed.
DEFAULT_LOCK_TIMEOUT = 60.0
# DuckDB's lock error names the holder: '... Conflicting lock is held in /usr/bin/python3
# (PID 1234) by user ann. ...' (the user part is missing on some platforms).
_HOLDER = re.compile(
    r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)"
    r"(?P<user> by user \S+?)?[.;]?(?:\s|$)"
)


def connect(
    path: Path, read_only: bool, timeout: float, on_wait: Callable[[str], None] | None
) -> duckdb.DuckDBPyConnection:
    """Connect, waiting for another process's lock up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    said = False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            text = str(e)
            if "Permission denied" in text or "Read-only file system" in text:
                raise permission_error(path, read_only, text) from e
            if "lock" not in text.lower():
                raise LakeError(f"cannot open the lake {path}: {text}") from e
            holder = _holder(text)
            if time.monotonic() >= deadline:
                raise LakeError(
                    f"the lake {path} is still locked by {holder} after {timeout:g}s: DuckDB "
                    "lets one process write a lake, or several read it, at a time. Let that "
                    "process finish, or close the lake there (leave its `with Lake(...)` block, "
                    "call lake.close(), or restart a notebook kernel holding it), then retry"
                ) from e
            if not said:
                message = (
                    f"waiting for the lake {path}: it is locked by {holder} (up to {timeout:g}s)"
                )
                if on_wait is None:
                    print(message, file=sys.stderr, flush=True)
                else:
                    on_wait(message)
                said = True
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 1.0)
        except duckdb.ConnectionException as e:
            # The same process already holds the file open in the other mode: waiting cannot help.
            raise LakeError(
                f"cannot open the lake {path} {'read-only' if read_only else 'for writing'}: this "
                f"process already has it open in the other mode ({e}). Close that Lake first"
            ) from e


def _holder(text: str) -> str:
    m = _HOLDER.search(text)
    if m is None:
        return "another process"
    user = f", user {m['user'].removeprefix(' by user ')}" if m["user"] else ""
    return f"PID {m['pid']} ({m['program']}{user})"


def permission_error(path: Path, read_only: bool, detail: str) -> LakeError:
    if read_only:
        fix = "give this user read access to it (chmod u+r), or copy it somewhere readable"
    else:
        fix = (
            "give this user write access to the file and its directory (chmod u+w), or read it "
            "with read_only=True (commands that only read open it that way)"
        )
    return LakeError(
        f"no permission to {'read' if read_only else 'write'} the lake {path} (this is not a "
        f"lock: {detail}): {fix}"
    )
