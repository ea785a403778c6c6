"""Client CPU per event of the fast reader, with and without gzip-compressed responses.

Starts ``python -m esworkbench.devserver --compress-responses gzip`` in a subprocess, seeds it
with bank-ledger-like JSON events, then reads all of them through the fast reader
(``esworkbench.sources.esdb.EsdbSource``) twice, in alternating rounds: once accepting gzip (the
server then compresses every response) and once declining it (the server sends plain ones).
Client CPU is this process's user+system time; server CPU is read from /proc.

Prints both figures in one run; asserts nothing. Usage::

    python bench/compression.py                    # 50,000 events, 3 rounds
    python bench/compression.py --events 200000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid

from esdbclient import EventStoreDBClient, NewEvent, StreamState

from esworkbench.sources.esdb import EsdbSource

_GZIP = ("--compress-responses", "gzip")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(uri: str, n: int) -> None:
    client = EventStoreDBClient(uri)
    per_batch = 500
    for start in range(0, n, per_batch):
        batch = []
        for i in range(start, min(start + per_batch, n)):
            user = f"user-{i % 500}"
            payload = {
                "userId": user,
                "amount": 1000 + i % 977,
                "newBalance": 50_000 + i,
                "currency": "EUR",
                "reference": f"invoice {i:08d} for {user}",
            }
            batch.append(
                NewEvent(
                    type="BalanceDeposited",
                    data=json.dumps(payload).encode(),
                    metadata=json.dumps({"$correlationId": str(uuid.uuid4())}).encode(),
                )
            )
        client.append_to_stream(f"bench-{start}", current_version=StreamState.ANY, events=batch)
    client.close()


def _read_all(uri: str, accept: bool) -> tuple[int, float]:
    source = EsdbSource(uri, accept_compression=accept)
    started = time.process_time()
    count = sum(b.events.num_rows for b in source.read_batches(None, batch_size=5000))
    cpu = time.process_time() - started
    source.close()
    return count, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "esworkbench.devserver", "--port", str(port), *_GZIP],
        stdout=subprocess.DEVNULL,
    )
    uri = f"esdb://127.0.0.1:{port}?tls=false"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        _seed(uri, args.events)
        totals = {True: [0.0, 0.0, 0], False: [0.0, 0.0, 0]}
        _read_all(uri, False)  # warm-up: imports, first connection
        for _ in range(args.rounds):
            for accept in (False, True):
                server_before = _cpu(server.pid)
                count, client_cpu = _read_all(uri, accept)
                totals[accept][0] += client_cpu
                totals[accept][1] += _cpu(server.pid) - server_before
                totals[accept][2] += count
        print(f"fast reader, {args.events:,} events seeded, {args.rounds} rounds per setting")
        for accept, label in ((False, "uncompressed"), (True, "gzip")):
            client_cpu, server_cpu, count = totals[accept]
            print(
                f"  {label:>12}: client CPU {client_cpu / count * 1e6:5.2f} us/event, "
                f"server CPU {server_cpu / count * 1e6:5.2f} us/event ({count:,} events read)"
            )
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
