"""The engine's fast decoding gives exactly what the reference decoding gives."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgspec
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

from esworkbench.aggregates import AggregateRoot, DomainEvent
from esworkbench.events import EventRegistry
from esworkbench.examples.bank import User
from esworkbench.examples.bank.sample import generate
from esworkbench.fold import _engine as engine
from esworkbench.fold import replay
from esworkbench.fold._columns import StateColumns
from esworkbench.lake import Lake, sync
from esworkbench.sources.files import TableSource

BANK = "esworkbench.examples.bank:User"


def _fold_both(
    table: pa.Table, monkeypatch: pytest.MonkeyPatch
) -> tuple[engine.BatchResult, engine.BatchResult]:
    fast = engine.fold_batch(table, User, "skip")
    with monkeypatch.context() as m:
        m.setattr(engine._FastDecoder, "__call__", lambda self, *args: None)
        reference = engine.fold_batch(table, User, "skip")
    return fast, reference


# JSON text as hostile writers produce it: numbers too wide for 64 bits, floats, nesting,
# NaN, lone surrogates, duplicate keys, not an object, not JSON at all.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["12.50", "0.10", "-3.00", "1e3", "12.5", "7.001", " 4.00"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def _json_text(draw: st.DrawFn, keys: list[str]) -> str:
    kind = draw(st.sampled_from(["object", "object", "object", "raw", "array"]))
    if kind == "raw":
        return draw(
            st.sampled_from(["", "{", "nul", '{"a":1,"a":2}', '{"x": NaN}', '"\\ud800"', "{}"])
        )
    obj = {k: draw(_values) for k in draw(st.lists(st.sampled_from(keys), max_size=len(keys)))}
    text = json.dumps(obj if kind == "object" else [obj], ensure_ascii=draw(st.booleans()))
    return text


_PAYLOAD_KEYS = ["userId", "amount", "newBalance", "name", "fullName", "email", "overdraftLimit"]
_META_KEYS = ["schemaVersion", "$correlationId", "occurredAt"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["UserCreated", "BalanceDeposited", "BalanceWithdrawn", "Nope"]),
            _json_text(_PAYLOAD_KEYS),
            st.one_of(
                _json_text(_META_KEYS),
                st.sampled_from(
                    ['{"schemaVersion":1}', '{"schemaVersion":2}', '{"schemaVersion":1.0}']
                ),
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_fast_decoding_equals_the_reference_on_hostile_payloads(
    events: list[tuple[str, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table([("user-1", i, *e) for i, e in enumerate(events)])
    fast, reference = _fold_both(table, monkeypatch)
    assert fast.timeline.equals(reference.timeline)
    assert fast.findings.equals(reference.findings)


def test_fast_decoding_equals_the_reference_on_the_sample_ledger(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The sample holds legacy payload versions, ledger drift, rejected and broken events.
    path = tmp_path / "lake.duckdb"
    with Lake(path) as lake:
        sync(TableSource(generate(users=40, seed=3, days=60).to_arrow(), name="s"), lake)
    fast = replay(path, BANK)
    with monkeypatch.context() as m:
        m.setattr(engine._FastDecoder, "__call__", lambda self, *args: None)
        reference = replay(path, BANK)
    assert fast.timeline.equals(reference.timeline)
    assert fast.findings.equals(reference.findings)
    assert fast.findings.height > 0


@given(text=_json_text(_PAYLOAD_KEYS))
def test_what_the_fast_reader_parses_is_what_json_reads(text: str) -> None:
    try:
        got = engine._read_json(text)
    except msgspec.DecodeError:
        return  # refused: the event takes the reference path
    # Same values and same types (an exact integer never turns into a float).
    assert repr(got) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text", ['{"a":18446744073709551616}', '{"a":1,"a":2}', '{"a":-0.0}', '{"a":2.5e-324}']
)
def test_the_fast_reader_reads_the_edges_of_json_as_json_does(text: str) -> None:
    assert repr(engine._read_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", ['{"a":NaN}', '{"a":1e400}', '"\\ud800"', '{"a":1}x'])
def test_the_fast_reader_refuses_what_json_reads_leniently(text: str) -> None:
    with pytest.raises(msgspec.DecodeError):
        engine._read_json(text)


def _table(rows: list[tuple[str, int, str, str, str]]) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "stream_name": [r[0] for r in rows],
            "stream_revision": pa.array([r[1] for r in rows], pa.uint64()),
            "commit_position": pa.array([(i + 1) * 10 for i in range(n)], pa.uint64()),
            "created": pa.array([i * 1_000_000 for i in range(n)], pa.timestamp("us", tz="UTC")),
            "occurred_at": pa.array(
                [i * 1_000_000 for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
            "event_type": [r[2] for r in rows],
            "event_id": [f"00000000-0000-0000-0000-{i:012d}" for i in range(n)],
            "data": [r[3] for r in rows],
            "metadata": [r[4] for r in rows],
        }
    )


class _Grows(AggregateRoot):
    """Adds fields as it goes, holds mutable values, keeps private ones: the reader's edges."""

    stream_prefix = "grow"
    registry = EventRegistry()

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.tags: list[str] = []
        self._seen = 0

    def apply(self, event: DomainEvent) -> None:
        self._seen += 1
        self.tags.append(event.data.tag)
        if self._seen == 2:
            self.extra = {"n": {1, 2}}
        if self._seen == 3:
            del self.tags


@_Grows.registry.register("Tagged")
@dataclasses.dataclass(frozen=True)
class _Tagged:
    tag: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Tagged:
        return cls(data["tag"])

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag}


def test_the_state_read_from_attributes_equals_state(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [("grow-1", i, "Tagged", json.dumps({"tag": f"t{i}"}), "{}") for i in range(2)]
    rows += [("grow-2", i, "Tagged", json.dumps({"tag": f"u{i}"}), "{}") for i in range(3)]
    table = _table(rows)
    fast = engine.fold_batch(table, _Grows, "skip")
    with monkeypatch.context() as m:
        # The reference: ask the aggregate for state(), as for one that defines its own.
        m.setattr(engine._StateReader, "__init__", _reference_reader)
        reference = engine.fold_batch(table, _Grows, "skip")
    assert fast.timeline.equals(reference.timeline)
    assert fast.timeline.column_names[-3:] == ["tags", "extra", "changed"]
    # A field that appears or goes away is a change; an equal value is not.
    assert fast.timeline.column("changed").to_pylist() == [
        ["tags"],
        ["tags", "extra"],
        ["tags"],
        ["tags", "extra"],
        ["tags"],
    ]


def _reference_reader(self: engine._StateReader, cls: type[AggregateRoot]) -> None:
    self._plain = False


def test_a_stored_event_is_built_as_the_dataclass_builds_it() -> None:
    args = ("Deposited", "7", 3, {"amount": "1.00"}, {"$correlationId": "c"}, "e-1")
    fast, plain = engine._new_event(*args), DomainEvent(*args)
    assert fast == plain
    assert type(fast) is DomainEvent
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.aggregate_version = 4  # type: ignore[misc]


# State values of every kind a field may hold: the column-wise comparison must say "changed"
# exactly where Python's `new is not old and new != old` does.
_state_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(2**63, 2**64),  # too wide for int64: becomes text in Arrow
    st.sampled_from([Decimal("1.0"), Decimal("1.00"), Decimal("2.50"), Decimal("-0.00")]),
    st.sampled_from([Decimal("1E+2"), Decimal("NaN")]),
    st.floats(allow_nan=True),
    st.sampled_from(["a", "b", ""]),
    st.lists(st.integers(0, 2), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(_state_value, min_size=3, max_size=3), min_size=1, max_size=14),
    fresh=st.lists(_state_value, min_size=3, max_size=3),
    starts=st.sets(st.integers(0, 13)),
    kinds=st.lists(st.sampled_from(["any", "decimal", "text", "int"]), min_size=3, max_size=3),
)
def test_changed_fields_are_what_python_compares(
    rows: list[list[Any]], fresh: list[Any], starts: set[int], kinds: list[str]
) -> None:
    # Some columns hold one kind only, so the column-wise comparison is taken, not skipped.
    typed = {"decimal": Decimal("3.00"), "text": "t", "int": 5}
    for column, kind in enumerate(kinds):
        if kind != "any":
            for row in rows:
                if row[column] is not None and type(row[column]) is not type(typed[kind]):
                    row[column] = typed[kind]
    names = ("a", "b", "c")
    values = [tuple(r) for r in rows]
    # Some rows repeat the objects of the row before, as an unchanged field does.
    values = [values[i - 1] if i and i % 3 == 0 else v for i, v in enumerate(values)]
    first_rows = sorted({0} | {s for s in starts if s < len(values)})
    initial = [(names, tuple(fresh)) for _ in first_rows]
    state = StateColumns([names] * len(values), values, first_rows, initial)
    state.columns()
    got = state.changed().to_pylist()

    expected = []
    for i, now in enumerate(values):
        before = tuple(fresh) if i in first_rows else values[i - 1]
        expected.append(
            [
                n
                for n, new, old in zip(names, now, before, strict=True)
                if new is not old and new != old
            ]
        )
    assert got == expected
