"""``python -m esworkbench.devserver``: serve in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import sys

from esworkbench.devserver.messages import DEFAULT_MAX_APPEND_SIZE
from esworkbench.devserver.server import DEFAULT_PORT, serve_forever
from esworkbench.errors import DevServerError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m esworkbench.devserver",
        description="EventStoreDB-compatible development server (not a production store).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (0: any free port)"
    )
    parser.add_argument("--data", metavar="DIR", help="directory for the durable log")
    parser.add_argument("--advertise-host", help="host announced to clients by gossip")
    parser.add_argument("--advertise-port", type=int, help="port announced to clients by gossip")
    parser.add_argument(
        "--max-append-size", type=int, default=DEFAULT_MAX_APPEND_SIZE, help="bytes per append"
    )
    parser.add_argument(
        "--salvage",
        action="store_true",
        help="repair a log damaged before its last frame: copy it aside, then keep every frame "
        "that still verifies and list what is dropped (without this, such a log is refused)",
    )
    parser.add_argument(
        "--compress-responses",
        choices=["gzip"],
        help="gzip read responses for clients that accept it (as KurrentDB 25.1+ can)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        serve_forever(
            args.host,
            args.port,
            args.data,
            advertise_host=args.advertise_host,
            advertise_port=args.advertise_port,
            max_append_size=args.max_append_size,
            salvage=args.salvage,
            compress_responses=args.compress_responses,
        )
    except DevServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
