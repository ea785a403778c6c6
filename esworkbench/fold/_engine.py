"""The replay engine behind ``esworkbench.fold``: one batch of whole streams in, Arrow out.

``fold_batch`` takes an Arrow table of envelope rows sorted by (stream, revision), folds each
stream through a fresh aggregate and returns the timeline and findings of that batch as Arrow
tables. Python objects (payloads, ``DomainEvent``s, state dicts) live only while their batch is
being folded, with the cyclic GC paused: building them is the cost of a replay, and the GC
walking millions of young objects would multiply it (see DESIGN.md, performance notes).

Two readings are faster than the plain calls and give the same results: payloads decoded by
orjson and a cached decoder per (type, version) (``_FastDecoder``, which hands every event it
cannot vouch for to the reference decoding), and the state of an aggregate that keeps the
contract's ``state()`` read off its attributes (``_StateReader``). tests/fold/test_engine.py
folds hostile events both ways and compares.

``esworkbench.fold.batches`` runs the batches, in this process or in forked workers.
"""

from __future__ import annotations

import json
import operator
import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, Literal, NamedTuple

import orjson
import pyarrow as pa

from esworkbench.aggregates import AggregateRoot, DomainEvent
from esworkbench.errors import (
    AggregateError,
    DomainRuleError,
    DomainRuleErrors,
    EventError,
    FoldError,
    HistoryError,
    PayloadDecodeError,
    UnknownEventTypeError,
)
from esworkbench.events import SCHEMA_VERSION_KEY, EventRegistry, json_object
from esworkbench.findings import FINDINGS_SCHEMA, evidence_json, severity_of
from esworkbench.fold._columns import CHANGED, to_arrow
from esworkbench.fold.batches import gc_paused

OnError = Literal["stop", "skip"]

# The findings' rule name for everything replay reports (the kind says which business rule).
REPLAY_RULE = "replay"
# The envelope columns a finding carries from its event.
_FINDING_ENVELOPE = (
    "stream_name",
    "stream_revision",
    "commit_position",
    "event_id",
    "event_type",
    "occurred_at",
)

# Envelope columns a timeline row carries, in this order, before the aggregate's state.
TIMELINE_ENVELOPE = (
    "stream_name",
    "stream_revision",
    "commit_position",
    "created",
    "occurred_at",
    "event_type",
    "event_id",
)
# Columns the fold reads from the lake.
INPUT_COLUMNS = (*TIMELINE_ENVELOPE, "data", "metadata")
# Optional input column: why the lake rejected an event at ingest (null for events it kept).
REJECTED = "rejected"
RESERVED = frozenset((*TIMELINE_ENVELOPE, CHANGED))

# Values state() may return that cannot change after the fact; anything else is copied when
# recorded, so a list the aggregate appends to later does not rewrite earlier rows.
_IMMUTABLE = frozenset(
    {str, int, float, bool, Decimal, type(None), bytes, datetime, date, time, timedelta, uuid.UUID}
)
# Errors a payload or its upcasters raise on bad data: the event is undecodable, not a crash.
_DECODE_ERRORS = (EventError, LookupError, TypeError, ValueError, ArithmeticError)
_MISSING = object()


class BatchResult(NamedTuple):
    """One folded batch: timeline and findings, columnar."""

    timeline: pa.Table
    findings: pa.Table


def finding_kind(error: BaseException) -> str:
    """The finding kind for an error raised while decoding or folding one event."""
    if isinstance(error, UnknownEventTypeError):
        return "unknown_event_type"
    if isinstance(error, _DECODE_ERRORS) and not isinstance(error, AggregateError):
        return "decode_error"
    if isinstance(error, HistoryError):
        if error.event_version is not None and error.event_version > error.expected_version:
            return "version_gap"
        if error.event_version is not None and error.event_version < error.expected_version:
            return "version_out_of_order"
        return "foreign_event"
    if isinstance(error, DomainRuleError):
        return error.kind
    return "aggregate_error"


def _metadata(text: str | bytes | None, event_type: str) -> dict[str, Any]:
    if not text:
        return {}
    return json_object(text, event_type, what="metadata")


def _schema_version(meta: dict[str, Any], event_type: str) -> int:
    version = meta.get(SCHEMA_VERSION_KEY, 1)
    if type(version) is not int:
        raise PayloadDecodeError(
            event_type, f"metadata {SCHEMA_VERSION_KEY!r} is {version!r}, not an integer"
        )
    return version


# orjson reads an integer too wide for 64 bits as a float where json keeps it exact: an object
# holding a float, or anything nested, is read again by json (a flat check is all it costs).
_MAYBE_INEXACT = frozenset({float, dict, list})


class _FastDecoder:
    """The decoding of the reference path (``_decode``), faster, for what it can vouch for.

    Payload and metadata are parsed by orjson instead of json (4-5x faster on event-sized
    objects), and each (type, schema version) gets its decoder from the registry once. Anything
    off the plain road (not an object, a version that is not an int, text that orjson would
    read differently or not at all, a payload the registry refuses) answers None, and the
    caller takes the reference path for that event: errors, and their messages, come only
    from there, so both paths give the same results by construction.
    """

    def __init__(self, registry: EventRegistry) -> None:
        self._registry = registry
        self._decoders: dict[tuple[str, int], Callable[[dict[str, Any]], Any]] = {}

    def __call__(
        self, event_type: str, data: Any, metadata: Any
    ) -> tuple[Any, dict[str, Any]] | None:
        try:
            if metadata:
                meta = _object(metadata)
                if meta is None:
                    return None
                version = meta.get(SCHEMA_VERSION_KEY, 1)
                if type(version) is not int:
                    return None
            else:
                meta, version = {}, 1
            decode = self._decoders.get((event_type, version))
            if decode is None:
                decode = self._registry.decoder(event_type, version=version)
                self._decoders[(event_type, version)] = decode
            body = _object(data)
            if body is None:
                return None
            return decode(body), meta
        except Exception:
            return None


def _object(text: Any) -> dict[str, Any] | None:
    """JSON text that holds an object, parsed as json.loads would; None if it is not one."""
    if type(text) is not str:
        return None
    value = orjson.loads(text)
    if type(value) is not dict:
        return None
    if not _MAYBE_INEXACT.isdisjoint(map(type, value.values())):
        value = json.loads(text)
    parsed: dict[str, Any] = value
    return parsed


def _frozen(value: Any) -> Any:
    """A copy of a mutable state value that later mutations cannot reach, Arrow-friendly."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return [_frozen(v) for v in value]
    if isinstance(value, list | tuple):
        return [_frozen(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _frozen(v) for k, v in value.items()}
    return value


def _snapshot(state: dict[str, Any]) -> dict[str, Any]:
    for key, value in state.items():
        if type(value) not in _IMMUTABLE:
            state[key] = _frozen(value)
    return state


class _StateReader:
    """An aggregate's ``state()`` as (field names, snapshot values), after every event.

    An aggregate that keeps the contract's own ``state()`` (public attributes in order, id and
    version left out) is read straight from its attributes: the names are worked out again
    only when the attributes change, and the values come out in one C call, which is ~10x
    cheaper than building the dict. Anything else (an aggregate with its own ``state()``) is
    asked for ``state()``, as the reference path does.
    """

    def __init__(self, cls: type[AggregateRoot]) -> None:
        self._plain = cls.state is AggregateRoot.state
        self._keys: tuple[str, ...] | None = None
        self._names: tuple[str, ...] = ()
        self._get: Callable[[dict[str, Any]], tuple[Any, ...]] = _no_values

    def __call__(self, aggregate: AggregateRoot) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        if not self._plain:
            state = _snapshot(aggregate.state())
            return tuple(state), tuple(state.values())
        attributes = vars(aggregate)
        keys = tuple(attributes)
        if keys != self._keys:
            self._keys = keys
            # The filter of AggregateRoot.state(), in its order.
            self._names = tuple(k for k in keys if not k.startswith("_") and k not in _NOT_STATE)
            self._get = _values_getter(self._names)
        values = self._get(attributes)
        if not _IMMUTABLE.issuperset(map(type, values)):
            values = tuple(v if type(v) in _IMMUTABLE else _frozen(v) for v in values)
        return self._names, values


_NOT_STATE = ("id", "version")


def _no_values(attributes: dict[str, Any]) -> tuple[Any, ...]:
    return ()


def _values_getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if not names:
        return _no_values
    if len(names) == 1:
        (name,) = names
        return lambda attributes: (attributes[name],)
    getter: Callable[[dict[str, Any]], tuple[Any, ...]] = operator.itemgetter(*names)
    return getter


def _evidence(error: BaseException) -> dict[str, Any]:
    """The values behind a finding: what a rule compared, or why a payload did not decode."""
    if isinstance(error, DomainRuleError):
        return error.evidence()
    if isinstance(error, HistoryError):
        return {"expected_version": error.expected_version, "event_version": error.event_version}
    if isinstance(error, PayloadDecodeError):
        return {"reason": error.reason}
    return {}


def _apply_error(
    cls: type[AggregateRoot],
    stream: str,
    revision: int,
    event_type: str,
    event_id: str,
    error: Exception,
) -> FoldError:
    return FoldError(
        f"{cls.__module__}.{cls.__qualname__} raised {type(error).__name__} on {stream}@{revision} "
        f"({event_type}, event {event_id}): {error}. Replay records AggregateError subclasses "
        "(DomainRuleError, HistoryError) as findings; anything else is a bug in the aggregate: "
        "fix it, or have it raise a DomainRuleError subclass for history its rules reject."
    )


def fold_batch(table: pa.Table, cls: type[AggregateRoot], on_error: OnError) -> BatchResult:
    """Fold a batch of whole streams (rows sorted by stream, revision) through `cls`.

    With on_error="stop" a stream's rows end before its first finding. With "skip" every event
    gets a row: the state the aggregate holds after being handed it (see ``_fold_event``).
    """
    n = table.num_rows
    streams: list[str] = table.column("stream_name").to_pylist()
    revisions: list[int] = table.column("stream_revision").to_pylist()
    event_ids: list[str] = table.column("event_id").to_pylist()
    event_types: list[str] = table.column("event_type").to_pylist()
    datas: list[Any] = table.column("data").to_pylist()
    metas: list[Any] = table.column("metadata").to_pylist()
    rejected: list[str | None] = (
        table.column(REJECTED).to_pylist() if REJECTED in table.column_names else [None] * n
    )

    skip = on_error == "skip"
    rows: list[int] = []
    # The state after each row as (field names, values): one shared names tuple while the
    # fields stay the same, so the columns come out of a single zip.
    names: list[tuple[str, ...]] = []
    values: list[tuple[Any, ...]] = []
    changes: list[list[str]] = []
    findings: list[tuple[Any, ...]] = []
    finding_rows: list[int] = []
    interned: dict[tuple[str, ...], tuple[str, ...]] = {}
    fast = _FastDecoder(cls.registry)
    read_state = _StateReader(cls)

    with gc_paused():
        start = 0
        while start < n:
            stream = streams[start]
            end = start + 1
            while end < n and streams[end] == stream:
                end += 1
            aggregate = cls(cls.aggregate_id_of(stream))
            previous_names, previous = read_state(aggregate)
            # One names tuple for the whole batch while the fields stay the same.
            previous_names = interned.setdefault(previous_names, previous_names)
            for k in range(start, end):
                revision = revisions[k]
                if rejected[k] is not None:
                    failures: list[Exception] = [
                        PayloadDecodeError(
                            event_types[k], f"the lake rejected it at ingest ({rejected[k]})"
                        )
                    ]
                else:
                    try:
                        failures = _fold_event(
                            aggregate,
                            event_types[k],
                            revision,
                            datas[k],
                            metas[k],
                            event_ids[k],
                            skip,
                            fast,
                        )
                    except Exception as e:
                        raise _apply_error(
                            cls, stream, revision, event_types[k], event_ids[k], e
                        ) from e
                if failures:
                    for failure in failures:
                        message = str(failure)
                        if not skip and end - k > 1:
                            message += (
                                f" [replay of {stream} stopped here (on_error='stop'); "
                                f"{end - k - 1} later event(s) not replayed]"
                            )
                        kind = finding_kind(failure)
                        finding_rows.append(k)
                        findings.append(
                            (
                                kind,
                                severity_of(kind),
                                message,
                                evidence_json(_evidence(failure)),
                                type(failure).__name__,
                            )
                        )
                    if not skip:
                        break
                    # The version moves past the event, so the rest of the stream is checked
                    # against the contract instead of failing as one long gap.
                    if revision > aggregate.version:
                        aggregate.version = revision
                state_names, state_values = read_state(aggregate)
                if state_names is previous_names or state_names == previous_names:
                    state_names = previous_names
                    changed = [
                        name
                        for name, new, old in zip(state_names, state_values, previous, strict=True)
                        if new is not old and new != old
                    ]
                else:
                    changed = _changed(
                        dict(zip(previous_names, previous, strict=True)),
                        dict(zip(state_names, state_values, strict=True)),
                    )
                    state_names = interned.setdefault(state_names, state_names)
                rows.append(k)
                names.append(state_names)
                values.append(state_values)
                changes.append(changed)
                previous_names, previous = state_names, state_values
            start = end

    timeline = table.select(list(TIMELINE_ENVELOPE)).take(pa.array(rows, type=pa.int64()))
    for name, column in _state_columns(names, values).items():
        timeline = timeline.append_column(name, column)
    timeline = timeline.append_column(CHANGED, _lists(changes))
    return BatchResult(timeline, _findings_table(table, finding_rows, findings))


def _lists(changes: list[list[str]]) -> pa.Array:
    """The `changed` column: few distinct lists, each converted once, then taken per row."""
    distinct: dict[tuple[str, ...], int] = {}
    index = [distinct.setdefault(tuple(c), len(distinct)) for c in changes]
    lists = pa.array([list(c) for c in distinct], type=pa.list_(pa.string()))
    return lists.take(pa.array(index, type=pa.int32()))


def _findings_table(table: pa.Table, rows: list[int], findings: list[tuple[Any, ...]]) -> pa.Table:
    """The findings of a batch, as a FINDINGS_SCHEMA table.

    The envelope of each finding's event is taken column-wise (no per-event Python objects)
    and set beside what the replay said about it.
    """
    envelope = table.select(list(_FINDING_ENVELOPE)).take(pa.array(rows, type=pa.int64()))
    said: list[Sequence[Any]] = (
        list(zip(*findings, strict=True)) if findings else [() for _ in range(5)]
    )
    columns = {
        "rule": pa.array([REPLAY_RULE] * len(rows), pa.string()),
        "kind": pa.array(said[0], pa.string()),
        "severity": pa.array(said[1], pa.string()),
        **{name: envelope.column(name) for name in _FINDING_ENVELOPE},
        "message": pa.array(said[2], pa.string()),
        "evidence": pa.array(said[3], pa.string()),
        "error": pa.array(said[4], pa.string()),
    }
    return pa.table([columns[name] for name in FINDINGS_SCHEMA.names], schema=FINDINGS_SCHEMA)


def _fold_event(
    aggregate: AggregateRoot,
    event_type: str,
    revision: int,
    data: Any,
    metadata: Any,
    event_id: str,
    skip: bool,
    fast: _FastDecoder,
) -> list[Exception]:
    """Decode one stored event and hand it to the aggregate; the problems met, if any.

    Only AggregateErrors and decoding errors come back as problems; anything else raised by
    the aggregate propagates (a bug, not history). An event the aggregate refuses leaves the
    aggregate in whatever state it put itself: unchanged for one that checks before it mutates,
    the event's effect for one that (like the bank) applies amounts first and then objects.
    """
    decoded = fast(event_type, data, metadata)
    if decoded is None:
        reference = _decode(aggregate.registry, event_type, data, metadata)
        if isinstance(reference, Exception):
            return [reference]
        decoded = reference
    payload, meta = decoded
    event = DomainEvent(event_type, aggregate.id, revision, payload, meta, event_id)
    try:
        aggregate.load_from_history((event,))
    except DomainRuleErrors as group:
        return list(group.exceptions)
    except HistoryError as e:
        if not (skip and _is_gap(e, aggregate, revision)):
            return [e]
        # Revisions are missing before this event (truncated, deleted, or rejected at ingest
        # and not read): report the gap, then resume the stream at the event that is here.
        aggregate.version = revision - 1
        try:
            aggregate.load_from_history((event,))
        except DomainRuleErrors as group:
            return [e, *group.exceptions]
        except AggregateError as again:
            return [e, again]
        return [e]
    except AggregateError as e:
        return [e]
    return []


def _decode(
    registry: EventRegistry, event_type: str, data: Any, metadata: Any
) -> tuple[Any, dict[str, Any]] | Exception:
    """The reference decoding of one stored event: (payload, metadata), or why it failed."""
    version = 1
    try:
        meta = _metadata(metadata, event_type)
        version = _schema_version(meta, event_type)
        return registry.decode(event_type, data, version=version), meta
    except EventError as e:
        return e
    except _DECODE_ERRORS as e:
        # An upcaster choked on an old payload: still this payload's problem.
        return PayloadDecodeError(
            event_type,
            f"upcasting from schema version {version} failed: {type(e).__name__}: {e}",
        )


def _is_gap(error: HistoryError, aggregate: AggregateRoot, revision: int) -> bool:
    return (
        error.event_version == revision
        and error.expected_version == aggregate.version + 1
        and revision > error.expected_version
    )


def state_column_name(field: str) -> str:
    """The timeline column of a state field (prefixed when it would shadow an envelope column)."""
    return f"state_{field}" if field in RESERVED else field


def _changed(previous: dict[str, Any], state: dict[str, Any]) -> list[str]:
    changed = [key for key, value in state.items() if previous.get(key, _MISSING) != value]
    changed.extend(key for key in previous if key not in state)
    return changed


def _state_columns(
    names: list[tuple[str, ...]], values: list[tuple[Any, ...]]
) -> dict[str, pa.Array]:
    if not names:
        return {}
    first = names[0]
    if all(n is first for n in names):
        columns = zip(*values, strict=True) if values else ()
        return {state_column_name(f): to_arrow(c) for f, c in zip(first, columns, strict=True)}
    # The aggregate grew or shed fields along the way: line rows up by name.
    fields: dict[str, None] = {}
    for n in dict.fromkeys(names):
        fields.update(dict.fromkeys(n))
    rows = [dict(zip(n, v, strict=True)) for n, v in zip(names, values, strict=True)]
    return {state_column_name(f): to_arrow([r.get(f) for r in rows]) for f in fields}
