"""Write a generated sample ledger into EventStoreDB, the way production and its bugs would.

Appends go in the ledger's $all order, one append per unit of work (an aggregate's events of
one command, or of an account opening or closing). Normal events go through
``EventStoreRepository`` (decoded through the bank registry and encoded again, so what lands
is what production writes); injected anomalies and the legacy ``UserCreated`` v1/v2 events are
appended raw with esdbclient, as the buggy or older writer did. Every append names the exact
expected stream revision and carries the ledger's deterministic event ids, so seeding again is
EventStoreDB's idempotent append: nothing new is written.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import date
from typing import TYPE_CHECKING, Any

from esworkbench.aggregates import EncodedEvent, EventStoreRepository, decode_event
from esworkbench.config import mask_uri
from esworkbench.errors import SourceError
from esworkbench.examples.bank import User, registry
from esworkbench.examples.bank.sample import AnomalyKind, Ledger, generate

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["SeedResult", "seed_esdb", "write_esdb"]


@dataclasses.dataclass(frozen=True, slots=True)
class SeedResult:
    """What a seeding run did.

    Attributes:
        events: events in the ledger.
        written: events appended by this run (0 when everything was already there).
        appends: append calls made (one per unit of work).
        streams: streams the ledger touches.
        anomalies: injected anomalies among the events.
        last_commit_position: the server's position of the ledger's last event.
        seconds: wall time of the writing.
    """

    events: int
    written: int
    appends: int
    streams: int
    anomalies: int
    last_commit_position: int
    seconds: float


def seed_esdb(
    uri: str,
    *,
    users: int,
    seed: int,
    days: int = 90,
    start: date = date(2024, 1, 1),
    anomalies: Mapping[AnomalyKind, int] | None = None,
    progress: bool = False,
) -> SeedResult:
    """Generate the sample ledger (see `sample.generate`) and write it into EventStoreDB.

    Example:
        >>> from esworkbench.devserver import start
        >>> with start() as server:
        ...     first = seed_esdb(server.uri, users=4, seed=1, days=14)
        ...     again = seed_esdb(server.uri, users=4, seed=1, days=14)
        >>> first.written == first.events, again.written
        (True, 0)
    """
    ledger = generate(users=users, seed=seed, days=days, start=start, anomalies=anomalies)
    return write_esdb(ledger, uri, progress=progress)


def write_esdb(ledger: Ledger, uri: str, *, progress: bool = False) -> SeedResult:
    """Write `ledger` into the EventStoreDB at `uri` (an esdb:// connection string).

    Raises ConcurrencyError if a stream of the ledger holds other events than the ledger says
    (seeded from different parameters by hand, or written by someone else).
    """
    from esdbclient import EventStoreDBClient
    from esdbclient.exceptions import EventStoreDBClientException

    began = time.perf_counter()
    client = EventStoreDBClient(uri)
    try:
        written, appends, position = _write(client, ledger, progress)
    except EventStoreDBClientException as e:
        raise SourceError(
            f"cannot write the sample ledger to EventStoreDB at {mask_uri(uri)}: "
            f"{type(e).__name__}: {e}. Check that the server is running and reachable "
            "(`esworkbench devserver` starts a development server on 127.0.0.1:2113)."
        ) from e
    finally:
        client.close()
    return SeedResult(
        events=len(ledger),
        written=written,
        appends=appends,
        streams=len(set(ledger.stream_name)),
        anomalies=sum(ledger.counts().values()),
        last_commit_position=position,
        seconds=time.perf_counter() - began,
    )


def _write(client: Any, ledger: Ledger, progress: bool) -> tuple[int, int, int]:
    """Append the ledger in $all order; returns (events written, appends, last position)."""
    repository = EventStoreRepository(User, client=client)
    # An append that repeats what is there returns the earlier position: only appends
    # past the head of the log wrote something.
    head = client.get_commit_position(filter_exclude=())
    written = appends = 0
    position = head
    batches: Any = ledger.batches()
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=len(ledger.batch_start), unit="append", desc="seeding")
    for first, stop, raw in batches:
        if raw:
            position = _append_raw(repository, ledger, first, stop)
        else:
            position = _append_through_repository(repository, ledger, first, stop)
        appends += 1
        if position > head:
            written += stop - first
            head = position
    return written, appends, position


def _append_through_repository(
    repository: EventStoreRepository[User], ledger: Ledger, first: int, stop: int
) -> int:
    stream = ledger.stream_name[first]
    aggregate_id = User.aggregate_id_of(stream)
    events = [
        decode_event(
            registry,
            aggregate_id=aggregate_id,
            stream_revision=ledger.stream_revision[i],
            event_id=ledger.event_id[i],
            event_type=ledger.event_type[i],
            data=ledger.data[i],
            metadata=ledger.metadata[i],
        )
        for i in range(first, stop)
    ]
    return repository.append_events(
        stream, events, expected_version=ledger.stream_revision[first] - 1
    )


def _append_raw(
    repository: EventStoreRepository[User], ledger: Ledger, first: int, stop: int
) -> int:
    stream = ledger.stream_name[first]
    encoded = [
        EncodedEvent(
            ledger.event_id[i],
            ledger.event_type[i],
            ledger.data[i],
            ledger.metadata[i],
            ledger.content_type[i],
        )
        for i in range(first, stop)
    ]
    return repository.append_encoded(
        stream, encoded, expected_version=ledger.stream_revision[first] - 1
    )
