"""State values as Arrow columns, and batch timelines joined into one (private to fold).

Money stays exact: Decimal values become ``decimal128(38, scale)`` columns, widened when a
later batch needs more scale; a column whose type differs between batches takes the type
that holds both.

``StateColumns`` also says which fields each event changed. The definition is the one of
Python: a field changed when its value after the event is not the one before it
(``new is not old and new != old``). For columns of one plain type (text, int, bool, money)
Arrow compares each row with the one before in a single kernel, which means the same thing
for those types; any other column is compared value by value in Python.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CHANGED", "StateColumns", "to_arrow", "unify"]

# The timeline column listing the state fields each event changed (always the last column).
CHANGED = "changed"


def to_arrow(values: Sequence[Any], types: set[type] | None = None) -> pa.Array:
    """Python state values as one Arrow array; money stays exact (decimal128(38, scale)).

    `types`: the set of the values' types, when the caller has it already.
    """
    if types is None:
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
    # The scale of the first value is the column's in the usual case (money with two places
    # everywhere): pyarrow then converts the Decimals directly, and refuses (never rounds) any
    # value that needs more scale or precision, which sends the column down the general path.
    first = next((v for v in values if v is not None), None)
    if first is None:
        return None
    exponent = first.as_tuple().exponent
    if type(exponent) is int and -38 <= exponent <= 0:
        try:
            return pa.array(values, type=pa.decimal128(38, -exponent))
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
            pass
    return _decimals_from_text(values, has_none=has_none)


def _decimals_from_text(values: Sequence[Decimal | None], *, has_none: bool) -> pa.Array | None:
    # pyarrow converts Decimal objects of unknown scale one by one at ~1 us each; through their
    # text, measured by Arrow kernels, it is ~5x faster. Arrow's text cast does not check
    # overflow, so precision is checked here. None: not representable, let the generic path
    # decide.
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


State = tuple[tuple[str, ...], tuple[Any, ...]]


class StateColumns:
    """The state after every timeline row of a batch, as Arrow columns, and what each changed.

    Args:
        names: per row, the state's field names (the same tuple object while they stay the
            same).
        values: per row, the state's values, in the order of `names`.
        starts: per stream, the row its timeline starts at (a stream stopped before its first
            row starts where the next one does).
        initial: per stream, the (names, values) of its fresh aggregate.
    """

    def __init__(
        self,
        names: list[tuple[str, ...]],
        values: list[tuple[Any, ...]],
        starts: list[int],
        initial: list[State],
    ) -> None:
        self._names = names
        self._values = values
        # The streams that have a first row, with the state that row is measured against.
        ends = [*starts[1:], len(values)]
        self._firsts = [
            (start, fresh)
            for start, end, fresh in zip(starts, ends, initial, strict=True)
            if start < end
        ]
        first = names[0] if names else ()
        self._uniform = all(n is first for n in names) and all(
            fresh_names == first for _, (fresh_names, _) in self._firsts
        )
        self._fields = first if self._uniform else _union(names)
        self._python: list[Sequence[Any]] = []
        self._types: list[set[type]] = []
        self._arrow: list[pa.Array] = []

    def columns(self) -> dict[str, pa.Array]:
        """One Arrow column per state field, named by the field."""
        if not self._arrow:
            self._python = self._by_field()
            self._types = [set(map(type, column)) for column in self._python]
            self._arrow = [
                to_arrow(column, types)
                for column, types in zip(self._python, self._types, strict=True)
            ]
        return dict(zip(self._fields, self._arrow, strict=True))

    def changed(self) -> pa.Array:
        """The `changed` column: per row, the fields whose value the event changed."""
        if not self._uniform:
            return _lists([_changed_fields(*pair) for pair in self._pairs()])
        self.columns()
        rows = len(self._values)
        matrix = np.zeros((rows, len(self._fields)), dtype=np.bool_)
        columns = zip(self._python, self._types, self._arrow, strict=True)
        for index, (python, types, arrow) in enumerate(columns):
            column = matrix[:, index]
            if rows > 1:
                column[1:] = _differs(python, types, arrow)
            for start, (_, fresh) in self._firsts:
                new, old = python[start], fresh[index]
                column[start] = new is not old and new != old
        return _masks_to_lists(matrix, self._fields)

    def _by_field(self) -> list[Sequence[Any]]:
        if self._uniform:
            # Column by column through one C-level getter each (zip(*rows) would make an
            # iterator per row).
            return [
                list(map(operator.itemgetter(i), self._values)) for i in range(len(self._fields))
            ]
        # The aggregate grew or shed fields along the way: line rows up by name.
        rows = [
            dict(zip(n, v, strict=True)) for n, v in zip(self._names, self._values, strict=True)
        ]
        return [[row.get(field) for row in rows] for field in self._fields]

    def _pairs(self) -> list[tuple[State, State]]:
        """Per row, (the state before it, the state after it)."""
        after: list[State] = list(zip(self._names, self._values, strict=True))
        # Each row's predecessor; the first row of each stream (row 0 among them) gets its
        # fresh aggregate's state instead.
        before = after[:1] + after[:-1]
        for start, fresh in self._firsts:
            before[start] = fresh
        return list(zip(before, after, strict=True))


def _union(names: list[tuple[str, ...]]) -> tuple[str, ...]:
    fields: dict[str, None] = {}
    for n in dict.fromkeys(names):
        fields.update(dict.fromkeys(n))
    return tuple(fields)


def _changed_fields(before: State, after: State) -> list[str]:
    previous = dict(zip(*before, strict=True))
    changed = [
        key
        for key, value in zip(*after, strict=True)
        if (old := previous.get(key, _MISSING)) is _MISSING or (value is not old and value != old)
    ]
    changed.extend(key for key in previous if key not in after[0])
    return changed


_MISSING = object()

# Python types whose values Arrow compares exactly as Python does, with the Arrow type they
# must have come out as (anything else, e.g. an int too wide for int64, became text).
_COMPARABLE: dict[type, Any] = {
    str: pa.types.is_string,
    int: pa.types.is_integer,
    bool: pa.types.is_boolean,
    Decimal: pa.types.is_decimal,
}


def _differs(python: Sequence[Any], types: set[type], arrow: pa.Array) -> np.ndarray[Any, Any]:
    """Per row after the first: does its value differ from the row before? (Python's !=)."""
    kinds = types - {type(None)}
    check = _COMPARABLE.get(next(iter(kinds))) if len(kinds) == 1 else None
    if check is not None and check(arrow.type):
        new, old = arrow.slice(1), arrow.slice(0, len(arrow) - 1)
        # Null-aware: two nulls are equal, a null beside a value is a change.
        differs = pc.fill_null(pc.not_equal(new, old), pc.xor(new.is_null(), old.is_null()))
        # As bytes, which NumPy takes without a copy (and without importing pandas).
        flags: np.ndarray[Any, Any] = differs.cast(pa.uint8()).to_numpy().view(np.bool_)
        return flags
    return np.fromiter(
        (new is not old and new != old for new, old in zip(python[1:], python, strict=False)),
        dtype=np.bool_,
        count=len(python) - 1,
    )


def _masks_to_lists(matrix: np.ndarray[Any, Any], fields: tuple[str, ...]) -> pa.Array:
    """Rows of a changed-or-not matrix as lists of field names (each distinct row made once)."""
    rows, width = matrix.shape
    if rows == 0 or width == 0:
        return pa.array([[]] * rows, type=pa.list_(pa.string()))
    if width <= 64:
        # Each row as one 64-bit mask: finding the few distinct rows is then a 1-D unique.
        masks = np.zeros(rows, dtype=np.uint64)
        for bit in range(width):
            masks |= matrix[:, bit].astype(np.uint64) << np.uint64(bit)
        distinct, index = np.unique(masks, return_inverse=True)
        lists = [[f for bit, f in enumerate(fields) if int(mask) >> bit & 1] for mask in distinct]
    else:
        packed, index = np.unique(np.packbits(matrix, axis=1), axis=0, return_inverse=True)
        lists = [
            [f for f, bit in zip(fields, np.unpackbits(row)[:width], strict=True) if bit]
            for row in packed
        ]
    return pa.array(lists, type=pa.list_(pa.string())).take(pa.array(index.ravel()))


def _lists(changes: list[list[str]]) -> pa.Array:
    """The `changed` column: few distinct lists, each converted once, then taken per row."""
    distinct: dict[tuple[str, ...], int] = {}
    index = [distinct.setdefault(tuple(c), len(distinct)) for c in changes]
    lists = pa.array([list(c) for c in distinct], type=pa.list_(pa.string()))
    return lists.take(pa.array(index, type=pa.int32()))


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
