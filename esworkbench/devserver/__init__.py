"""An EventStoreDB-compatible gRPC server for development, demos and tests.

This is a development server, not a production store. It speaks the EventStoreDB 24.x gRPC
protocol well enough that the unmodified ``esdbclient`` (sync and asyncio) cannot tell it from
a single insecure node: appends with expected revisions and idempotency, stream and ``$all``
reads with filters, catch-up subscriptions with checkpoints, persistent subscriptions
(competing consumers, acks and nacks, parking, checkpoints), stream metadata, soft deletes and
tombstones, and a one-node gossip answer. It keeps every event indexed in memory; with a data
directory it also writes an fsync-ed append-only log and reloads it on start. It has no TLS,
authentication, projections or scavenging.

Use it in-process::

    from esdbclient import EventStoreDBClient
    from esworkbench import devserver

    with devserver.start() as server:           # port 0: a free port
        client = EventStoreDBClient(server.uri)

or in the foreground: ``python -m esworkbench.devserver --port 2113 --data ./esdb-data``.

Layout, in data-flow order: ``log`` (the durable frames), ``salvage`` (``--salvage``: repair
a damaged log), ``wire`` (pre-serialized read responses), ``records`` (what is stored per event
and per stream), ``store`` (the index and the write rules), ``reads`` (reads and
subscriptions), ``messages`` (protobuf requests in, exact error shapes out), ``streams`` /
``services`` (gRPC servicers), ``persistent`` / ``persistent_service`` (persistent subscription
groups and their servicer), ``server`` (lifecycle).
"""

from esworkbench.devserver.server import DEFAULT_PORT, DevServer, open_store, serve_forever, start

__all__ = ["DEFAULT_PORT", "DevServer", "open_store", "serve_forever", "start"]
