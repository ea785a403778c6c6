"""Run by ``test_kurrentdbclient.py`` with kurrentdbclient's own interpreter (not imported).

Prints, as JSON, what kurrentdbclient 1.3 sees of caught-up and checkpoint messages from the
server at ``sys.argv[1]`` for the stream ``sys.argv[2]``.
"""

import json
import sys

from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.events import CaughtUp


def describe(item: object) -> dict[str, object]:
    recorded_at = getattr(item, "recorded_at", None)
    return {
        "kind": type(item).__name__,
        "stream_position": getattr(item, "stream_position", None),
        "commit_position": getattr(item, "commit_position", None),
        "recorded_at": recorded_at.timestamp() if recorded_at is not None else None,
    }


def until_caught_up(subscription: object) -> list[dict[str, object]]:
    seen = []
    for item in subscription:  # type: ignore[attr-defined]
        seen.append(describe(item))
        if isinstance(item, CaughtUp):
            break
    subscription.stop()  # type: ignore[attr-defined]
    return seen


uri, stream = sys.argv[1], sys.argv[2]
client = KurrentDBClient(uri)
events = [NewEvent(type="Happened", data=b"{}") for _ in range(3)]
last = client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events)
result = {
    "last_commit_position": last,
    "stream": until_caught_up(
        client.subscribe_to_stream(stream, include_caught_up=True, timeout=10)
    ),
    "all": until_caught_up(
        client.subscribe_to_all(
            filter_include=[stream],
            filter_by_stream_name=True,
            include_checkpoints=True,
            include_caught_up=True,
            timeout=10,
        )
    ),
}
client.close()
print(json.dumps(result))
