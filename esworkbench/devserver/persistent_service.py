"""The ``event_store.client.persistent_subscriptions.PersistentSubscriptions`` service.

``Registry`` owns every group (``persistent.Group``) and persists their definitions;
``PersistentSubscriptionsServicer`` turns the RPCs into registry calls and replies with the
real server's shapes and status texts (clients map errors by status code and substrings).

``Read`` is a bidirectional stream: the first request names the group, later ones carry acks
and nacks. A helper thread consumes those while the handler thread pumps the group and sends
what the strategy assigned to this consumer. Idle consumers re-check every 50 ms, which also
drives message timeouts and time-based checkpoints (the real server ticks once a second).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from esdbclient.protos.Grpc import persistent_pb2, persistent_pb2_grpc, shared_pb2, streams_pb2

from esworkbench.devserver.messages import BadRequest, event_id, stream_name
from esworkbench.devserver.persistent import (
    ALL,
    CONFIG_EVENT_TYPE,
    CONFIG_STREAM,
    Consumer,
    FilterSpec,
    Group,
    GroupExists,
    GroupNotFound,
    GroupSettings,
    MaxSubscribersReached,
    NackAction,
)
from esworkbench.devserver.records import ANY, ProposedEvent
from esworkbench.devserver.store import EventStore

_TICK_SECONDS = 0.05
_NACK_ACTIONS: dict[int, NackAction] = {
    persistent_pb2.ReadReq.Nack.Unknown: "unknown",
    persistent_pb2.ReadReq.Nack.Park: "park",
    persistent_pb2.ReadReq.Nack.Retry: "retry",
    persistent_pb2.ReadReq.Nack.Skip: "skip",
    persistent_pb2.ReadReq.Nack.Stop: "stop",
}
_NAMED_STRATEGIES: dict[int, str] = {
    persistent_pb2.UpdateReq.DispatchToSingle: "DispatchToSingle",
    persistent_pb2.UpdateReq.RoundRobin: "RoundRobin",
    persistent_pb2.UpdateReq.Pinned: "Pinned",
}


class Registry:
    """Every subscription group of one store, and the lock that guards them."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.cond = threading.Condition(threading.RLock())
        self.groups: dict[tuple[str, str], Group] = {}
        for settings in self._load_config():
            self.groups[(settings.stream, settings.group)] = Group(store, settings)

    def _load_config(self) -> list[GroupSettings]:
        state = self.store.stream(CONFIG_STREAM)
        if state is None or not state.events:
            return []
        record = streams_pb2.ReadResp.ReadEvent.RecordedEvent.FromString(state.events[-1].record)
        try:
            entries = json.loads(record.data).get("entries", [])
            return [GroupSettings.from_json(entry) for entry in entries]
        except (ValueError, TypeError, KeyError, AttributeError):
            return []

    def _save_config(self) -> None:
        # The whole configuration is rewritten on every change, as the real server does.
        config = {
            "version": "2",
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "updatedBy": "admin",
            "entries": [g.settings.to_json() for g in self.groups.values()],
        }
        data = json.dumps(config, separators=(",", ":")).encode()
        self.store.append(
            CONFIG_STREAM,
            ANY,
            [ProposedEvent(_new_id(), CONFIG_EVENT_TYPE, True, b"", data)],
        )

    def get(self, stream: str, group: str) -> Group:
        """The group, or GroupNotFound."""
        found = self.groups.get((stream, group))
        if found is None:
            raise GroupNotFound
        return found

    def create(self, settings: GroupSettings) -> None:
        """Add a group (GroupExists if the name is taken on that stream)."""
        with self.cond:
            key = (settings.stream, settings.group)
            if key in self.groups:
                raise GroupExists
            self.groups[key] = Group(self.store, settings)
            self._save_config()

    def update(self, settings: GroupSettings) -> None:
        """Replace a group's settings; its consumers are dropped, its checkpoint is kept."""
        with self.cond:
            old = self.get(settings.stream, settings.group)
            if settings.is_all and settings.filter is None:
                settings.filter = old.settings.filter  # Update cannot change the filter
            self._drop(old, "updated")
            self.groups[(settings.stream, settings.group)] = Group(self.store, settings)
            self._save_config()
            self.cond.notify_all()

    def delete(self, stream: str, group: str) -> None:
        """Remove a group, its checkpoint and its parked messages."""
        with self.cond:
            old = self.get(stream, group)
            self._drop(old, "deleted")
            del self.groups[(stream, group)]
            for name in (old.checkpoint_stream, old.parked_stream):
                state = self.store.stream(name)
                if state is not None and state.last_revision >= 0 and not state.soft_deleted:
                    self.store.delete(name, ANY)
            self._save_config()
            self.cond.notify_all()

    def _drop(self, group: Group, why: str) -> None:
        for consumer in group.forget():
            consumer.dropped = why

    def connect(
        self, stream: str, group_name: str, buffer_size: int, connection_name: str, peer: str
    ) -> Consumer:
        """A new consumer of a group (GroupNotFound, MaxSubscribersReached)."""
        with self.cond:
            group = self.get(stream, group_name)
            limit = group.settings.max_subscriber_count
            if limit and len(group.consumers) >= limit:
                raise MaxSubscribersReached
            consumer = Consumer(group, max(buffer_size, 1), connection_name, peer)
            group.consumers.append(consumer)
            self.cond.notify_all()
            return consumer

    def disconnect(self, consumer: Consumer) -> None:
        """The consumer's call ended."""
        with self.cond:
            consumer.dropped = consumer.dropped or "disconnected"
            consumer.group.remove(consumer)
            self.cond.notify_all()

    def handle(self, consumer: Consumer, request: persistent_pb2.ReadReq) -> None:
        """An ack or nack from a consumer."""
        kind = request.WhichOneof("content")
        with self.cond:
            if consumer.dropped is not None:
                return
            if kind == "ack":
                consumer.group.ack([event_id(i) for i in request.ack.ids])
            elif kind == "nack":
                action = _NACK_ACTIONS.get(request.nack.action, "unknown")
                ids = [event_id(i) for i in request.nack.ids]
                consumer.group.nack(ids, action, request.nack.reason)
            self.cond.notify_all()

    def next_batch(self, consumer: Consumer) -> list[bytes] | None:
        """Pump the consumer's group and wait a tick for messages; None once it is dropped."""
        with self.cond:
            if consumer.dropped is not None or self.store.closed:
                return None
            if consumer.group.pump(time.monotonic()):
                self.cond.notify_all()
            if not consumer.outbox:
                self.cond.wait(_TICK_SECONDS)
            batch = list(consumer.outbox)
            consumer.outbox.clear()
            return batch


def _new_id() -> str:
    return str(uuid.uuid4())


def _source(options: Any) -> str:
    """``$all`` or the stream named by a request's options (either field generation)."""
    which = options.WhichOneof("stream_option")
    if which == "all":
        return ALL
    if which == "stream":
        return stream_name(options.stream.stream_identifier)
    return stream_name(options.stream_identifier)


def parse_settings(request: persistent_pb2.CreateReq | persistent_pb2.UpdateReq) -> GroupSettings:
    """A group definition from ``Create`` or ``Update``."""
    options = request.options
    s = options.settings
    settings = GroupSettings(stream=_source(options), group=options.group_name)
    if settings.is_all:
        all_options = options.all
        which = all_options.WhichOneof("all_option")
        settings.from_end = which == "end"
        if which == "position":
            settings.start = int(all_options.position.commit_position)
        if isinstance(all_options, persistent_pb2.CreateReq.AllOptions) and (
            all_options.WhichOneof("filter_option") == "filter"
        ):
            flt = all_options.filter
            kind = flt.WhichOneof("filter")
            if kind is not None:
                expression = getattr(flt, kind)
                settings.filter = FilterSpec(
                    kind == "stream_identifier", expression.regex, tuple(expression.prefix)
                )
    elif options.WhichOneof("stream_option") == "stream":
        revision_option = options.stream.WhichOneof("revision_option")
        settings.from_end = revision_option == "end"
        if revision_option == "revision":
            settings.start = int(options.stream.revision)
    else:  # clients older than 21.10 put the start revision in the settings
        settings.start = int(s.revision) if s.revision >= 0 else None
        settings.from_end = s.revision < 0
    settings.resolve_links = s.resolve_links
    settings.extra_statistics = s.extra_statistics
    settings.max_retry_count = s.max_retry_count
    settings.min_checkpoint_count = s.min_checkpoint_count
    settings.max_checkpoint_count = s.max_checkpoint_count
    settings.max_subscriber_count = s.max_subscriber_count
    settings.live_buffer_size = s.live_buffer_size
    settings.read_batch_size = s.read_batch_size
    settings.history_buffer_size = s.history_buffer_size
    settings.message_timeout_ms = (
        s.message_timeout_ms
        if s.WhichOneof("message_timeout") == "message_timeout_ms"
        else s.message_timeout_ticks // 10_000
    )
    settings.checkpoint_after_ms = (
        s.checkpoint_after_ms
        if s.WhichOneof("checkpoint_after") == "checkpoint_after_ms"
        else s.checkpoint_after_ticks // 10_000
    )
    strategy = s.consumer_strategy if isinstance(s, persistent_pb2.CreateReq.Settings) else ""
    if not strategy:
        strategy = _NAMED_STRATEGIES.get(int(s.named_consumer_strategy), "RoundRobin")
    if strategy not in ("DispatchToSingle", "RoundRobin", "Pinned", "PinnedByCorrelation"):
        raise BadRequest(f"Unknown consumer strategy {strategy!r}")
    settings.strategy = strategy
    return settings


def subscription_info(group: Group) -> persistent_pb2.SubscriptionInfo:
    """``SubscriptionInfo`` as ``GetInfo`` and ``List`` report it."""
    s = group.settings
    info = persistent_pb2.SubscriptionInfo(
        event_source=s.stream,
        group_name=s.group,
        status="Live" if group.at_end() and not group.buffer else "Behind",
        average_per_second=0,
        total_items=group.total_items,
        count_since_last_measurement=0,
        last_checkpointed_event_position=(
            s.position_text(group.last_cp_pos) if group.last_cp_pos is not None else ""
        ),
        last_known_event_position=(
            s.position_text(group.stat_last_known) if group.stat_last_known is not None else ""
        ),
        resolve_link_tos=s.resolve_links,
        start_from=s.start_from_text(),
        message_timeout_milliseconds=s.message_timeout_ms,
        extra_statistics=s.extra_statistics,
        max_retry_count=s.max_retry_count,
        live_buffer_size=s.live_buffer_size,
        buffer_size=s.history_buffer_size,
        read_batch_size=s.read_batch_size,
        check_point_after_milliseconds=s.checkpoint_after_ms,
        min_check_point_count=s.min_checkpoint_count,
        max_check_point_count=s.max_checkpoint_count,
        read_buffer_count=len(group.buffer),
        live_buffer_count=0,
        retry_buffer_count=len(group.retry),
        total_in_flight_messages=sum(len(c.in_flight) for c in group.consumers),
        outstanding_messages_count=len(group.outstanding),
        named_consumer_strategy=s.strategy,
        max_subscriber_count=s.max_subscriber_count,
        parked_message_count=group.parked_count(),
    )
    for consumer in group.consumers:
        connection = persistent_pb2.SubscriptionInfo.ConnectionInfo(
            username="admin",
            total_items=consumer.total_items,
            available_slots=consumer.free_slots,
            in_flight_messages=len(consumer.in_flight),
            connection_name=consumer.connection_name,
        )
        setattr(connection, "from", consumer.peer)  # a Python keyword as a field name
        info.connections.append(connection)
    return info


def _not_found(context: grpc.ServicerContext, stream: str, group: str) -> None:
    context.abort(
        grpc.StatusCode.NOT_FOUND, f"Subscription group {group} on stream {stream} does not exist."
    )


class PersistentSubscriptionsServicer(persistent_pb2_grpc.PersistentSubscriptionsServicer):
    """Persistent subscriptions over a ``Registry``."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def Create(self, request: persistent_pb2.CreateReq, context: grpc.ServicerContext) -> Any:
        """Create a group: ALREADY_EXISTS if it exists."""
        try:
            settings = parse_settings(request)
            self._registry.create(settings)
        except BadRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except GroupExists:
            context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"Subscription group {settings.group} on stream {settings.stream} exists.",
            )
        return persistent_pb2.CreateResp()

    def Update(self, request: persistent_pb2.UpdateReq, context: grpc.ServicerContext) -> Any:
        """Replace a group's settings: NOT_FOUND if there is no such group."""
        try:
            settings = parse_settings(request)
            self._registry.update(settings)
        except BadRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except GroupNotFound:
            _not_found(context, settings.stream, settings.group)
        return persistent_pb2.UpdateResp()

    def Delete(self, request: persistent_pb2.DeleteReq, context: grpc.ServicerContext) -> Any:
        """Delete a group: NOT_FOUND if there is no such group."""
        stream, group = _source(request.options), request.options.group_name
        try:
            self._registry.delete(stream, group)
        except GroupNotFound:
            _not_found(context, stream, group)
        return persistent_pb2.DeleteResp()

    def GetInfo(self, request: persistent_pb2.GetInfoReq, context: grpc.ServicerContext) -> Any:
        """One group's statistics and settings."""
        stream, group = _source(request.options), request.options.group_name
        with self._registry.cond:
            try:
                found = self._registry.get(stream, group)
            except GroupNotFound:
                _not_found(context, stream, group)
            return persistent_pb2.GetInfoResp(subscription_info=subscription_info(found))

    def List(self, request: persistent_pb2.ListReq, context: grpc.ServicerContext) -> Any:
        """Every group, or the groups of one stream (``$all`` included)."""
        options = request.options
        wanted: str | None = None
        if options.WhichOneof("list_option") == "list_for_stream":
            stream_option = options.list_for_stream
            if stream_option.WhichOneof("stream_option") == "all":
                wanted = ALL
            else:
                wanted = stream_name(stream_option.stream)
        with self._registry.cond:
            groups = [
                g for g in self._registry.groups.values() if wanted in (None, g.settings.stream)
            ]
            return persistent_pb2.ListResp(subscriptions=[subscription_info(g) for g in groups])

    def ReplayParked(
        self, request: persistent_pb2.ReplayParkedReq, context: grpc.ServicerContext
    ) -> Any:
        """Queue a group's parked messages for redelivery."""
        options = request.options
        stream, group = _source(options), options.group_name
        stop_at = (
            int(options.stop_at) if options.WhichOneof("stop_at_option") == "stop_at" else None
        )
        with self._registry.cond:
            try:
                self._registry.get(stream, group).replay_parked(stop_at)
            except GroupNotFound:
                _not_found(context, stream, group)
            self._registry.cond.notify_all()
        return persistent_pb2.ReplayParkedResp()

    def RestartSubsystem(self, request: shared_pb2.Empty, context: grpc.ServicerContext) -> Any:
        """Nothing to restart: groups are always running here."""
        return shared_pb2.Empty()

    def Read(
        self, request_iterator: Iterable[persistent_pb2.ReadReq], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Connect to a group, then stream its messages while acks and nacks come back."""
        requests = iter(request_iterator)
        first = next(requests, None)
        if first is None or first.WhichOneof("content") != "options":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The first message must be options")
            return
        options = first.options
        stream, group = _source(options), options.group_name
        name = dict(context.invocation_metadata()).get("connection-name", "")
        try:
            consumer = self._registry.connect(
                stream, group, options.buffer_size, str(name), context.peer()
            )
        except GroupNotFound:
            _not_found(context, stream, group)
        except MaxSubscribersReached:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Maximum subscriptions reached for subscription group {group} on stream {stream}.",
            )
        registry = self._registry

        def on_end() -> None:
            registry.disconnect(consumer)

        if not context.add_callback(on_end):
            on_end()
        threading.Thread(
            target=_consume_acks, args=(registry, consumer, requests), daemon=True
        ).start()
        yield bytes(
            persistent_pb2.ReadResp(
                subscription_confirmation=persistent_pb2.ReadResp.SubscriptionConfirmation(
                    subscription_id=consumer.group.key
                )
            ).SerializeToString()
        )
        while True:
            batch = registry.next_batch(consumer)
            if batch is None:
                break
            yield from batch
        if consumer.dropped in ("deleted", "updated"):
            context.set_code(
                grpc.StatusCode.NOT_FOUND
                if consumer.dropped == "deleted"
                else grpc.StatusCode.CANCELLED
            )
            context.set_details(
                f"Subscription group {group} on stream {stream} "
                + ("does not exist." if consumer.dropped == "deleted" else "was dropped.")
            )
        elif registry.store.closed:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("Server is shutting down")


def _consume_acks(
    registry: Registry, consumer: Consumer, requests: Iterator[persistent_pb2.ReadReq]
) -> None:
    try:
        for request in requests:
            try:
                registry.handle(consumer, request)
            except BadRequest:
                continue  # an unparseable id: nothing to ack
    except grpc.RpcError:
        pass  # the call ended; disconnect() runs from the call's callback
    except ValueError:
        pass  # grpc raises this when the call is torn down mid-iteration


PERSISTENT_SERVICE = "event_store.client.persistent_subscriptions.PersistentSubscriptions"


def persistent_handlers(
    servicer: PersistentSubscriptionsServicer,
) -> dict[str, grpc.RpcMethodHandler]:
    """The service's method handlers; ``Read`` yields responses already serialized."""
    p = persistent_pb2

    def unary(method: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )

    return {
        "Create": unary(servicer.Create, p.CreateReq, p.CreateResp),
        "Update": unary(servicer.Update, p.UpdateReq, p.UpdateResp),
        "Delete": unary(servicer.Delete, p.DeleteReq, p.DeleteResp),
        "GetInfo": unary(servicer.GetInfo, p.GetInfoReq, p.GetInfoResp),
        "ReplayParked": unary(servicer.ReplayParked, p.ReplayParkedReq, p.ReplayParkedResp),
        "List": unary(servicer.List, p.ListReq, p.ListResp),
        "RestartSubsystem": unary(servicer.RestartSubsystem, shared_pb2.Empty, shared_pb2.Empty),
        "Read": grpc.stream_stream_rpc_method_handler(
            servicer.Read,
            request_deserializer=p.ReadReq.FromString,
            response_serializer=None,
        ),
    }
