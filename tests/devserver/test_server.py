"""Starting and stopping the development server, in-process and as a command."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
from esdbclient import EventStoreDBClient, StreamState
from esdbclient.exceptions import ServiceUnavailable
from esdbclient.protos.Grpc import streams_pb2

from esworkbench import devserver
from esworkbench.devserver.log import MemoryLog
from esworkbench.devserver.reads import Filter, subscribe_all
from esworkbench.devserver.store import EventStore
from esworkbench.errors import DevServerError
from tests.devserver.conftest import events, needs_devserver

pytestmark = needs_devserver


def test_start_yields_a_running_server_on_a_free_port() -> None:
    with devserver.start() as first, devserver.start() as second:
        assert first.port != second.port and first.port > 0
        assert first.host == "127.0.0.1"
        assert first.uri == f"esdb://127.0.0.1:{first.port}?tls=false"
        with EventStoreDBClient(first.uri) as c:
            c.append_to_stream("s", current_version=StreamState.NO_STREAM, events=events(1))
        with EventStoreDBClient(second.uri) as c:
            assert c.get_current_version("s") is StreamState.NO_STREAM


def test_a_busy_port_is_an_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DevServerError, match=f"cannot listen on 127.0.0.1:{port}"):
            devserver.DevServer(port=port).start()


def test_stop_ends_live_subscriptions() -> None:
    server = devserver.DevServer().start()
    c = EventStoreDBClient(server.uri)
    sub = c.subscribe_to_all(include_caught_up=True)
    next(sub)
    server.stop()
    with pytest.raises(ServiceUnavailable):
        for _ in sub:
            pass
    c.close()


class _Never:
    def wait_until(self, ready: Callable[[], bool]) -> bool:
        return False


def test_catch_up_checkpoint_of_an_empty_log_is_zero() -> None:
    store = EventStore(MemoryLog(), seed=False)
    flt = Filter(by_stream_name=False, regex="x", prefixes=(), window=1, multiplier=1)
    out = list(
        subscribe_all(store, _Never(), after=None, from_end=False, flt=flt, resolve_links=False)
    )
    kinds = [streams_pb2.ReadResp.FromString(m).WhichOneof("content") for m in out[1:]]
    assert kinds == ["checkpoint", "caught_up"]
    assert streams_pb2.ReadResp.FromString(out[1]).checkpoint.commit_position == 0


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_module_command_serves_until_signalled(stop_with: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "esworkbench.devserver", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        uri = next(line.split()[-1] for line in lines if "connection string" in line)
        assert any("not a production" in line for line in lines)
        with EventStoreDBClient(uri) as c:
            c.append_to_stream("s", current_version=StreamState.ANY, events=events(1))
        process.send_signal(stop_with)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("accept_compression", [False, True])
def test_compressed_responses_reach_clients_that_accept_them_or_not(
    accept_compression: bool,
) -> None:
    from esworkbench.sources.esdb import EsdbSource

    with devserver.start(compress_responses="gzip") as server:
        with EventStoreDBClient(server.uri) as c:  # esdbclient accepts gzip
            c.append_to_stream("s", current_version=StreamState.ANY, events=events(50))
            assert len(c.get_stream("s")) == 50
        source = EsdbSource(server.uri, accept_compression=accept_compression)
        read = sum(b.events.num_rows for b in source.read_batches(None, batch_size=100))
        source.close()
    assert read >= 50
