"""Benchmark the development server through the unmodified esdbclient.

Starts ``python -m esworkbench.devserver`` in a subprocess (so its CPU time can be read from
the OS), then measures:

* appends/s: N events in batches through BatchAppend (``append_to_stream`` with a list);
* read_all events/s: the same events back through ``EventStoreDBClient.read_all``;
* server CPU per event read, from the server process's user+system time before and after.

Prints figures; asserts nothing. Usage::

    python bench/devserver.py                     # in memory, 200,000 events, batches of 100
    python bench/devserver.py --data /tmp/esdb   # with the fsync-ed log on disk
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from esdbclient import EventStoreDBClient, NewEvent, StreamState


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds consumed so far by process ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:  # not Linux
        import psutil  # type: ignore[import-untyped]

        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)


@contextmanager
def server_process(data_dir: str | None) -> Iterator[tuple[str, int]]:
    """Run the dev server in a subprocess; yield its URI and pid."""
    command = [sys.executable, "-m", "esworkbench.devserver", "--port", "0"]
    if data_dir:
        command += ["--data", data_dir]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        uri = ""
        for line in process.stdout:
            if "esdb://" in line:
                uri = line[line.index("esdb://") :].strip()
                break
        if not uri:
            raise SystemExit("the development server did not start")
        yield uri, process.pid
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--data", help="log directory (default: in memory)")
    parser.add_argument("--tmp-data", action="store_true", help="use a fresh temporary log dir")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="esdb-bench-") if args.tmp_data else args.data

    payload = b'{"userId": "u-0001", "amount": 1250, "newBalance": 98750}'
    with server_process(data_dir) as (uri, pid):
        client = EventStoreDBClient(uri)
        run = uuid.uuid4().hex[:8]
        batches = args.events // args.batch
        cpu0, t0 = process_cpu_seconds(pid), time.perf_counter()
        for b in range(batches):
            events = [NewEvent(type="BalanceDeposited", data=payload) for _ in range(args.batch)]
            client.append_to_stream(
                f"bench-{run}-{b % 1000}", current_version=StreamState.ANY, events=events
            )
        t1, cpu1 = time.perf_counter(), process_cpu_seconds(pid)
        written = batches * args.batch

        client_cpu0, t2 = time.process_time(), time.perf_counter()
        read = sum(1 for _ in client.read_all())
        t3, cpu2, client_cpu1 = time.perf_counter(), process_cpu_seconds(pid), time.process_time()
        client.close()

    reload_seconds = None
    if data_dir:
        t4 = time.perf_counter()
        with server_process(data_dir):
            reload_seconds = time.perf_counter() - t4
        if args.tmp_data:
            shutil.rmtree(data_dir, ignore_errors=True)

    storage = f"log in {data_dir} (fsync per append)" if data_dir else "in memory"
    print(f"esworkbench dev server, {storage}; {os.cpu_count()} CPUs; {sys.version.split()[0]}")
    print(f"append: {written:,} events in {batches:,} BatchAppend calls of {args.batch}")
    print(f"  {written / (t1 - t0):,.0f} events/s, {batches / (t1 - t0):,.0f} appends/s")
    print(f"  server CPU {1e6 * (cpu1 - cpu0) / written:.1f} us/event")
    print(f"read_all: {read:,} events (default filter) through EventStoreDBClient")
    print(f"  {read / (t3 - t2):,.0f} events/s")
    print(f"  server CPU {1e6 * (cpu2 - cpu1) / max(read, 1):.1f} us/event read")
    print(f"  client CPU {1e6 * (client_cpu1 - client_cpu0) / max(read, 1):.1f} us/event read")
    if reload_seconds is not None:
        print(f"restart: log reloaded and serving after {reload_seconds:.2f} s")


if __name__ == "__main__":
    main()
