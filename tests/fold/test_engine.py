"""The engine's fast decoding gives exactly what the reference decoding gives."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

from esworkbench.aggregates import AggregateRoot, DomainEvent
from esworkbench.events import EventRegistry
from esworkbench.examples.bank import User
from esworkbench.examples.bank.sample import generate
from esworkbench.fold import _engine as engine
from esworkbench.fold import replay
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
def test_parsed_objects_are_what_json_reads(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except ValueError:
        expected = None
    try:
        got = engine._object(text)
    except ValueError:
        got = None
    if got is not None:
        # Same values and same types (an exact integer never turns into a float).
        assert type(expected) is dict
        assert repr(got) == repr(expected)


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


def _reference_reader(self: engine._StateReader, cls: type[AggregateRoot]) -> None:
    self._plain = False
