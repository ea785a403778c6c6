"""Persistent-subscription groups on EventStoreDB: where a consumer group has got to.

The projection-lag experiments show a group's progress beside a live projection's: its last
checkpointed and last known event position, parked messages and messages in flight, read
through esdbclient's ``get_subscription_info`` (the EventStoreDB source is the one stage that
speaks gRPC, so this lives here).

Example:
    >>> info = read_subscription_info("esdb://127.0.0.1:2113?tls=false", "billing")
    ... # doctest: +SKIP
    >>> info.last_checkpointed_position  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import re

from esdbclient import EventStoreDBClient
from esdbclient.exceptions import EventStoreDBClientException

from esworkbench.config import esdbclient_uri, mask_uri
from esworkbench.errors import SourceError

__all__ = ["SubscriptionGroupInfo", "read_subscription_info"]

_COMMIT = re.compile(r"C:(\d+)")


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionGroupInfo:
    """A persistent-subscription group's progress, as the server reports it.

    Attributes:
        group: the group name.
        source: "$all" or the stream name.
        status: the server's status text.
        last_checkpointed_position: the commit position ($all) or revision (a stream) of the
            last checkpoint (None: none yet).
        last_known_position: the last event the group has seen (None: none yet).
        parked_messages: messages parked after too many retries.
        in_flight: messages sent and not yet acknowledged.
    """

    group: str
    source: str
    status: str
    last_checkpointed_position: int | None
    last_known_position: int | None
    parked_messages: int
    in_flight: int


def _position(text: str) -> int | None:
    found = _COMMIT.search(text or "")
    if found:
        return int(found.group(1))
    return int(text) if text and text.strip().isdigit() else None


def read_subscription_info(
    uri: str, group: str, *, stream: str | None = None
) -> SubscriptionGroupInfo:
    """A persistent-subscription group's progress (to ``$all`` unless `stream` is given).

    Raises:
        SourceError: the server cannot be reached or has no such group (password masked).

    Example:
        >>> read_subscription_info(uri, "billing").parked_messages  # doctest: +SKIP
        0
    """
    try:
        client = EventStoreDBClient(esdbclient_uri(uri))
    except (EventStoreDBClientException, ValueError) as e:
        raise SourceError(f"cannot connect to EventStoreDB at {mask_uri(uri)}: {e}") from None
    try:
        info = client.get_subscription_info(group, stream, timeout=10)
    except EventStoreDBClientException as e:
        where = stream or "$all"
        raise SourceError(
            f"cannot read persistent subscription {group!r} on {where} at {mask_uri(uri)}: "
            f"{type(e).__name__} {e}; check the group name (create it first)"
        ) from None
    finally:
        client.close()
    return SubscriptionGroupInfo(
        group=info.group_name,
        source=info.event_source,
        status=info.status,
        last_checkpointed_position=_position(info.last_checkpointed_event_position),
        last_known_position=_position(info.last_known_event_position),
        parked_messages=int(info.parked_message_count),
        in_flight=int(info.total_in_flight_messages),
    )
