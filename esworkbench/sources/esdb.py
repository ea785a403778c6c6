"""EventStoreDB as a source: a fast reader, the plain esdbclient reader, and follow mode.

Both readers read `$all` after a commit position and yield RAW_SCHEMA batches; a test holds the
lakes they produce identical.

- ``fast``: esdbclient parses the connection string and provides TLS and credentials; the read
  itself is a `Streams.Read` call through esdbclient's generated stubs on a channel with
  ``grpc.experimental.ChannelOptions.SingleThreadedUnaryStream`` (which cuts grpcio's per-message
  cost several-fold), and the protobuf messages are decoded straight into column lists and Arrow
  batches: no per-event Python objects.
- ``plain``: esdbclient's public `read_all` / `subscribe_to_all`, the reference.

Filters (`EventFilter`): one condition goes to the server (EventStoreDB filters on one field),
every condition is re-applied on the client. A filtered read is a catch-up subscription, because
only subscriptions report checkpoints: the cursor moves even when nothing matches. Unfiltered
reads are plain reads of `$all` (system events are dropped on the client, so the cursor is
exact). Follow mode keeps the subscription open after catching up and flushes live events
within a fraction of a second, until the sync is stopped.

esdbclient objects and protobuf messages never leave this module.

Example:
    >>> from esworkbench.lake import Lake, sync
    >>> source = EsdbSource("esdb://127.0.0.1:2113?tls=false", reader="fast")  # doctest: +SKIP
    >>> with Lake("data/lake/workbench.duckdb") as lake:                  # doctest: +SKIP
    ...     print(sync(source, lake).summary())
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import grpc
import grpc.experimental
import pyarrow as pa
import pyarrow.compute as pc
from esdbclient import EventStoreDBClient
from esdbclient.connection_spec import ConnectionSpec
from esdbclient.exceptions import EventStoreDBClientException
from esdbclient.protos.Grpc import shared_pb2, streams_pb2, streams_pb2_grpc

from esworkbench.config import check_esdb_uri, esdbclient_uri, mask_uri
from esworkbench.errors import ConfigError, SourceError
from esworkbench.events import RAW_SCHEMA
from esworkbench.sources import EventFilter, SourceBatch
from esworkbench.sources._esdb_decode import (
    Messages,
    created_from_datetimes,
    created_from_tick_strings,
    direct_fast,
    direct_plain,
    fast_handler,
    plain_handler,
    pump,
    window,
)

__all__ = ["EsdbSource", "Reader"]

Reader = Literal["fast", "plain"]

_UNLIMITED = 2**63 - 1
# esdbclient caps received messages at 17 MiB, and grpcio's default is 4 MiB, but one read
# response carries one whole event, and a server accepts events up to its configured maximum
# append size, which it does not report to clients. A reader that cannot receive an event the
# server accepted could never sync past it, so the readers accept messages of any size (-1):
# the limit is then whatever the server allowed the writer.
_RECEIVE_LIMIT = "grpc.max_receive_message_length"


def _receive_any_size(options: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    return (*(o for o in options if o[0] != _RECEIVE_LIMIT), (_RECEIVE_LIMIT, -1))


class _Client(EventStoreDBClient):
    """esdbclient's client whose channels receive messages of any size (see _RECEIVE_LIMIT)."""

    def _construct_grpc_channel(
        self, grpc_target: str, grpc_options: tuple[tuple[str, Any], ...] = ()
    ) -> grpc.Channel:
        self.grpc_options = _receive_any_size(self.grpc_options)
        return super()._construct_grpc_channel(grpc_target, _receive_any_size(grpc_options))


# An empty batch that only moves the checkpoint is sent at most this often (each is a commit).
_CHECKPOINT_SECONDS = 1.0


class EsdbSource:
    """Events of an EventStoreDB `$all`, after a position, optionally filtered and followed.

    Args:
        uri: an esdb://, esdb+discover://, kurrentdb:// or kurrentdb+discover:// connection
            string (credentials allowed; they never appear in keys, descriptions or errors).
        reader: "fast" (own decode on a single-threaded channel) or "plain" (esdbclient).
        filter: which events (EventFilter); system events are left out unless it says so.
        follow: keep reading live events after catching up, until the sync is stopped.
        root_certificates: PEM bytes for TLS when the CA is not in the URI (tlsCaFile=...).
        accept_compression: let the fast reader accept gzip-compressed responses from servers
            that offer them (KurrentDB 25.1+). Off by default: bench/compression.py measures
            the client's CPU per event with and without, and decompressing costs more than it
            saves unless the network, not the client, is the bottleneck.

    Example:
        >>> EsdbSource("esdb://admin:changeit@db:2113?tls=true").describe()
        'EventStoreDB esdb://admin:***@db:2113?tls=true (fast reader)'
    """

    def __init__(
        self,
        uri: str,
        *,
        reader: Reader = "fast",
        filter: EventFilter | None = None,
        follow: bool = False,
        root_certificates: bytes | None = None,
        accept_compression: bool = False,
    ) -> None:
        if reader not in ("fast", "plain"):
            raise ConfigError(f"reader must be 'fast' or 'plain', got {reader!r}")
        # Checked here, before any library sees it: esdbclient would read part of a password
        # holding '@' as a host name and quote it in keys and errors.
        check_esdb_uri(uri, name="the EventStoreDB connection string")
        # KurrentDB's schemes name the same protocol; esdbclient knows only its own names.
        self._client_uri = esdbclient_uri(uri)
        try:
            ConnectionSpec(self._client_uri)
        except ValueError as e:
            raise ConfigError(_spec_problem(uri, str(e))) from None
        self.uri = uri
        self.reader: Reader = reader
        self.filter = filter or EventFilter()
        self.follow = follow
        self._root_certificates = root_certificates
        self.accept_compression = accept_compression
        self._client: EventStoreDBClient | None = None
        self._lock = threading.Lock()
        self._cancel: Callable[[], None] | None = None
        self._cancelled = threading.Event()

    # -- identity -------------------------------------------------------------------------

    @property
    def masked_uri(self) -> str:
        """The URI with its password masked."""
        return mask_uri(self.uri)

    @property
    def key(self) -> str:
        """`esdb://[user@]host:port[,host:port]` plus the filter: no password, no options."""
        try:
            spec = ConnectionSpec(self._client_uri)
        except ValueError as e:
            raise ConfigError(_spec_problem(self.uri, str(e))) from None
        user = f"{spec.username}@" if spec.username else ""
        text = f"{spec.scheme}://{user}{','.join(spec.targets)}"
        conditions = self.filter.describe()
        return f"{text}|{conditions}" if conditions else text

    def describe(self) -> str:
        """For `_sync_runs` and progress output (password masked)."""
        extras = [f"{self.reader} reader"]
        if self.follow:
            extras.append("follow")
        if self.filter.describe():
            extras.append(self.filter.describe())
        return f"EventStoreDB {self.masked_uri} ({', '.join(extras)})"

    def __repr__(self) -> str:
        return f"EsdbSource({self.masked_uri!r}, reader={self.reader!r}, follow={self.follow})"

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> EventStoreDBClient:
        if self._client is None:
            try:
                self._client = _Client(self._client_uri, root_certificates=self._root_certificates)
            except (EventStoreDBClientException, ValueError) as e:
                raise SourceError(
                    f"cannot connect to EventStoreDB at {self.masked_uri}: "
                    f"{_mask(str(e), self.uri)}"
                ) from None
        return self._client

    def close(self) -> None:
        """Close the connection (a new read reconnects)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def cancel(self) -> None:
        """Stop a read in progress from another thread; its iterator then ends."""
        self._cancelled.set()
        with self._lock:
            cancel = self._cancel
        if cancel is not None:
            cancel()

    def head_position(self) -> int | None:
        """The commit position of the last event in `$all` now (for progress ETAs)."""
        try:
            return int(self._connect().get_commit_position(filter_exclude=(), timeout=10))
        except EventStoreDBClientException as e:
            raise self._error("reading the head position", None, e) from None

    def event_id_at(self, position: int) -> str | None:
        """The id of the event at exactly this commit position in `$all`, or None.

        Unfiltered (system events included): the position was the lake's, whatever the filter.

        Example:
            >>> EsdbSource(server.uri).event_id_at(1234)               # doctest: +SKIP
            '5f0c2b1e-...'
        """
        try:
            found = list(
                self._connect().read_all(
                    commit_position=position, limit=1, filter_exclude=(), timeout=10
                )
            )
        except EventStoreDBClientException as e:
            raise self._error("reading the event at the checkpoint", position, e) from None
        if not found or found[0].commit_position != position:
            return None
        return str(found[0].id)

    def _error(self, doing: str, after: int | None, e: BaseException) -> SourceError:
        where = "the start" if after is None else f"position {after}"
        detail = (
            _grpc_detail(e)
            if isinstance(e, grpc.RpcError)
            else (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        )
        if "ssl" in detail.lower() and "handshake" in detail.lower():
            # A TLS client talking to a plaintext server: the handshake gets an HTTP/2 frame
            # back (WRONG_VERSION_NUMBER). The fix is in the URI, not the server.
            return SourceError(
                f"EventStoreDB at {self.masked_uri} did not answer the TLS handshake (the URI "
                "asks for TLS, the default, and the server answered in plain text). If the "
                "server runs insecure (the dev server, KurrentDB with --insecure), say so in "
                f"the URI: {_tls_false(self.masked_uri)}; otherwise check the server's "
                "certificate (tlsCaFile=...)"
            )
        return SourceError(
            f"EventStoreDB at {self.masked_uri} failed while {doing} after {where}: "
            f"{_mask(detail, self.uri)}. Check that the server is running and reachable; "
            "syncing again resumes where this stopped."
        )

    # -- reading --------------------------------------------------------------------------

    def read_batches(self, after: int | None, *, batch_size: int) -> Iterator[SourceBatch]:
        """RAW batches of events with commit position > `after` (None: from the start).

        Ends when the reader has caught up with the log (or passed the filter's
        to_position); in follow mode it goes on until `cancel()` or the iterator is closed.

        Example:
            >>> src = EsdbSource(server.uri)                              # doctest: +SKIP
            >>> batches = src.read_batches(None, batch_size=1000)       # doctest: +SKIP
            >>> sum(b.events.num_rows for b in batches)                   # doctest: +SKIP
            1234
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._cancelled.clear()
        f = self.filter
        if f.to_position is not None and after is not None and after >= f.to_position:
            yield SourceBatch(_empty(), after)
            return
        server = f.server_filter()
        subscribe = self.follow or server is not None
        if self.reader == "fast":
            messages, created = self._fast_messages(after, server, subscribe, batch_size)
        else:
            messages, created = self._plain_messages(after, server, subscribe, batch_size)
        yield from self._batches(messages, created, after, batch_size, subscribe)

    def _batches(
        self,
        messages: Messages,
        created: Callable[[list[Any]], pa.Array],
        after: int | None,
        batch_size: int,
        subscribe: bool,
    ) -> Iterator[SourceBatch]:
        f = self.filter
        last_sent = after
        last_time = time.monotonic()
        try:
            for cols, checkpoint, final in messages:
                if self._cancelled.is_set():
                    return
                if len(cols):
                    raw = cols.batch(created)
                    if after is not None:
                        raw = raw.filter(
                            pc.greater(raw.column("commit_position"), pa.scalar(after, pa.uint64()))
                        )
                    done = False
                    if (
                        f.to_position is not None
                        and checkpoint is not None
                        and (checkpoint >= f.to_position)
                    ):
                        checkpoint, done = f.to_position, True
                    yield SourceBatch(f.apply(raw), checkpoint)
                    last_sent, last_time = checkpoint, time.monotonic()
                    if done:
                        return
                elif (
                    checkpoint is not None
                    and checkpoint != last_sent
                    and (final or time.monotonic() - last_time >= _CHECKPOINT_SECONDS)
                ):
                    if f.to_position is not None and checkpoint >= f.to_position:
                        yield SourceBatch(_empty(), f.to_position)
                        return
                    yield SourceBatch(_empty(), checkpoint)
                    last_sent, last_time = checkpoint, time.monotonic()
                if final and not (self.follow and subscribe):
                    return
        except grpc.RpcError as e:
            if self._cancelled.is_set() or e.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._error("reading $all", last_sent, e) from None
        except EventStoreDBClientException as e:
            if self._cancelled.is_set():
                return
            raise self._error("reading $all", last_sent, e) from None

    def _set_cancel(self, cancel: Callable[[], None] | None) -> None:
        with self._lock:
            self._cancel = cancel
        if cancel is not None and self._cancelled.is_set():
            cancel()

    # -- fast reader ----------------------------------------------------------------------

    def _fast_channel(self) -> tuple[grpc.Channel, Any, tuple[tuple[str, str], ...]]:
        client = self._connect()
        spec = client.connection_spec
        options: tuple[tuple[str, Any], ...] = (
            *_receive_any_size(client.grpc_options),
            (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
        )
        if not self.accept_compression:
            # Advertise identity only (bit 0) in grpc-accept-encoding, so a server that
            # compresses responses sends this reader plain ones.
            options = (*options, ("grpc.compression_enabled_algorithms_bitset", 1))
        target = client.connection_target
        if spec.options.Tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=client.root_certificates,
                private_key=client.private_key,
                certificate_chain=client.certificate_chain,
            )
            channel = grpc.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        call_credentials = client.construct_call_credentials(spec.username, spec.password)
        leader = "true" if spec.options.NodePreference == "leader" else "false"
        metadata = (("connection-name", spec.options.ConnectionName), ("requires-leader", leader))
        return channel, call_credentials, metadata

    def _fast_messages(
        self, after: int | None, server: tuple[str, str] | None, subscribe: bool, batch_size: int
    ) -> tuple[Messages, Callable[[list[Any]], pa.Array]]:
        Options = streams_pb2.ReadReq.Options
        options = Options()
        if after is None:
            options.all.start.CopyFrom(shared_pb2.Empty())
        else:
            options.all.position.commit_position = after
            options.all.position.prepare_position = after
        options.read_direction = Options.Forwards
        options.resolve_links = False
        if subscribe:
            options.subscription.CopyFrom(Options.SubscriptionOptions())
        else:
            options.count = _UNLIMITED
        if server is None:
            options.no_filter.CopyFrom(shared_pb2.Empty())
        else:
            field, regex = server
            size, multiplier = window(batch_size)
            options.filter.max = size
            options.filter.checkpointIntervalMultiplier = multiplier
            expression = getattr(options.filter, field.replace("_name", "_identifier"))
            expression.regex = f"^(?:{regex})$"
        options.uuid_option.string.CopyFrom(shared_pb2.Empty())
        channel, credentials, metadata = self._fast_channel()
        stub = streams_pb2_grpc.StreamsStub(channel)

        def messages() -> Messages:
            try:
                call = stub.Read(
                    streams_pb2.ReadReq(options=options), metadata=metadata, credentials=credentials
                )
                self._set_cancel(call.cancel)
                if self.follow and subscribe:
                    yield from pump(iter(call), fast_handler, batch_size)
                else:
                    yield from direct_fast(call, batch_size, subscribe)
            finally:
                self._set_cancel(None)
                channel.close()

        return messages(), created_from_tick_strings

    # -- plain reader ---------------------------------------------------------------------

    def _plain_messages(
        self, after: int | None, server: tuple[str, str] | None, subscribe: bool, batch_size: int
    ) -> tuple[Messages, Callable[[list[Any]], pa.Array]]:
        client = self._connect()
        include = () if server is None else (f"(?:{server[1]})",)
        by_stream = server is not None and server[0] == "stream_name"

        def messages() -> Messages:
            response: Any = None
            try:
                if subscribe:
                    size, multiplier = window(batch_size)
                    response = client.subscribe_to_all(
                        commit_position=after,
                        filter_exclude=(),
                        filter_include=include,
                        filter_by_stream_name=by_stream,
                        include_checkpoints=True,
                        include_caught_up=True,
                        window_size=size,
                        checkpoint_interval_multiplier=multiplier,
                    )
                else:
                    response = client.read_all(
                        commit_position=after,
                        filter_exclude=(),
                        filter_include=include,
                        filter_by_stream_name=by_stream,
                    )
                self._set_cancel(response.stop)
                if self.follow and subscribe:
                    yield from pump(response, plain_handler, batch_size)
                else:
                    yield from direct_plain(response, batch_size)
            finally:
                self._set_cancel(None)
                if response is not None:
                    response.stop()

        return messages(), created_from_datetimes


def _empty() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=RAW_SCHEMA)


def _grpc_detail(e: grpc.RpcError) -> str:
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    return f"{code.name if code is not None else 'gRPC error'}: {details}"


def _tls_false(uri: str) -> str:
    """The (masked) URI with ``tls=false`` set."""
    if "tls=true" in uri.lower():
        start = uri.lower().index("tls=true")
        return uri[:start] + "tls=false" + uri[start + len("tls=true") :]
    return uri + ("&" if "?" in uri else "?") + "tls=false"


def _spec_problem(uri: str, detail: str) -> str:
    """Why esdbclient refused a connection string, with the fix when it is a known one."""
    problem = f"not an EventStoreDB connection string: {mask_uri(uri)!r} ({_mask(detail, uri)})"
    if "Username and password are required" in detail:
        # esdbclient demands credentials whenever TLS is on, and TLS is on unless the URI
        # says tls=false: most often the URI of an insecure server missing that option.
        problem = (
            f"{mask_uri(uri)!r} asks for TLS (on unless the URI says tls=false), and with TLS "
            "the client needs a user name and password. For a server running insecure (the "
            f"dev server, KurrentDB with --insecure) add tls=false: {_tls_false(mask_uri(uri))}; "
            "for a secure one add the credentials: esdb://USER:PASSWORD@HOST:2113"
        )
    return problem


def _mask(text: str, uri: str) -> str:
    # Library messages may quote the connection string (as given, or as translated for the
    # client); never let its password through.
    for form in (uri, esdbclient_uri(uri)):
        masked = mask_uri(form)
        if form != masked:
            text = text.replace(form, masked)
    return text
