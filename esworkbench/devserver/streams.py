"""The ``event_store.client.streams.Streams`` service over an ``EventStore``.

Parsing and reply shapes live in ``messages``; this module is the flow of each RPC.

``Read`` yields pre-serialized ``ReadResp`` bytes: it is registered without a response
serializer (see ``server.py``), so stored bytes go straight to the wire.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import grpc
from esdbclient.protos.Grpc import shared_pb2, status_pb2, streams_pb2, streams_pb2_grpc

from esworkbench.devserver.messages import (
    DEFAULT_MAX_APPEND_SIZE,
    UNLIMITED,
    BadRequest,
    TooLarge,
    abort_stream_deleted,
    append_wrong_expected_version,
    ascii_trailer,
    bad_request_status,
    batch_wrong_expected_version,
    deadline_seconds,
    expected_revision,
    fill_success,
    proposed_event,
    read_count,
    read_filter,
    set_stream_deleted,
    size_on_disk,
    status,
    stream_name,
    timeout_status,
)
from esworkbench.devserver.reads import read_all, read_stream, subscribe_all, subscribe_stream
from esworkbench.devserver.records import (
    ANY,
    InvalidStreamName,
    ProposedEvent,
    StreamDeleted,
    WrongExpectedVersion,
)
from esworkbench.devserver.store import EventStore


class _ContextLiveness:
    """Lets a subscription sleep on the store's condition until new events or call end."""

    def __init__(self, store: EventStore, context: grpc.ServicerContext) -> None:
        self._store = store
        self._ended = False
        if not context.add_callback(self._on_call_end):
            self._ended = True

    def _on_call_end(self) -> None:
        self._ended = True
        self._store.wake()

    def _has_ended(self) -> bool:
        return self._ended

    def wait_until(self, ready: Callable[[], bool]) -> bool:
        return self._store.wait(ready, self._has_ended)


@dataclass
class _PendingBatch:
    correlation_id: shared_pb2.UUID
    identifier: shared_pb2.StreamIdentifier
    stream: str
    expected: int
    expires_at: float
    events: list[ProposedEvent] = field(default_factory=list)
    size: int = 0
    error: status_pb2.Status | None = None


class StreamsServicer(streams_pb2_grpc.StreamsServicer):
    """Streams service over an ``EventStore``.

    Args:
        store: The event store.
        max_append_size: Largest total size of one append (data + custom metadata + 2 x type).
    """

    def __init__(self, store: EventStore, *, max_append_size: int = DEFAULT_MAX_APPEND_SIZE):
        self._store = store
        self._max_append_size = max_append_size

    # -- Read ----------------------------------------------------------------------------------

    def Read(self, request: streams_pb2.ReadReq, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Stream reads, ``$all`` reads and catch-up subscriptions (yields serialized ReadResp)."""
        options = request.options
        stream_option = options.WhichOneof("stream_option")
        name = ""
        try:
            if stream_option == "stream":
                name = stream_name(options.stream.stream_identifier)
                responses = self._read_stream(options, name, context)
            elif stream_option == "all":
                responses = self._read_all(options, context)
            else:
                raise BadRequest("Read options need a stream or $all")
            yield from responses
            if self._store.closed:
                # A subscription cut short by shutdown must not look like a completed read.
                context.set_code(grpc.StatusCode.UNAVAILABLE)
                context.set_details("Server is shutting down")
        except StreamDeleted:
            set_stream_deleted(context, name)
        except BadRequest as e:
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(str(e))

    def _read_stream(
        self, options: streams_pb2.ReadReq.Options, name: str, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        stream_options = options.stream
        revision_option = stream_options.WhichOneof("revision_option")
        revision = int(stream_options.revision) if revision_option == "revision" else None
        if options.WhichOneof("count_option") == "subscription":
            return subscribe_stream(
                self._store,
                _ContextLiveness(self._store, context),
                name,
                after=revision,
                from_end=revision_option == "end",
                resolve_links=options.resolve_links,
            )
        backwards = options.read_direction == streams_pb2.ReadReq.Options.Backwards
        if revision_option == "start" or (revision_option is None and not backwards):
            revision = 0
        elif revision_option == "end" and not backwards:
            revision = UNLIMITED  # forwards from the end: nothing
        return read_stream(
            self._store,
            name,
            revision=revision,
            backwards=backwards,
            count=read_count(options),
            resolve_links=options.resolve_links,
        )

    def _read_all(
        self, options: streams_pb2.ReadReq.Options, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        all_options = options.all
        all_option = all_options.WhichOneof("all_option")
        position = int(all_options.position.commit_position) if all_option == "position" else None
        flt = read_filter(options)
        if options.WhichOneof("count_option") == "subscription":
            return subscribe_all(
                self._store,
                _ContextLiveness(self._store, context),
                after=position,
                from_end=all_option == "end",
                flt=flt,
                resolve_links=options.resolve_links,
            )
        backwards = options.read_direction == streams_pb2.ReadReq.Options.Backwards
        if all_option == "start":
            position = None if not backwards else 0
        elif all_option == "end" and not backwards:
            position = UNLIMITED  # forwards from the end: nothing
        return read_all(
            self._store,
            position=position,
            backwards=backwards,
            count=read_count(options),
            flt=flt,
            resolve_links=options.resolve_links,
        )

    # -- Append --------------------------------------------------------------------------------

    def Append(
        self, request_iterator: Iterable[streams_pb2.AppendReq], context: grpc.ServicerContext
    ) -> streams_pb2.AppendResp:
        """Unary append: options first, then one message per event."""
        requests = iter(request_iterator)
        first = next(requests, None)
        stream = ""
        expected = ANY
        try:
            if first is None or first.WhichOneof("content") != "options":
                raise BadRequest("The first message must be options")
            options = first.options
            stream = stream_name(options.stream_identifier)
            expected = expected_revision(options)
            events: list[ProposedEvent] = []
            size = 0
            for request in requests:
                if request.WhichOneof("content") != "proposed_message":
                    raise BadRequest("Expected a proposed message")
                event = proposed_event(request.proposed_message)
                size += size_on_disk(event)
                if size > self._max_append_size:
                    raise TooLarge
                events.append(event)
            result = self._store.append(stream, expected, events)
        except (BadRequest, InvalidStreamName) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except TooLarge:
            context.set_trailing_metadata(
                (
                    ("exception", "maximum-append-size-exceeded"),
                    ("maximum-append-size", str(self._max_append_size)),
                )
            )
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Maximum Append Size of {self._max_append_size} Exceeded.",
            )
        except StreamDeleted:
            abort_stream_deleted(context, stream)
        except WrongExpectedVersion as e:
            return streams_pb2.AppendResp(
                wrong_expected_version=append_wrong_expected_version(e.current, expected)
            )
        response = streams_pb2.AppendResp()
        fill_success(response.success, result)
        return response

    # -- BatchAppend ---------------------------------------------------------------------------

    def BatchAppend(
        self, request_iterator: Iterable[streams_pb2.BatchAppendReq], context: grpc.ServicerContext
    ) -> Iterator[streams_pb2.BatchAppendResp]:
        """Bidirectional batch append: each correlation id is written when ``is_final`` arrives.

        A call cancelled, or past its deadline, before the final message writes nothing.
        """
        pending: dict[bytes, _PendingBatch] = {}
        try:
            for request in request_iterator:
                response = self._batch_step(request, pending, context)
                if response is not None:
                    yield response
        except grpc.RpcError:
            return  # the client went away; what was not final is dropped

    def _batch_step(
        self,
        request: streams_pb2.BatchAppendReq,
        pending: dict[bytes, _PendingBatch],
        context: grpc.ServicerContext,
    ) -> streams_pb2.BatchAppendResp | None:
        key = request.correlation_id.SerializeToString()
        batch = pending.get(key)
        if batch is None:
            if not request.HasField("options"):
                return None  # unknown correlation id: the real server ignores it too
            batch = self._start_batch(request)
            pending[key] = batch
        if batch.error is None:
            try:
                for message in request.proposed_messages:
                    event = proposed_event(message)
                    batch.size += size_on_disk(event)
                    batch.events.append(event)
                if batch.size > self._max_append_size:
                    batch.error = status(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "MaximumAppendSizeExceeded",
                        shared_pb2.MaximumAppendSizeExceeded(maxAppendSize=self._max_append_size),
                    )
            except BadRequest as e:
                batch.error = bad_request_status(str(e))
        if not request.is_final:
            return None
        del pending[key]
        if batch.error is None and time.monotonic() > batch.expires_at:
            batch.error = timeout_status()
        if batch.error is None and not context.is_active():
            return None  # cancelled before the final message was handled: write nothing
        response = streams_pb2.BatchAppendResp(
            correlation_id=batch.correlation_id, stream_identifier=batch.identifier
        )
        if batch.error is not None:
            response.error.CopyFrom(batch.error)
            return response
        try:
            result = self._store.append(batch.stream, batch.expected, batch.events)
        except WrongExpectedVersion as e:
            response.error.CopyFrom(batch_wrong_expected_version(e.current, batch.expected))
            return response
        except StreamDeleted:
            response.error.CopyFrom(
                status(
                    grpc.StatusCode.NOT_FOUND,
                    "StreamDeleted",
                    shared_pb2.StreamDeleted(stream_identifier=batch.identifier),
                )
            )
            return response
        except InvalidStreamName as e:
            response.error.CopyFrom(bad_request_status(str(e)))
            return response
        fill_success(response.success, result)
        return response

    def _start_batch(self, request: streams_pb2.BatchAppendReq) -> _PendingBatch:
        options = request.options
        batch = _PendingBatch(
            correlation_id=request.correlation_id,
            identifier=options.stream_identifier,
            stream="",
            expected=ANY,
            expires_at=time.monotonic() + deadline_seconds(options),
        )
        try:
            batch.stream = stream_name(options.stream_identifier)
            batch.expected = expected_revision(options)
        except BadRequest as e:
            batch.error = bad_request_status(str(e))
        if batch.error is None and batch.expires_at <= time.monotonic():
            batch.error = timeout_status()
        return batch

    # -- Delete / Tombstone --------------------------------------------------------------------

    def Delete(
        self, request: streams_pb2.DeleteReq, context: grpc.ServicerContext
    ) -> streams_pb2.DeleteResp:
        """Soft delete."""
        stream, expected = self._delete_target(request.options, context)
        position = self._guard_delete(context, stream, expected, self._store.delete)
        return streams_pb2.DeleteResp(
            position=streams_pb2.DeleteResp.Position(
                commit_position=position, prepare_position=position
            )
        )

    def Tombstone(
        self, request: streams_pb2.TombstoneReq, context: grpc.ServicerContext
    ) -> streams_pb2.TombstoneResp:
        """Hard delete."""
        stream, expected = self._delete_target(request.options, context)
        position = self._guard_delete(context, stream, expected, self._store.tombstone)
        return streams_pb2.TombstoneResp(
            position=streams_pb2.TombstoneResp.Position(
                commit_position=position, prepare_position=position
            )
        )

    @staticmethod
    def _delete_target(
        options: streams_pb2.DeleteReq.Options | streams_pb2.TombstoneReq.Options,
        context: grpc.ServicerContext,
    ) -> tuple[str, int]:
        try:
            return stream_name(options.stream_identifier), expected_revision(options)
        except BadRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises

    @staticmethod
    def _guard_delete(
        context: grpc.ServicerContext,
        stream: str,
        expected: int,
        operation: Callable[[str, int], int],
    ) -> int:
        try:
            return operation(stream, expected)
        except InvalidStreamName as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except StreamDeleted:
            abort_stream_deleted(context, stream)
        except WrongExpectedVersion as e:
            # The real server says "Delete" for tombstones too; clients match on this text.
            context.set_trailing_metadata(
                (
                    ("exception", "wrong-expected-version"),
                    *ascii_trailer("stream-name", stream),
                    ("expected-version", str(expected)),
                    ("actual-version", str(e.current)),
                )
            )
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Delete failed due to WrongExpectedVersion. Stream: {stream}, "
                f"Expected version: {expected}, Actual version: {e.current}",
            )
        raise AssertionError("unreachable")  # pragma: no cover
