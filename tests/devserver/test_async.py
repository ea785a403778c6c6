"""The asyncio client: every append is a BatchAppend, and it cancels calls once answered."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from esdbclient import AsyncEventStoreDBClient, StreamState
from esdbclient.events import CaughtUp, Checkpoint, RecordedEvent
from esdbclient.exceptions import NotFound, StreamIsDeleted, WrongCurrentVersion

from tests.devserver.conftest import event, events

Run = Callable[[Callable[[AsyncEventStoreDBClient], Awaitable[Any]]], Any]


def test_appends_and_reads(arun: Run, stream: str) -> None:
    async def scenario(c: AsyncEventStoreDBClient) -> None:
        first = await c.append_to_stream(
            stream, current_version=StreamState.NO_STREAM, events=event()
        )
        last = await c.append_to_stream(stream, current_version=0, events=events(3))
        recorded = await c.get_stream(stream)
        assert [e.stream_position for e in recorded] == [0, 1, 2, 3]
        assert [recorded[0].commit_position, recorded[-1].commit_position] == [first, last]
        backwards = await c.get_stream(stream, backwards=True, limit=2)
        assert [e.stream_position for e in backwards] == [3, 2]
        assert await c.get_current_version(stream) == 3
        via_all = [e async for e in await c.read_all(commit_position=first, limit=4)]
        assert [e.id for e in via_all] == [e.id for e in recorded]
        assert await c.get_commit_position() >= last

    arun(scenario)


def test_wrong_expected_versions(arun: Run, stream: str) -> None:
    async def scenario(c: AsyncEventStoreDBClient) -> None:
        with pytest.raises(WrongCurrentVersion, match=f"^Stream '{stream}' does not exist$"):
            await c.append_to_stream(stream, current_version=StreamState.EXISTS, events=[event()])
        await c.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
        with pytest.raises(
            WrongCurrentVersion, match=r"^Stream position of last event is 1 not 0$"
        ):
            await c.append_to_stream(stream, current_version=0, events=[event()])
        with pytest.raises(NotFound):
            await c.delete_stream(stream + "-never", current_version=StreamState.ANY)
        with pytest.raises(WrongCurrentVersion, match=r"Expected version: 3, Actual version: 1"):
            await c.delete_stream(stream, current_version=3)

    arun(scenario)


def test_idempotent_retries(arun: Run, stream: str) -> None:
    async def scenario(c: AsyncEventStoreDBClient) -> None:
        batch = events(3)
        position = await c.append_to_stream(
            stream, current_version=StreamState.NO_STREAM, events=batch
        )
        again = await c.append_to_stream(
            stream, current_version=StreamState.NO_STREAM, events=batch
        )
        assert again == position
        assert await c.append_to_stream(stream, current_version=StreamState.ANY, events=batch) == (
            position
        )
        assert len(await c.get_stream(stream)) == 3

    arun(scenario)


def test_deletes_and_metadata(arun: Run, stream: str) -> None:
    async def scenario(c: AsyncEventStoreDBClient) -> None:
        await c.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
        await c.set_stream_metadata(stream, metadata={"owner": "async"})
        assert await c.get_stream_metadata(stream) == ({"owner": "async"}, 0)
        await c.delete_stream(stream, current_version=1)
        assert await c.get_stream_metadata(stream) == ({"$tb": 2**63 - 1}, 1)
        with pytest.raises(NotFound):
            await c.get_stream(stream)
        await c.append_to_stream(stream, current_version=StreamState.ANY, events=events(1))
        assert [e.stream_position for e in await c.get_stream(stream)] == [2]
        await c.tombstone_stream(stream, current_version=2)
        with pytest.raises(StreamIsDeleted):
            await c.append_to_stream(stream, current_version=StreamState.ANY, events=[event()])
        with pytest.raises(StreamIsDeleted):
            await c.get_stream(stream)

    arun(scenario)


def test_subscriptions(arun: Run, stream: str) -> None:
    async def scenario(c: AsyncEventStoreDBClient) -> None:
        start = await c.append_to_stream(
            stream, current_version=StreamState.NO_STREAM, events=event()
        )
        sub = await c.subscribe_to_stream(stream, include_caught_up=True)
        async with sub:
            first = await sub.__anext__()
            assert isinstance(first, RecordedEvent) and first.stream_position == 0
            assert isinstance(await sub.__anext__(), CaughtUp)
            await c.append_to_stream(stream, current_version=0, events=events(2))
            assert (await sub.__anext__()).stream_position == 1
            assert (await sub.__anext__()).stream_position == 2
        all_sub = await c.subscribe_to_all(
            commit_position=start,
            filter_include=[stream],
            filter_by_stream_name=True,
            include_checkpoints=True,
            include_caught_up=True,
        )
        async with all_sub:
            seen = []
            async for item in all_sub:
                seen.append(item)
                if isinstance(item, CaughtUp):
                    break
        assert [type(i) for i in seen] == [RecordedEvent, RecordedEvent, Checkpoint, CaughtUp]

    arun(scenario)


@pytest.mark.parametrize("scheme", ["esdb+discover", "esdb-two-targets"])
def test_discovery_through_gossip(esdb_uri: str, stream: str, scheme: str) -> None:
    target, _, query = esdb_uri.removeprefix("esdb://").partition("?")
    if scheme == "esdb+discover":
        uri = f"esdb+discover://{target}?{query}"
    else:
        uri = f"esdb://{target},{target}?{query}"

    async def main() -> None:
        c = AsyncEventStoreDBClient(uri)
        await c.connect()
        try:
            await c.append_to_stream(stream, current_version=StreamState.ANY, events=[event()])
            assert len(await c.get_stream(stream)) == 1
            assert await c.list_subscriptions() == []
        finally:
            await c.close()

    asyncio.run(main())
