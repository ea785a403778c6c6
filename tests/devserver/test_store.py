"""Invariants of the store and its log, for any sequence of writes (hypothesis)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esworkbench.devserver.log import HEADER_SIZE, LOG_FILE_NAME, FileLog, MemoryLog
from esworkbench.devserver.records import (
    ANY,
    MAX_REVISION,
    NO_STREAM,
    STREAM_EXISTS,
    ProposedEvent,
    StreamDeleted,
    WrongExpectedVersion,
)
from esworkbench.devserver.server import open_store
from esworkbench.devserver.store import EventStore
from esworkbench.errors import DevServerError

STREAMS = ["a", "b", "$$a", "c"]
expectations = st.one_of(st.sampled_from([ANY, NO_STREAM, STREAM_EXISTS]), st.integers(0, 4))
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.sampled_from(STREAMS),
            expectations,
            st.lists(st.integers(0, 12), max_size=4),  # event ids (reused ids = retries)
        ),
        st.tuples(st.sampled_from(["delete", "tombstone"]), st.sampled_from(STREAMS), expectations),
    ),
    max_size=25,
)


def clock() -> int:
    return 1_750_000_000_000_000_000


def apply(store: EventStore, ops: list[tuple[object, ...]]) -> list[object]:
    outcomes: list[object] = []
    for op in ops:
        name, stream, expected = op[0], str(op[1]), int(op[2])  # type: ignore[call-overload]
        try:
            if name == "append":
                ids = op[3]
                events = [
                    ProposedEvent(f"00000000-0000-4000-8000-{i:012d}", "T", True, b"", b"{}")
                    for i in ids  # type: ignore[attr-defined]
                ]
                outcomes.append(store.append(stream, expected, events))
            elif name == "delete":
                outcomes.append(store.delete(stream, expected))
            else:
                outcomes.append(store.tombstone(stream, expected))
        except (WrongExpectedVersion, StreamDeleted) as e:
            outcomes.append(type(e).__name__)
    return outcomes


def snapshot(store: EventStore) -> list[tuple[object, ...]]:
    return [(e.position, e.stream, e.revision, e.event_id, e.wire) for e in store.events]


@settings(max_examples=40, deadline=None)
@given(operations)
def test_any_history_is_ordered_and_survives_a_restart(ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = EventStore(FileLog(Path(tmp) / LOG_FILE_NAME), clock_ns=clock)
        outcomes = apply(store, ops)
        before = snapshot(store)
        states = {s: store.stream(s) for s in STREAMS}
        store.close()

        positions = [p for p, *_ in before]
        assert positions == sorted(set(positions)) and positions[0] > 0
        for state in states.values():
            if state is not None:
                assert [e.revision for e in state.events] == list(range(len(state.events)))
                if state.tombstone is not None:
                    assert state.tombstone.revision == MAX_REVISION

        reopened = open_store(tmp)
        try:
            assert snapshot(reopened) == before
            for name, state in states.items():
                again = reopened.stream(name)
                assert (again is None) == (state is None)
                if state is not None and again is not None:
                    assert again.meta == state.meta
                    assert again.ids == state.ids
                    assert (again.tombstone is None) == (state.tombstone is None)
        finally:
            reopened.close()

    # The same history in memory numbers everything identically.
    in_memory = EventStore(MemoryLog(), clock_ns=clock)
    in_memory_outcomes = apply(in_memory, ops)
    assert [p for p, *_ in snapshot(in_memory)] == positions
    assert [type(o) for o in in_memory_outcomes] == [type(o) for o in outcomes]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=8), st.floats(0, 1))
def test_a_log_cut_anywhere_recovers_whole_appends(batches: list[int], where: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / LOG_FILE_NAME
        store = EventStore(FileLog(path), clock_ns=clock)
        ends = []  # file size after each append, and the events it holds
        n = 0
        for size in batches:
            events = [
                ProposedEvent(f"00000000-0000-4000-8000-{n + i:012d}", "T", True, b"", b"{}")
                for i in range(size)
            ]
            store.append("s", ANY, events)
            n += size
            ends.append((path.stat().st_size, n))
        store.close()
        cut = int(where * path.stat().st_size)
        with path.open("r+b") as f:
            f.truncate(cut)
        if cut < HEADER_SIZE:
            # The header is created whole (linked into place), so a shorter file is not ours.
            with pytest.raises(DevServerError, match="left untouched"):
                open_store(tmp)
            assert path.stat().st_size == cut
            return
        reopened = open_store(tmp)
        try:
            state = reopened.stream("s")
            survived = len(state.events) if state is not None else 0
        finally:
            reopened.close()
        assert survived == max([k for end, k in ends if end <= cut], default=0)
