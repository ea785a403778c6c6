"""Wire-level shapes the client maps by code and substring, checked with raw gRPC stubs.

esdbclient's own converters are applied to the raw responses where it has them, so each test
also pins the exception class the client raises.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import grpc
import pytest
from esdbclient import EventStoreDBClient, StreamState
from esdbclient.exceptions import (
    AppendDeadlineExceeded,
    BadRequestError,
    MaximumAppendSizeExceededError,
    NotFound,
    StreamIsDeleted,
    WrongCurrentVersion,
)
from esdbclient.protos.Grpc import shared_pb2, streams_pb2, streams_pb2_grpc
from esdbclient.streams import BaseStreamsService
from google.protobuf import duration_pb2, empty_pb2

from tests.devserver.conftest import event, events, needs_devserver

Options = streams_pb2.ReadReq.Options


@pytest.fixture(scope="module")
def stub(esdb_uri: str) -> Iterator[streams_pb2_grpc.StreamsStub]:
    parts = urlsplit(esdb_uri)
    if "tls=false" not in (parts.query or "").lower():
        pytest.skip("raw-stub tests need an insecure server")
    channel = grpc.insecure_channel(
        parts.netloc.split("@")[-1].split(",")[0],
        options=[
            ("grpc.max_receive_message_length", 17 * 1024 * 1024),
            ("grpc.max_send_message_length", 32 * 1024 * 1024),
        ],
    )
    yield streams_pb2_grpc.StreamsStub(channel)
    channel.close()


def sid(name: str) -> shared_pb2.StreamIdentifier:
    return shared_pb2.StreamIdentifier(stream_name=name.encode())


def proposed(
    kind: type, *, metadata: dict[str, str] | None = None, data: bytes = b"{}", **ids: object
) -> object:
    if metadata is None:
        metadata = {"type": "Happened", "content-type": "application/json"}
    identity = ids.get("id") or shared_pb2.UUID(string=str(uuid.uuid4()))
    return kind(id=identity, metadata=metadata, data=data, custom_metadata=b"")


def batch_req(
    name: str,
    messages: list[object],
    *,
    correlation: str | None = None,
    final: bool = True,
    deadline: duration_pb2.Duration | None = None,
    options: bool = True,
    **expected: object,
) -> streams_pb2.BatchAppendReq:
    req = streams_pb2.BatchAppendReq(
        correlation_id=shared_pb2.UUID(string=correlation or str(uuid.uuid4())),
        proposed_messages=messages,
        is_final=final,
    )
    if options:
        req.options.stream_identifier.CopyFrom(sid(name))
        req.options.deadline.CopyFrom(deadline or duration_pb2.Duration(seconds=30))
        if "stream_position" in expected:
            req.options.stream_position = int(expected["stream_position"])  # type: ignore[call-overload]
        else:
            req.options.any.CopyFrom(empty_pb2.Empty())
    return req


def first_batch_response(
    stub: streams_pb2_grpc.StreamsStub, *requests: streams_pb2.BatchAppendReq
) -> streams_pb2.BatchAppendResp:
    return next(iter(stub.BatchAppend(iter(requests), timeout=10)))


def convert(resp: streams_pb2.BatchAppendResp, name: str, version: object) -> int:
    return int(BaseStreamsService._convert_batch_append_resp(resp, name, version))  # type: ignore[arg-type]


def append_reqs(name: str, *messages: object) -> Iterator[streams_pb2.AppendReq]:
    yield streams_pb2.AppendReq(
        options=streams_pb2.AppendReq.Options(stream_identifier=sid(name), any=shared_pb2.Empty())
    )
    for m in messages:
        yield streams_pb2.AppendReq(proposed_message=m)


# -- required metadata -------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["type", "content-type"])
def test_append_requires_type_and_content_type(
    stub: streams_pb2_grpc.StreamsStub, stream: str, missing: str
) -> None:
    metadata = {"type": "Happened", "content-type": "application/json"}
    del metadata[missing]
    message = proposed(streams_pb2.AppendReq.ProposedMessage, metadata=metadata)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Append(append_reqs(stream, message), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == f"Required Metadata Property '{missing}' is missing"


@pytest.mark.parametrize("missing", ["type", "content-type"])
def test_batch_append_reports_missing_metadata_as_bad_request(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str, missing: str
) -> None:
    metadata = {"type": "Happened", "content-type": "application/json"}
    del metadata[missing]
    message = proposed(streams_pb2.BatchAppendReq.ProposedMessage, metadata=metadata)
    resp = first_batch_response(stub, batch_req(stream, [message]))
    assert resp.WhichOneof("result") == "error"
    with pytest.raises(BadRequestError):
        convert(resp, stream, StreamState.ANY)
    assert client.get_current_version(stream) is StreamState.NO_STREAM


def test_event_type_must_not_be_empty(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    metadata = {"type": "", "content-type": "application/json"}
    message = proposed(streams_pb2.BatchAppendReq.ProposedMessage, metadata=metadata)
    resp = first_batch_response(stub, batch_req(stream, [message]))
    with pytest.raises(BadRequestError):
        convert(resp, stream, StreamState.ANY)
    assert client.get_current_version(stream) is StreamState.NO_STREAM


# -- error shapes ------------------------------------------------------------------------------


def test_batch_wrong_expected_version_shape(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    correlation = str(uuid.uuid4())
    message = proposed(streams_pb2.BatchAppendReq.ProposedMessage)
    req = batch_req(stream, [message], correlation=correlation, stream_position=7)
    resp = first_batch_response(stub, req)
    assert resp.correlation_id.string == correlation
    assert resp.stream_identifier.stream_name == stream.encode()
    assert resp.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert resp.error.message == "WrongExpectedVersion"
    assert resp.error.details.type_url.endswith("/event_store.client.WrongExpectedVersion")
    wev = shared_pb2.WrongExpectedVersion()
    resp.error.details.Unpack(wev)
    assert wev.current_stream_revision == 1
    assert wev.expected_stream_position == 7
    with pytest.raises(WrongCurrentVersion, match=r"^Stream position of last event is 1 not 7$"):
        convert(resp, stream, 7)


def test_batch_stream_deleted_shape(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    client.tombstone_stream(stream, current_version=StreamState.ANY)
    resp = first_batch_response(
        stub, batch_req(stream, [proposed(streams_pb2.BatchAppendReq.ProposedMessage)])
    )
    assert resp.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert resp.error.message == "StreamDeleted"
    deleted = shared_pb2.StreamDeleted()
    assert resp.error.details.Unpack(deleted)
    assert deleted.stream_identifier.stream_name == stream.encode()
    with pytest.raises(StreamIsDeleted):
        convert(resp, stream, StreamState.ANY)


def test_append_wrong_expected_version_shape(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    def send(**expected: object) -> streams_pb2.AppendResp.WrongExpectedVersion:
        options = streams_pb2.AppendReq.Options(stream_identifier=sid(stream), **expected)
        message = proposed(streams_pb2.AppendReq.ProposedMessage)
        reqs = [
            streams_pb2.AppendReq(options=options),
            streams_pb2.AppendReq(proposed_message=message),
        ]
        resp = stub.Append(iter(reqs), timeout=10)
        assert resp.WhichOneof("result") == "wrong_expected_version"
        return resp.wrong_expected_version

    wev = send(revision=3)
    assert wev.WhichOneof("current_revision_option") == "current_no_stream"
    assert wev.expected_revision == 3
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    wev = send(no_stream=shared_pb2.Empty())
    assert wev.current_revision == 1
    assert wev.WhichOneof("expected_revision_option") == "expected_no_stream"


def test_append_to_deleted_stream_is_a_failed_precondition(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    client.tombstone_stream(stream, current_version=StreamState.ANY)
    message = proposed(streams_pb2.AppendReq.ProposedMessage)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Append(append_reqs(stream, message), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == f"Event stream '{stream}' is deleted."
    assert ("exception", "stream-deleted") in caught.value.trailing_metadata()


@pytest.mark.parametrize(
    ("rpc", "request_type"),
    [("Delete", streams_pb2.DeleteReq), ("Tombstone", streams_pb2.TombstoneReq)],
)
def test_delete_wrong_expected_version_details(
    stub: streams_pb2_grpc.StreamsStub,
    client: EventStoreDBClient,
    stream: str,
    rpc: str,
    request_type: type,
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    req = request_type(options=request_type.Options(stream_identifier=sid(stream), revision=5))
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, rpc)(req, timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == (
        f"Delete failed due to WrongExpectedVersion. Stream: {stream}, "
        "Expected version: 5, Actual version: 1"
    )
    trailers = dict(caught.value.trailing_metadata())
    assert trailers["exception"] == "wrong-expected-version"
    assert trailers["expected-version"] == "5"
    assert trailers["actual-version"] == "1"


@pytest.mark.parametrize("expected", ["any", "no_stream", "stream_exists"])
def test_delete_of_a_never_written_stream_reports_actual_minus_one(
    stub: streams_pb2_grpc.StreamsStub, stream: str, expected: str
) -> None:
    options = streams_pb2.DeleteReq.Options(stream_identifier=sid(stream))
    getattr(options, expected).CopyFrom(shared_pb2.Empty())
    with pytest.raises(grpc.RpcError) as caught:
        stub.Delete(streams_pb2.DeleteReq(options=options), timeout=10)
    code = {"any": -2, "no_stream": -1, "stream_exists": -4}[expected]
    assert caught.value.details() == (
        f"Delete failed due to WrongExpectedVersion. Stream: {stream}, "
        f"Expected version: {code}, Actual version: -1"
    )


# -- BatchAppend deadlines, chunks and cancellation --------------------------------------------


def test_batch_append_with_no_time_left_times_out_and_writes_nothing(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    message = proposed(streams_pb2.BatchAppendReq.ProposedMessage)
    req = batch_req(stream, [message], deadline=duration_pb2.Duration(seconds=0))
    resp = first_batch_response(stub, req)
    assert resp.error.details.type_url.endswith("/event_store.client.Timeout")
    with pytest.raises(AppendDeadlineExceeded):
        convert(resp, stream, StreamState.ANY)
    assert client.get_current_version(stream) is StreamState.NO_STREAM


def test_batch_append_chunks_are_written_together_on_the_final_one(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    correlation = str(uuid.uuid4())
    chunks = [
        batch_req(
            stream,
            [proposed(streams_pb2.BatchAppendReq.ProposedMessage) for _ in range(2)],
            correlation=correlation,
            final=False,
        ),
        batch_req(
            stream,
            [proposed(streams_pb2.BatchAppendReq.ProposedMessage) for _ in range(3)],
            correlation=correlation,
            options=False,
        ),
    ]
    resp = first_batch_response(stub, *chunks)
    assert resp.WhichOneof("result") == "success"
    recorded = client.get_stream(stream)
    assert [e.stream_position for e in recorded] == [0, 1, 2, 3, 4]
    assert resp.success.position.commit_position == recorded[-1].commit_position


def test_batch_append_without_a_final_message_writes_nothing(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    req = batch_req(stream, [proposed(streams_pb2.BatchAppendReq.ProposedMessage)], final=False)
    responses = []
    try:
        responses.extend(stub.BatchAppend(iter([req]), timeout=5))
    except grpc.RpcError as e:  # a real node may hold the call open until its deadline
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert all(r.WhichOneof("result") != "success" for r in responses)
    assert client.get_current_version(stream) is StreamState.NO_STREAM


@pytest.mark.parametrize("ending", ["cancel", "deadline"])
def test_batch_append_ended_before_its_final_message_writes_nothing(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str, ending: str
) -> None:
    correlation = str(uuid.uuid4())
    sent = threading.Event()
    release = threading.Event()

    def requests() -> Iterator[streams_pb2.BatchAppendReq]:
        message = proposed(streams_pb2.BatchAppendReq.ProposedMessage)
        yield batch_req(stream, [message], correlation=correlation, final=False)
        sent.set()
        release.wait(10)
        yield batch_req(stream, [], correlation=correlation, options=False)

    call = stub.BatchAppend(requests(), timeout=0.5 if ending == "deadline" else 10)
    assert sent.wait(10)
    if ending == "cancel":
        call.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    release.set()
    expected_code = (
        grpc.StatusCode.CANCELLED if ending == "cancel" else grpc.StatusCode.DEADLINE_EXCEEDED
    )
    assert caught.value.code() == expected_code
    assert client.get_current_version(stream) is StreamState.NO_STREAM


@needs_devserver
def test_server_accepts_messages_up_to_the_client_limit(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    # 16 MiB in one message: refused for its append size, not by the transport.
    messages = [
        proposed(streams_pb2.BatchAppendReq.ProposedMessage, data=b"x" * (1024 * 1024))
        for _ in range(16)
    ]
    resp = first_batch_response(stub, batch_req(stream, messages))
    with pytest.raises(MaximumAppendSizeExceededError):
        convert(resp, stream, StreamState.ANY)


# -- ids, ticks, content types -----------------------------------------------------------------


def test_structured_ids_are_accepted_and_read_back_as_strings(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    identity = uuid.uuid4()
    msb, lsb = identity.int >> 64, identity.int & ((1 << 64) - 1)
    structured = shared_pb2.UUID(
        structured=shared_pb2.UUID.Structured(
            most_significant_bits=msb - (1 << 64) if msb >= 1 << 63 else msb,
            least_significant_bits=lsb - (1 << 64) if lsb >= 1 << 63 else lsb,
        )
    )
    message = proposed(streams_pb2.BatchAppendReq.ProposedMessage, id=structured)
    assert first_batch_response(stub, batch_req(stream, [message])).HasField("success")
    assert client.get_stream(stream)[0].id == identity


def read_stream_raw(stub: streams_pb2_grpc.StreamsStub, stream: str) -> list[streams_pb2.ReadResp]:
    options = Options(
        stream=Options.StreamOptions(stream_identifier=sid(stream), start=shared_pb2.Empty()),
        read_direction=Options.Forwards,
        count=100,
        no_filter=shared_pb2.Empty(),
        uuid_option=Options.UUIDOption(string=shared_pb2.Empty()),
    )
    return list(stub.Read(streams_pb2.ReadReq(options=options), timeout=10))


def test_recorded_event_metadata_is_type_content_type_and_created_ticks(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    before = time.time_ns() // 100
    client.append_to_stream(
        stream,
        current_version=StreamState.ANY,
        events=[
            event("A", b"{}", content_type="application/json"),
            event("B", b"x", content_type="text/plain"),
            event("C", b"{}", content_type="application/json; charset=utf-8"),
        ],
    )
    after = time.time_ns() // 100
    responses = read_stream_raw(stub, stream)
    content_types = []
    for resp in responses:
        recorded = resp.event.event
        assert set(recorded.metadata) == {"type", "content-type", "created"}
        created = recorded.metadata["created"]
        assert created.isdigit()
        # Ticks (100 ns) since the Unix epoch; a real server's clock may differ a little.
        assert before - 600 * 10**7 <= int(created) <= after + 600 * 10**7
        assert resp.event.commit_position == recorded.commit_position == recorded.prepare_position
        content_types.append(recorded.metadata["content-type"])
    assert content_types == [
        "application/json",
        "application/octet-stream",
        "application/octet-stream",
    ]


def test_reading_a_missing_stream_sends_stream_not_found(
    stub: streams_pb2_grpc.StreamsStub, stream: str
) -> None:
    responses = read_stream_raw(stub, stream)
    assert [r.WhichOneof("content") for r in responses] == ["stream_not_found"]
    assert responses[0].stream_not_found.stream_identifier.stream_name == stream.encode()


def test_reading_a_tombstoned_stream_fails_with_is_deleted(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    client.tombstone_stream(stream, current_version=StreamState.ANY)
    with pytest.raises(grpc.RpcError) as caught:
        read_stream_raw(stub, stream)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == f"Event stream '{stream}' is deleted."
    with pytest.raises(StreamIsDeleted):
        client.get_stream(stream)
    with pytest.raises(NotFound):
        client.get_stream(stream + "-never")


# -- prefix filters (the client only builds regexes) -------------------------------------------


@pytest.mark.parametrize("by", ["event_type", "stream_identifier"])
def test_all_reads_filter_by_prefix(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, by: str
) -> None:
    tag = uuid.uuid4().hex
    start = client.append_to_stream(
        f"pfx{tag}-a", current_version=StreamState.ANY, events=[event(f"pfx{tag}A")]
    )
    client.append_to_stream(f"other-{tag}", current_version=StreamState.ANY, events=[event("X")])
    client.append_to_stream(
        f"pfx{tag}-b", current_version=StreamState.ANY, events=[event(f"pfx{tag}B")]
    )
    expression = Options.FilterOptions.Expression(prefix=[f"pfx{tag}", "never-matches"])
    filter_options = Options.FilterOptions(max=32, checkpointIntervalMultiplier=1)
    getattr(filter_options, by).CopyFrom(expression)
    options = Options(
        all=Options.AllOptions(
            position=Options.Position(commit_position=start, prepare_position=start)
        ),
        read_direction=Options.Forwards,
        count=100,
        filter=filter_options,
        uuid_option=Options.UUIDOption(string=shared_pb2.Empty()),
    )
    read = list(stub.Read(streams_pb2.ReadReq(options=options), timeout=10))
    names = [r.event.event.stream_identifier.stream_name.decode() for r in read]
    assert names == [f"pfx{tag}-a", f"pfx{tag}-b"]


def test_forwards_from_the_end_reads_nothing(
    stub: streams_pb2_grpc.StreamsStub, client: EventStoreDBClient, stream: str
) -> None:
    client.append_to_stream(stream, current_version=StreamState.NO_STREAM, events=events(2))
    common = {
        "read_direction": Options.Forwards,
        "count": 10,
        "no_filter": shared_pb2.Empty(),
        "uuid_option": Options.UUIDOption(string=shared_pb2.Empty()),
    }
    from_stream_end = Options(
        stream=Options.StreamOptions(stream_identifier=sid(stream), end=shared_pb2.Empty()),
        **common,
    )
    from_all_end = Options(all=Options.AllOptions(end=shared_pb2.Empty()), **common)
    for options in (from_stream_end, from_all_end):
        assert list(stub.Read(streams_pb2.ReadReq(options=options), timeout=10)) == []
