"""The fast reader's hot loop: when it naps to let messages queue up, and when it must not."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from esdbclient.protos.Grpc import shared_pb2, streams_pb2

from esworkbench.sources import _esdb_decode

ReadResp = streams_pb2.ReadResp
MESSAGES = 400


def message(position: int) -> Any:
    event = ReadResp.ReadEvent.RecordedEvent(
        id=shared_pb2.UUID(string=str(uuid.UUID(int=position))),
        stream_identifier=shared_pb2.StreamIdentifier(stream_name=b"user-1"),
        stream_revision=position - 1,
        prepare_position=position,
        commit_position=position,
        metadata={"type": "Deposited", "content-type": "application/json", "created": "1"},
        data=b'{"amount": "1.00"}',
    )
    return ReadResp(event=ReadResp.ReadEvent(event=event, commit_position=position))


def server(take_seconds: float) -> Callable[[], Any]:
    """Messages that each take `take_seconds` to arrive (busy, as decoding a large one is)."""
    pending = [message(p) for p in range(1, MESSAGES + 1)]
    pending.append(ReadResp(caught_up=ReadResp.CaughtUp()))
    pending.reverse()

    def next_message() -> Any:
        until = time.perf_counter() + take_seconds
        while time.perf_counter() < until:
            pass
        return pending.pop()

    return next_message


def naps_reading(take_seconds: float, monkeypatch: pytest.MonkeyPatch) -> int:
    naps: list[float] = []
    monkeypatch.setattr(time, "sleep", naps.append)
    cols = _esdb_decode.Columns()
    status, position = _esdb_decode._fill_fast(server(take_seconds), cols, 10_000, [False])
    assert (status, position, len(cols)) == ("caught_up", MESSAGES, MESSAGES)
    return len(naps)


def test_slow_takes_of_buffered_messages_are_not_taken_for_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 40 us a take: a busy or slow machine taking messages gRPC already holds. Napping after
    # them throttled whole syncs; a rare nap (the machine paused this thread) is harmless.
    assert naps_reading(0.00004, monkeypatch) <= MESSAGES // 20


def test_waiting_on_the_server_naps_to_let_messages_queue_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1 ms a take: the server is slower than the reader, and a nap saves a wake-up per message.
    # The take after a nap reads the backlog and never naps itself: at most every other one.
    assert naps_reading(0.001, monkeypatch) >= MESSAGES // 2 - 1
