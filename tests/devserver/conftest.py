"""Fixtures: one development server per session, fresh ones on demand, or a real EventStoreDB.

Set ``ESWORKBENCH_ESDB_URI`` (e.g. ``esdb://localhost:2113?tls=false``) to run the same tests
against a real EventStoreDB; tests that need an empty log, a restart or the dev server's
internals are then skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from esdbclient import AsyncEventStoreDBClient, EventStoreDBClient, NewEvent

from esworkbench import devserver

REAL_URI = os.environ.get("ESWORKBENCH_ESDB_URI", "").strip()

# Scripts that other clients' interpreters run; this interpreter cannot import them.
collect_ignore_glob = ["clients/*"]
T = TypeVar("T")

needs_devserver = pytest.mark.skipif(
    bool(REAL_URI),
    reason="needs the development server itself (a fresh log, a restart, its internals, or "
    "behaviour a real node leaves open); ESWORKBENCH_ESDB_URI points at a real EventStoreDB",
)


@pytest.fixture(scope="session")
def esdb_uri() -> Iterator[str]:
    """Connection string of the shared server: a session dev server, or the real one."""
    if REAL_URI:
        yield REAL_URI
        return
    with devserver.start() as server:
        yield server.uri


@pytest.fixture(scope="session")
def client(esdb_uri: str) -> Iterator[EventStoreDBClient]:
    """A sync client on the shared server."""
    c = EventStoreDBClient(esdb_uri)
    yield c
    c.close()


@pytest.fixture
def fresh_server() -> Iterator[devserver.DevServer]:
    """A development server with an empty (in-memory) log, for this test only."""
    if REAL_URI:
        pytest.skip("needs a fresh, empty log: only the development server can provide one")
    with devserver.start() as server:
        yield server


@pytest.fixture
def stream() -> str:
    """A stream name no other test uses."""
    return f"devserver-test-{uuid.uuid4()}"


@pytest.fixture
def arun(esdb_uri: str) -> Callable[[Callable[[AsyncEventStoreDBClient], Awaitable[T]]], T]:
    """Run ``fn(async_client)`` on a fresh event loop with a connected asyncio client."""

    def run(fn: Callable[[AsyncEventStoreDBClient], Awaitable[T]]) -> T:
        async def main() -> T:
            c = AsyncEventStoreDBClient(esdb_uri)
            await c.connect()
            try:
                return await fn(c)
            finally:
                await c.close()

        return asyncio.run(main())

    return run


def event(type_: str = "Happened", data: bytes = b"{}", **kwargs: object) -> NewEvent:
    """A new JSON event (by default)."""
    return NewEvent(type=type_, data=data, **kwargs)  # type: ignore[arg-type]


def events(n: int, type_: str = "Happened") -> list[NewEvent]:
    """``n`` new JSON events with distinct payloads."""
    return [NewEvent(type=type_, data=b'{"i": %d}' % i) for i in range(n)]
