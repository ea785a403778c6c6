"""The ``esworkbench devserver`` command's gossip options."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from esdbclient import EventStoreDBClient


def test_advertise_host_is_what_gossip_announces() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    command = ["devserver", "--port", str(port), "--advertise-host", "localhost"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "esworkbench", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = "".join(proc.stdout.readline() for _ in range(2))
        assert f"esdb://localhost:{port}?tls=false" in banner
        with EventStoreDBClient(f"esdb://127.0.0.1:{port}?tls=false") as client:
            [member] = client.read_gossip()
        assert (member.address, member.port) == ("localhost", port)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
