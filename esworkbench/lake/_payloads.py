"""The exact checks on payloads that the columnar pre-checks marked as suspect (private).

DuckDB's JSON reader is lenient where Python's `json` (and so the replay) is strict or reads
differently: it accepts trailing commas and NaN/Infinity, and of duplicate keys it reads the
first where Python reads the last. A lake that stores such a payload answers one question two
ways. So the ingest SQL marks rows that *may* be one of these with cheap columnar tests (a regex
on the text, key counts, bracket counts), and only those rows come here to be parsed in Python.

`inspect` returns either a rejection reason (the event goes to `_rejected`) or flags (the event
is kept; the flag is recorded in `_flags`), never both.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

__all__ = ["MAX_DEPTH", "SUSPECT_NUMBER_REGEX", "SUSPECT_REGEX", "depth", "inspect"]

# Deeper payloads are rejected: Python's recursive JSON reader (the replay) fails near 1,000
# levels, and 64 is what .NET's System.Text.Json (EventStoreDB's own platform) reads by default.
MAX_DEPTH = 64
# Decimals wider than DECIMAL(18, s) (more than 18 digits) are out of range for the typed views.
_MAX_DIGITS = 18
# Text the lenient reader accepts but JSON forbids, and numbers that may not fit. Matches inside
# strings are false alarms that `inspect` clears. Checked on every payload: trailing commas, and
# 19+ digits in a row or split by a dot (any number or decimal string wider than _MAX_DIGITS).
SUSPECT_REGEX = r",\s*[\]}]|[0-9]{19}|[0-9.]{20}"
# Checked only where the payload's shape has numbers (NaN and Infinity read as DOUBLE): NaN,
# Infinity and 3-digit exponents.
SUSPECT_NUMBER_REGEX = r"(^|[\[:,])\s*[-+]?(?i:nan|inf)|[0-9][eE]\+?[0-9]{3,}\s*([,}\]]|$)"
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]')
_DECIMAL_STRING = re.compile(r'"(-?[0-9]+\.[0-9]+)"')


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


class _NonFinite(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def depth(text: str) -> int:
    """How deep the JSON text nests (strings skipped; no recursion, so any depth is measured).

    Example:
        >>> depth('{"a": [1, {"b": "]]]"}]}')
        3
    """
    level = deepest = 0
    for token in _TOKENS.finditer(text):
        c = token.group()
        if c in "[{":
            level += 1
            deepest = max(deepest, level)
        elif c in "]}":
            level -= 1
    return deepest


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen.add(key)
    return dict(pairs)


def _constant(name: str) -> NoReturn:
    raise _NonFinite(name)


def _digits(number: str) -> int:
    mantissa = re.split("[eE]", number.lstrip("-+"))[0]
    whole, _, fraction = mantissa.partition(".")
    return len(whole.lstrip("0")) + len(fraction)


def _out_of_range(number: str) -> bool:
    if re.fullmatch(r"-?[0-9]+", number):
        return not -(2**63) <= int(number) < 2**63  # beyond BIGINT
    if float(number) in (float("inf"), float("-inf")):
        return True  # beyond DOUBLE
    return "." in number and "e" not in number.lower() and _digits(number) > _MAX_DIGITS


def inspect(text: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The rejection reason of a suspect payload, or the flags it gets.

    Example:
        >>> inspect('{"amount": "5.00", "amount": "500.00"}')[0].split(":")[0]
        'duplicate_json_key'
        >>> inspect('{"amount": 1e400}')[1][0][0]
        'number_out_of_range'
        >>> inspect('{"note": "inf, nan, [1,]"}')
        (None, [])
    """
    deepest = depth(text)
    if deepest > MAX_DEPTH:
        return (
            f"too_deep: the payload nests {deepest} levels deep; the lake keeps payloads up to "
            f"{MAX_DEPTH} levels (what the replay's and .NET's JSON readers accept)",
            [],
        )
    numbers: list[str] = []

    def number(text: str) -> int:
        numbers.append(text)
        return 0

    try:
        json.loads(
            text,
            object_pairs_hook=_unique_pairs,
            parse_constant=_constant,
            parse_float=number,
            parse_int=number,
        )
    except _Duplicate as e:
        return (
            f"duplicate_json_key: the key {json.dumps(e.key)} occurs twice in one object; "
            "readers disagree on which value counts (DuckDB takes the first, Python the last), "
            "so the lake does not keep it",
            [],
        )
    except _NonFinite as e:
        return (
            f"non_finite_number: the payload holds {e.name}, which JSON does not allow "
            "(write it as null or a string)",
            [],
        )
    except (ValueError, RecursionError) as e:
        return f"malformed_json: the payload is not valid JSON ({e})", []
    wide = [n for n in numbers if _out_of_range(n)]
    wide += [s for s in _DECIMAL_STRING.findall(text) if _digits(s) > _MAX_DIGITS]
    if not wide:
        return None, []
    shown = ", ".join(w if len(w) <= 40 else w[:37] + "..." for w in wide[:3])
    return None, [
        (
            "number_out_of_range",
            f"{shown} does not fit BIGINT, DOUBLE or DECIMAL(18, s): the typed views read "
            "this event's values as NULL where they do not fit, and its payload is left out "
            "of type inference so the columns keep their types",
        )
    ]
