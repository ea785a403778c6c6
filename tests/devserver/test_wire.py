"""The hand-rolled encoder matches protobuf's own serialization byte for byte."""

from __future__ import annotations

import uuid

from esdbclient.protos.Grpc import shared_pb2, streams_pb2
from hypothesis import given
from hypothesis import strategies as st

from esworkbench.devserver.wire import (
    encode_recorded_event,
    read_resp_event,
    read_resp_link,
    varint,
)

RecordedEvent = streams_pb2.ReadResp.ReadEvent.RecordedEvent
ReadEvent = streams_pb2.ReadResp.ReadEvent

u64 = st.integers(min_value=0, max_value=2**63 - 1)
fields = st.fixed_dictionaries(
    {
        "event_id": st.uuids().map(str),
        "stream_name": st.text(min_size=1, max_size=40).map(str.encode),
        "revision": u64,
        "position": u64,
        "event_type": st.text(min_size=1, max_size=30),
        "is_json": st.booleans(),
        "created": u64,
        "custom_metadata": st.binary(max_size=300),
        "data": st.binary(max_size=300),
    }
)


def reference(f: dict[str, object]) -> RecordedEvent:
    return RecordedEvent(
        id=shared_pb2.UUID(string=f["event_id"]),
        stream_identifier=shared_pb2.StreamIdentifier(stream_name=f["stream_name"]),
        stream_revision=f["revision"],
        prepare_position=f["position"],
        commit_position=f["position"],
        metadata={
            "type": f["event_type"],
            "content-type": "application/json" if f["is_json"] else "application/octet-stream",
            "created": str(f["created"]),
        },
        custom_metadata=f["custom_metadata"],
        data=f["data"],
    )


@given(fields)
def test_recorded_event_matches_protobuf(f: dict[str, object]) -> None:
    encoded = encode_recorded_event(**f)  # type: ignore[arg-type]
    assert encoded == reference(f).SerializeToString(deterministic=True)


@given(fields)
def test_read_resp_matches_protobuf_and_locates_the_record(f: dict[str, object]) -> None:
    record = encode_recorded_event(**f)  # type: ignore[arg-type]
    wire, start = read_resp_event(record, int(f["position"]))  # type: ignore[call-overload]
    expected = streams_pb2.ReadResp(
        event=ReadEvent(event=reference(f), commit_position=f["position"])
    )
    assert wire == expected.SerializeToString(deterministic=True)
    assert wire[start : start + len(record)] == record


def test_links_with_and_without_a_target() -> None:
    target = encode_recorded_event(
        event_id=str(uuid.uuid4()),
        stream_name=b"t",
        revision=3,
        position=100,
        event_type="T",
        is_json=True,
        created=1,
        custom_metadata=b"",
        data=b"{}",
    )
    link = encode_recorded_event(
        event_id=str(uuid.uuid4()),
        stream_name=b"l",
        revision=0,
        position=200,
        event_type="$>",
        is_json=False,
        created=2,
        custom_metadata=b"",
        data=b"3@t",
    )
    resolved = streams_pb2.ReadResp.FromString(read_resp_link(target, link, 200))
    assert resolved.event.event.SerializeToString(deterministic=True) == target
    assert resolved.event.link.SerializeToString(deterministic=True) == link
    assert resolved.event.commit_position == 200
    dangling = streams_pb2.ReadResp.FromString(read_resp_link(None, link, 200))
    assert not dangling.event.HasField("event")
    assert dangling.event.link.id.string


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint(value: int) -> None:
    assert streams_pb2.ReadResp.Checkpoint.FromString(b"\x08" + varint(value)).commit_position == (
        value
    )
