"""Translating between the Streams protobuf messages and store calls.

Request parsing (ids, expected revisions, proposed events, filters, deadlines) and the exact
reply shapes the real server uses for failures, which clients map to exceptions by status code
and by substrings of the details (``shared/esdb-devserver-spec.md`` §a, §b.3, §b.13).
"""

from __future__ import annotations

import re
import time
import uuid

import grpc
from esdbclient.protos.Grpc import shared_pb2, status_pb2, streams_pb2
from google.protobuf import any_pb2, empty_pb2

from esworkbench.devserver.reads import DEFAULT_WINDOW, Filter
from esworkbench.devserver.records import ANY, NO_STREAM, STREAM_EXISTS, ProposedEvent, WriteResult
from esworkbench.devserver.wire import JSON_CONTENT_TYPE

DEFAULT_MAX_APPEND_SIZE = 1024 * 1024
UNLIMITED = 2**63 - 1

_Options = (
    streams_pb2.AppendReq.Options
    | streams_pb2.DeleteReq.Options
    | streams_pb2.TombstoneReq.Options
    | streams_pb2.BatchAppendReq.Options
)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MASK64 = (1 << 64) - 1


class BadRequest(Exception):
    """A malformed request: INVALID_ARGUMENT on unary paths, BadRequest in BatchAppend."""


class TooLarge(Exception):
    """The events of one append exceed the maximum append size."""


def stream_name(identifier: shared_pb2.StreamIdentifier) -> str:
    """The stream name of a ``StreamIdentifier`` (UTF-8 bytes on the wire)."""
    try:
        return bytes(identifier.stream_name).decode()
    except UnicodeDecodeError:
        raise BadRequest("Stream name is not valid UTF-8") from None


def event_id(value: shared_pb2.UUID) -> str:
    """An event id in canonical string form, from either UUID encoding clients may send."""
    kind = value.WhichOneof("value")
    if kind == "string":
        text = value.string
        if _CANONICAL_UUID.fullmatch(text):  # what clients send; skip the slow parse
            return text
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise BadRequest(f"'{text}' is not a valid event id") from None
    if kind == "structured":
        msb = value.structured.most_significant_bits & _MASK64
        lsb = value.structured.least_significant_bits & _MASK64
        return str(uuid.UUID(int=(msb << 64) | lsb))
    raise BadRequest("Event id is required")


def expected_revision(options: _Options) -> int:
    """The expected revision as the server numbers it: R >= 0, or ANY / NO_STREAM / EXISTS."""
    kind: str | None
    if isinstance(options, streams_pb2.BatchAppendReq.Options):
        kind = options.WhichOneof("expected_stream_position")
    else:
        kind = options.WhichOneof("expected_stream_revision")
    if kind in ("revision", "stream_position"):
        return int(getattr(options, kind))
    if kind == "no_stream":
        return NO_STREAM
    if kind == "stream_exists":
        return STREAM_EXISTS
    if kind == "any":
        return ANY
    raise BadRequest("Expected stream revision is required")


def proposed_event(
    message: streams_pb2.AppendReq.ProposedMessage | streams_pb2.BatchAppendReq.ProposedMessage,
) -> ProposedEvent:
    """A proposed message as a store event; ``type`` and ``content-type`` are required."""
    metadata = message.metadata
    event_type = metadata.get("type")
    if event_type is None:
        raise BadRequest("Required Metadata Property 'type' is missing")
    if not event_type:
        raise BadRequest("Event type must not be empty")
    content_type = metadata.get("content-type")
    if content_type is None:
        raise BadRequest("Required Metadata Property 'content-type' is missing")
    return ProposedEvent(
        event_id=event_id(message.id),
        type=event_type,
        is_json=content_type == JSON_CONTENT_TYPE,
        custom_metadata=message.custom_metadata,
        data=message.data,
    )


def size_on_disk(event: ProposedEvent) -> int:
    """What an event counts against the maximum append size."""
    # The real server's Event.SizeOnDisk: the type counts twice (UTF-16 code units).
    return len(event.data) + len(event.custom_metadata) + 2 * len(event.type)


def ascii_trailer(key: str, value: str) -> tuple[tuple[str, str], ...]:
    """A trailing-metadata pair, or nothing if ``value`` cannot be sent as gRPC metadata."""
    # gRPC metadata values must be printable ASCII; a non-ASCII stream name is left out.
    return ((key, value),) if value.isascii() and value.isprintable() else ()


def abort_stream_deleted(context: grpc.ServicerContext, stream: str) -> None:
    """Abort a unary call with the real server's "is deleted" status."""
    context.set_trailing_metadata(
        (("exception", "stream-deleted"), *ascii_trailer("stream-name", stream))
    )
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Event stream '{stream}' is deleted.")


def set_stream_deleted(context: grpc.ServicerContext, stream: str) -> None:
    """End a streaming call with the "is deleted" status (for generators)."""
    # For generators: end the call with a status instead of raising through grpc.
    context.set_trailing_metadata(
        (("exception", "stream-deleted"), *ascii_trailer("stream-name", stream))
    )
    context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
    context.set_details(f"Event stream '{stream}' is deleted.")


def pack_any(message: object) -> any_pb2.Any:
    """``google.protobuf.Any`` holding ``message`` (type URL ends in its full name)."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def read_count(options: streams_pb2.ReadReq.Options) -> int:
    """How many events a read may return."""
    if options.WhichOneof("count_option") == "count":
        return int(options.count)
    return UNLIMITED


def read_filter(options: streams_pb2.ReadReq.Options) -> Filter | None:
    """The compiled ``$all`` filter of a read, or None for ``no_filter``."""
    if options.WhichOneof("filter_option") != "filter":
        return None
    filter_options = options.filter
    kind = filter_options.WhichOneof("filter")
    if kind is None:
        raise BadRequest("A filter needs a stream_identifier or event_type expression")
    expression = getattr(filter_options, kind)
    window = (
        int(filter_options.max) if filter_options.WhichOneof("window") == "max" else DEFAULT_WINDOW
    )
    try:
        return Filter(
            by_stream_name=kind == "stream_identifier",
            regex=expression.regex,
            prefixes=list(expression.prefix),
            window=window,
            multiplier=int(filter_options.checkpointIntervalMultiplier),
        )
    except re.error as e:
        raise BadRequest(f"Invalid filter regex {expression.regex!r}: {e}") from None


def deadline_seconds(options: streams_pb2.BatchAppendReq.Options) -> float:
    """Seconds the client allows for this batch (either deadline encoding)."""
    kind = options.WhichOneof("deadline_option")
    if kind == "deadline":
        return float(options.deadline.seconds) + float(options.deadline.nanos) / 1e9
    if kind == "deadline_21_10_0":
        return float(options.deadline_21_10_0.ToNanoseconds()) / 1e9 - time.time()
    return float(UNLIMITED)


def status(code: grpc.StatusCode, message: str, details: object) -> status_pb2.Status:
    """A ``Status`` as BatchAppend reports errors, with ``details`` packed in an ``Any``."""
    return status_pb2.Status(code=code.value[0], message=message, details=pack_any(details))


def timeout_status() -> status_pb2.Status:
    """BatchAppend's Timeout error."""
    return status(grpc.StatusCode.DEADLINE_EXCEEDED, "Timeout", shared_pb2.Timeout())


def bad_request_status(message: str) -> status_pb2.Status:
    """BatchAppend's BadRequest error."""
    return status(
        grpc.StatusCode.INVALID_ARGUMENT, "BadRequest", shared_pb2.BadRequest(message=message)
    )


def fill_success(
    success: streams_pb2.AppendResp.Success | streams_pb2.BatchAppendResp.Success,
    result: WriteResult,
) -> None:
    """Fill Append's or BatchAppend's ``Success`` (both have the same fields)."""
    if result.revision < 0:
        success.no_stream.SetInParent()
    else:
        success.current_revision = result.revision
    if result.position is None:
        success.no_position.SetInParent()
    else:
        success.position.commit_position = result.position
        success.position.prepare_position = result.position


def append_wrong_expected_version(
    current: int, expected: int
) -> streams_pb2.AppendResp.WrongExpectedVersion:
    """Append's in-band WrongExpectedVersion (current -1 means no stream); legacy fields too."""
    wev = streams_pb2.AppendResp.WrongExpectedVersion()
    if current < 0:
        wev.current_no_stream.SetInParent()
        wev.no_stream_20_6_0.SetInParent()
    else:
        wev.current_revision = current
        wev.current_revision_20_6_0 = current
    if expected == ANY:
        wev.expected_any.SetInParent()
        wev.any_20_6_0.SetInParent()
    elif expected == STREAM_EXISTS:
        wev.expected_stream_exists.SetInParent()
        wev.stream_exists_20_6_0.SetInParent()
    elif expected == NO_STREAM:
        wev.expected_no_stream.SetInParent()
    else:
        wev.expected_revision = expected
        wev.expected_revision_20_6_0 = expected
    return wev


def batch_wrong_expected_version(current: int, expected: int) -> status_pb2.Status:
    """BatchAppend's WrongExpectedVersion error (current -1 means no stream)."""
    wev = shared_pb2.WrongExpectedVersion()
    if current < 0:
        wev.current_no_stream.CopyFrom(empty_pb2.Empty())
    else:
        wev.current_stream_revision = current
    if expected == ANY:
        wev.expected_any.CopyFrom(empty_pb2.Empty())
    elif expected == STREAM_EXISTS:
        wev.expected_stream_exists.CopyFrom(empty_pb2.Empty())
    elif expected == NO_STREAM:
        wev.expected_no_stream.CopyFrom(empty_pb2.Empty())
    else:
        wev.expected_stream_position = expected
    return status(grpc.StatusCode.ALREADY_EXISTS, "WrongExpectedVersion", wev)
