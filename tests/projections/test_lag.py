"""Given a projection running live on the dev server while writers append, when its lag is
sampled, then the lag returns to zero after the writers stop, and a projection that stops
moving is reported as stalled; a persistent-subscription group is sampled beside it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from esdbclient import EventStoreDBClient, NewEvent, StreamState

from esworkbench.devserver import start
from esworkbench.examples.bank.projections import AccountSummaryV1
from esworkbench.projections import Event, Row, follow_lag

V1 = "esworkbench.examples.bank.projections:AccountSummaryV1"


@pytest.fixture
def uri() -> Iterator[str]:
    with start() as server:
        yield server.uri


def write(uri: str, users: int, deposits: int, pause: float) -> None:
    client = EventStoreDBClient(uri)
    try:
        for u in range(users):
            user = f"u{u}"
            created = {"userId": user, "name": f"N {u}", "email": f"{u}@x.test"}
            created["overdraftLimit"] = "100.00"
            client.append_to_stream(
                f"user-{user}",
                current_version=StreamState.NO_STREAM,
                events=[NewEvent(type="UserCreated", data=json.dumps(created).encode())],
            )
        for d in range(deposits):
            user = f"u{d % users}"
            data = {"userId": user, "amount": "1.00", "newBalance": "1.00"}
            client.append_to_stream(
                f"user-{user}",
                current_version=StreamState.ANY,
                events=[NewEvent(type="BalanceDeposited", data=json.dumps(data).encode())],
            )
            time.sleep(pause)
    finally:
        client.close()


def test_lag_returns_to_zero_after_the_writers_stop(uri: str) -> None:
    client = EventStoreDBClient(uri)
    client.create_subscription_to_all("billing")
    client.close()
    writer = threading.Thread(target=write, args=(uri, 5, 150, 0.004))
    writer.start()
    report = follow_lag(uri, V1, duration=2.5, interval=0.05, group="billing")
    writer.join()
    last = report.samples.row(-1, named=True)
    assert report.events == 155 and report.rows == 5
    assert last["events_behind"] == 0 and last["seconds_behind"] == 0
    assert last["position"] == last["head_position"] and last["positions_behind"] == 0
    assert report.caught_up and not report.stalled
    assert report.samples["head_position"].max() == last["head_position"]
    # The group has no consumer: its checkpoint stays behind the head.
    assert {"group_checkpoint", "group_last_known", "group_parked"} <= set(report.samples.columns)
    assert last["group_parked"] == 0
    assert "caught up" in report.describe()


class Stuck(AccountSummaryV1):
    """Blocks on its 20th deposit until the gate opens (a projection waiting on a dead lock)."""

    gate = threading.Event()
    deposits = 0

    def deposited(self, row: Row, event: Event) -> None:
        type(self).deposits += 1
        if type(self).deposits == 20:
            type(self).gate.wait(30)
        super().deposited(row, event)


def test_a_projection_that_stops_moving_is_reported_stalled(uri: str) -> None:
    writer = threading.Thread(target=write, args=(uri, 3, 80, 0.002))
    writer.start()
    try:
        report = follow_lag(uri, Stuck, duration=2.0, interval=0.05, stall_after=0.5)
    finally:
        Stuck.gate.set()
        writer.join()
    last = report.samples.row(-1, named=True)
    assert report.stalled and not report.caught_up
    assert last["events_behind"] > 0 and last["seconds_behind"] > 0
    stall = report.stalls.row(0, named=True)
    assert stall["seconds"] >= 0.5 and stall["head_position"] > stall["position"]
