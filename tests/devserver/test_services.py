"""Gossip, persistent subscriptions and projections as tooling meets them."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from esdbclient import EventStoreDBClient, StreamState
from esdbclient.exceptions import GrpcError, NotFound

from esworkbench import devserver
from tests.devserver.conftest import REAL_URI, event, needs_devserver


def test_gossip_names_one_leader_at_the_dialled_address(
    client: EventStoreDBClient, esdb_uri: str
) -> None:
    members = client.read_gossip()
    leaders = [m for m in members if m.state == "NODE_STATE_LEADER"]
    assert len(leaders) == 1
    if not REAL_URI:  # a real node advertises its own configured address
        host, port = urlsplit(esdb_uri).netloc.rsplit(":", 1)
        assert (leaders[0].address, leaders[0].port) == (host, int(port))


@pytest.mark.parametrize("scheme", ["discover", "two-targets"])
def test_clients_that_discover_through_gossip(esdb_uri: str, stream: str, scheme: str) -> None:
    target, _, query = esdb_uri.removeprefix("esdb://").partition("?")
    uri = (
        f"esdb+discover://{target}?{query}"
        if scheme == "discover"
        else f"esdb://{target},{target}?{query}"
    )
    with EventStoreDBClient(uri) as discovering:
        discovering.append_to_stream(stream, current_version=StreamState.ANY, events=[event()])
        assert len(discovering.get_stream(stream)) == 1


@needs_devserver
def test_advertised_address_is_configurable() -> None:
    with (
        devserver.start(advertise_host="localhost", advertise_port=2113) as server,
        EventStoreDBClient(server.uri) as c,
    ):
        [member] = c.read_gossip()
    assert (member.address, member.port, member.state) == ("localhost", 2113, "NODE_STATE_LEADER")


def test_listing_without_groups(client: EventStoreDBClient, stream: str) -> None:
    assert client.list_subscriptions_to_stream(stream) == []
    with pytest.raises(NotFound):
        client.get_subscription_info(group_name="no-such-group")


@needs_devserver
def test_unimplemented_services_answer_cleanly(client: EventStoreDBClient) -> None:
    with pytest.raises(GrpcError, match="UNIMPLEMENTED"):
        client.create_projection(name="p", query="fromAll()")
    with pytest.raises(GrpcError, match="UNIMPLEMENTED"):
        client.get_projection_statistics(name="p")
