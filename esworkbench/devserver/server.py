"""Running the development server: in-process (``start``) or in the foreground (``serve_forever``).

The server is a standard grpcio thread-pool server. Each open read or subscription holds one
worker thread, so the pool is sized generously; live subscriptions sleep on a condition
variable, not in a poll loop.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

import grpc
from esdbclient.protos.Grpc import (
    gossip_pb2_grpc,
    projections_pb2_grpc,
    streams_pb2,
)

from esworkbench.devserver.log import LOG_FILE_NAME, FileLog, MemoryLog
from esworkbench.devserver.messages import DEFAULT_MAX_APPEND_SIZE
from esworkbench.devserver.persistent_service import (
    PERSISTENT_SERVICE,
    PersistentSubscriptionsServicer,
    Registry,
    persistent_handlers,
)
from esworkbench.devserver.salvage import SalvageReport, salvage_log
from esworkbench.devserver.services import GossipServicer, ProjectionsServicer
from esworkbench.devserver.store import EventStore
from esworkbench.devserver.streams import StreamsServicer
from esworkbench.errors import DevServerError

_log = logging.getLogger(__name__)

DEFAULT_PORT = 2113
"""EventStoreDB's own default port, used when serving in the foreground."""

# Clients may send up to their own 17 MiB receive limit; leave room for framing.
MAX_RECEIVE_MESSAGE_LENGTH = 32 * 1024 * 1024
_STREAMS_SERVICE = "event_store.client.streams.Streams"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
_COMPRESS_LEVEL_HIGH = 3  # grpc_compression_level GRPC_COMPRESS_LEVEL_HIGH: gzip when accepted


def _streams_handlers(servicer: StreamsServicer) -> dict[str, grpc.RpcMethodHandler]:
    # As add_StreamsServicer_to_server, except that Read's responses are already serialized.
    return {
        "Read": grpc.unary_stream_rpc_method_handler(
            servicer.Read,
            request_deserializer=streams_pb2.ReadReq.FromString,
            response_serializer=None,  # Read yields ReadResp bytes serialized at write time
        ),
        "Append": grpc.stream_unary_rpc_method_handler(
            servicer.Append,
            request_deserializer=streams_pb2.AppendReq.FromString,
            response_serializer=streams_pb2.AppendResp.SerializeToString,
        ),
        "Delete": grpc.unary_unary_rpc_method_handler(
            servicer.Delete,
            request_deserializer=streams_pb2.DeleteReq.FromString,
            response_serializer=streams_pb2.DeleteResp.SerializeToString,
        ),
        "Tombstone": grpc.unary_unary_rpc_method_handler(
            servicer.Tombstone,
            request_deserializer=streams_pb2.TombstoneReq.FromString,
            response_serializer=streams_pb2.TombstoneResp.SerializeToString,
        ),
        "BatchAppend": grpc.stream_stream_rpc_method_handler(
            servicer.BatchAppend,
            request_deserializer=streams_pb2.BatchAppendReq.FromString,
            response_serializer=streams_pb2.BatchAppendResp.SerializeToString,
        ),
    }


def open_store(data_dir: str | Path | None, *, salvage: bool = False) -> EventStore:
    """Open the event store: in memory, or the log file in ``data_dir`` (created if missing).

    Args:
        data_dir: Directory of the durable log; None keeps everything in memory.
        salvage: Repair a damaged log (copied aside first) instead of refusing it.

    Raises:
        DevServerError: The log is damaged (and ``salvage`` is off), not a dev-server log of
            this format version, or in use by another server.
    """
    return _open_store(data_dir, salvage=salvage)[0]


def _open_store(
    data_dir: str | Path | None, *, salvage: bool
) -> tuple[EventStore, SalvageReport | None]:
    if data_dir is None:
        return EventStore(MemoryLog()), None
    directory = Path(data_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DevServerError(f"cannot create data directory {directory}: {e}") from e
    log = FileLog(directory / LOG_FILE_NAME)
    try:
        report = salvage_log(log) if salvage else None
        return EventStore(log, log.read_records()), report
    except BaseException:
        log.close()
        raise


class DevServer:
    """An EventStoreDB-compatible gRPC server for development, demos and tests.

    Not a production store: a single node, no TLS, no authentication, no projections, and
    every event indexed in memory.

    Args:
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one (see ``port`` after ``start()``).
        data_dir: Directory for the durable log; None keeps everything in memory.
        advertise_host: Host announced by ``Gossip.Read`` (default: ``host``, or 127.0.0.1
            when listening on all interfaces).
        advertise_port: Port announced by ``Gossip.Read`` (default: the bound port).
        max_append_size: Largest total size of one append, in bytes.
        max_workers: gRPC worker threads; each open read or subscription holds one.
        salvage: Repair a damaged log instead of refusing to start (see
            ``esworkbench.devserver.salvage``); the report is in ``salvage_report``.
        compress_responses: ``"gzip"`` compresses responses for clients that accept gzip (as
            KurrentDB 25.1+ can for reads; here every response qualifies); None sends them
            uncompressed.

    Example:
        >>> server = DevServer().start()
        >>> server.uri.startswith("esdb://127.0.0.1:")
        True
        >>> server.stop()
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        *,
        advertise_host: str | None = None,
        advertise_port: int | None = None,
        max_append_size: int = DEFAULT_MAX_APPEND_SIZE,
        max_workers: int = 128,
        salvage: bool = False,
        compress_responses: Literal["gzip"] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._advertise_host = advertise_host
        self._advertise_port = advertise_port
        self._max_append_size = max_append_size
        self._max_workers = max_workers
        if compress_responses not in (None, "gzip"):
            raise DevServerError(
                f"unknown response compression {compress_responses!r}: use 'gzip' or None"
            )
        self._compress = compress_responses == "gzip"
        self._server: grpc.Server | None = None
        self._store: EventStore | None = None
        self._salvage = salvage
        self.salvage_report: SalvageReport | None = None
        """What ``--salvage`` did to the log, once started with ``salvage=True``."""

    @property
    def connect_host(self) -> str:
        """The host clients should dial."""
        if self._advertise_host:
            return self._advertise_host
        return "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host

    @property
    def uri(self) -> str:
        """The ``esdb://`` connection string for this server."""
        host = self.connect_host
        if ":" in host and not host.startswith("["):  # an IPv6 literal
            host = f"[{host}]"
        return f"esdb://{host}:{self.port}?tls=false"

    @property
    def store(self) -> EventStore:
        """The running server's event store."""
        if self._store is None:
            raise DevServerError("the development server is not running; call start() first")
        return self._store

    def start(self) -> DevServer:
        """Open the store, bind the port and start serving in background threads.

        Raises:
            DevServerError: The port cannot be bound or the data directory cannot be used.
        """
        if self._server is not None:
            raise DevServerError("the development server is already running")
        store, self.salvage_report = _open_store(self.data_dir, salvage=self._salvage)
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="esdb-devserver"
            ),
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
                ("grpc.max_send_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
                # Without this, grpc on Linux lets a second server bind the same port.
                ("grpc.so_reuseport", 0),
                # A compression *level* (not an algorithm) makes gRPC pick, per call, the best
                # algorithm the client lists in grpc-accept-encoding, and send identity to
                # clients that list none; a fixed algorithm would break such clients.
                *(
                    (("grpc.default_compression_level", _COMPRESS_LEVEL_HIGH),)
                    if self._compress
                    else ()
                ),
            ],
        )
        try:
            bound = server.add_insecure_port(f"{self._bind_host()}:{self.port}")
        except RuntimeError as e:
            bound = 0
            cause: Exception | None = e
        else:
            cause = None
        if not bound:
            store.close()
            raise DevServerError(
                f"cannot listen on {self.host}:{self.port}: is another server using that port?"
            ) from cause
        self.port = bound
        gossip = GossipServicer(self.connect_host, self._advertise_port or bound)
        streams = StreamsServicer(store, max_append_size=self._max_append_size)
        handlers = _streams_handlers(streams)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_STREAMS_SERVICE, handlers),)
        )
        server.add_registered_method_handlers(_STREAMS_SERVICE, handlers)
        gossip_pb2_grpc.add_GossipServicer_to_server(gossip, server)
        persistent = persistent_handlers(PersistentSubscriptionsServicer(Registry(store)))
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(PERSISTENT_SERVICE, persistent),)
        )
        server.add_registered_method_handlers(PERSISTENT_SERVICE, persistent)
        projections_pb2_grpc.add_ProjectionsServicer_to_server(ProjectionsServicer(), server)
        server.start()
        self._server = server
        self._store = store
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (ending subscriptions) and close the log."""
        server, store = self._server, self._store
        self._server = self._store = None
        if store is not None:
            # Wake live subscriptions first so the grace period is not spent waiting on them.
            with store.cond:
                store.closed = True
                store.cond.notify_all()
        if server is not None:
            server.stop(grace).wait()
        if store is not None:
            store.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (True) or ``timeout`` passes (False)."""
        if self._server is None:
            return True
        return bool(self._server.wait_for_termination(timeout))

    def __enter__(self) -> DevServer:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host


@contextmanager
def start(
    host: str = "127.0.0.1",
    port: int = 0,
    data_dir: str | Path | None = None,
    **options: Any,
) -> Iterator[DevServer]:
    """Run a development server in this process for the duration of a ``with`` block.

    Args:
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free port.
        data_dir: Directory for the durable log; None keeps everything in memory.
        **options: Passed to ``DevServer`` (``advertise_host``, ``max_append_size``, ...).

    Yields:
        The running server; connect with ``EventStoreDBClient(server.uri)``.

    Example:
        >>> from esdbclient import EventStoreDBClient, NewEvent, StreamState
        >>> with start() as server:
        ...     client = EventStoreDBClient(server.uri)
        ...     event = NewEvent(type="Made", data=b"{}")
        ...     _ = client.append_to_stream("demo", current_version=StreamState.ANY, events=[event])
    """
    server = DevServer(host, port, data_dir, **options).start()
    try:
        yield server
    finally:
        server.stop()


def serve_forever(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    data_dir: str | Path | None = None,
    **options: Any,
) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM.

    Prints the connection string and a reminder that this is a development server.

    Args:
        host: Interface to listen on.
        port: Port to listen on (0 picks a free one).
        data_dir: Directory for the durable log; None keeps everything in memory.
        **options: Passed to ``DevServer``.

    Example:
        >>> serve_forever("127.0.0.1", 2113, "data/devserver")  # doctest: +SKIP
    """
    server = DevServer(host, port, data_dir, **options).start()
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {
        sig: signal.signal(sig, request_stop)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if threading.current_thread() is threading.main_thread()
    }
    storage = f"log in {server.data_dir}" if server.data_dir is not None else "in memory"
    print(f"EventStoreDB-compatible development server listening ({storage})", flush=True)
    print(f"  connection string: {server.uri}", flush=True)
    print(
        "  This is a development server for demos and tests, not a production event store.",
        flush=True,
    )
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        print("Stopping the development server...", flush=True)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
