"""State values as Arrow columns, and batch timelines joined into one (private to fold).

Money stays exact: Decimal values become ``decimal128(38, scale)`` columns, widened when a
later batch needs more scale; a column whose type differs between batches takes the type
that holds both.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CHANGED", "to_arrow", "unify"]

# The timeline column listing the state fields each event changed (always the last column).
CHANGED = "changed"


def to_arrow(values: Sequence[Any]) -> pa.Array:
    """Python state values as one Arrow array; money stays exact (decimal128(38, scale))."""
    types = set(map(type, values))
    if types <= _DECIMAL_OR_NONE:
        decimals = _decimals(values, has_none=type(None) in types)
        if decimals is not None:
            return decimals
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        # Mixed or opaque values (an object, a float beside a Decimal): keep them readable.
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if pa.types.is_decimal(array.type):
        return _widen_decimal(array)
    return array


_DECIMAL_OR_NONE = frozenset({Decimal, type(None)})


def _decimals(values: Sequence[Decimal | None], *, has_none: bool) -> pa.Array | None:
    # pyarrow converts Decimal objects one by one at ~3 us each; through their text, measured
    # by Arrow kernels, it is ~10x faster. Arrow's text cast does not check overflow, so
    # precision is checked here. None: not representable, let the generic path decide.
    strings = (
        [None if v is None else str(v) for v in values] if has_none else list(map(str, values))
    )
    text = pa.array(strings, type=pa.string())
    if text.null_count == len(text):
        return None
    if pc.any(pc.match_substring_regex(text, r"[^0-9.\-]")).as_py():
        return _decimals_exotic(values)  # exponent notation, NaN, infinity
    dot = pc.find_substring(text, ".")
    length = pc.utf8_length(text)
    has_dot = pc.greater_equal(dot, 0)
    scale = pc.max(pc.if_else(has_dot, pc.subtract(pc.subtract(length, dot), 1), 0)).as_py()
    whole = pc.max(
        pc.subtract(pc.if_else(has_dot, dot, length), pc.starts_with(text, "-").cast(pa.int32()))
    ).as_py()
    if whole + scale > 38:
        return None
    return text.cast(pa.decimal128(38, scale))


def _decimals_exotic(values: Sequence[Decimal | None]) -> pa.Array | None:
    scale = whole = 0
    for value in values:
        if value is None:
            continue
        _, digits, exponent = value.as_tuple()
        if type(exponent) is not int:
            return None  # NaN or infinity: no decimal128 holds them
        scale = max(scale, -exponent)
        whole = max(whole, len(digits) + exponent)
    if whole + scale > 38:
        return None
    return pa.array(values).cast(pa.decimal128(38, scale))


def _widen_decimal(array: pa.Array) -> pa.Array:
    # Inferred precision depends on the values in each batch; one wide type keeps every batch,
    # and every run, the same dtype. Past 38 digits only text is exact.
    digits = array.type.precision - array.type.scale
    scale = max(array.type.scale, 0)
    if digits + scale > 38 or pa.types.is_decimal256(array.type):
        return pa.array(
            [None if v is None else str(v) for v in array.to_pylist()], type=pa.string()
        )
    return array.cast(pa.decimal128(38, scale))


def unify(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate batch timelines whose state columns differ in presence or inferred type."""
    names: dict[str, None] = {}
    for table in tables:
        names.update(dict.fromkeys(table.column_names))
    # `changed` always comes last, after every state field any batch has seen.
    names.pop(CHANGED, None)
    names[CHANGED] = None
    types: dict[str, pa.DataType] = {}
    for name in names:
        seen = [t.schema.field(name).type for t in tables if name in t.column_names]
        types[name] = _common_type(seen)
    out = []
    for table in tables:
        columns = []
        for name, typ in types.items():
            if name not in table.column_names:
                columns.append(pa.nulls(table.num_rows, type=typ))
            else:
                columns.append(_cast(table.column(name), typ))
        out.append(pa.table(columns, names=list(types)))
    return pa.concat_tables(out)


def _common_type(seen: list[pa.DataType]) -> pa.DataType:
    distinct = list(dict.fromkeys(seen))
    if len(distinct) == 1:
        return distinct[0]
    try:
        schemas = [pa.schema([pa.field("x", t)]) for t in distinct]
        common = pa.unify_schemas(schemas, promote_options="permissive").field("x").type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.string()
    if pa.types.is_decimal(common):
        common = pa.decimal128(38, max(common.scale, 0))
    return common


def _cast(column: pa.ChunkedArray, typ: pa.DataType) -> pa.ChunkedArray:
    if column.type == typ:
        return column
    try:
        return column.cast(typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.chunked_array(
            [pa.array([None if v is None else str(v) for v in column.to_pylist()], type=typ)]
        )
