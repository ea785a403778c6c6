"""The replay engine behind ``esworkbench.fold``: one batch of whole streams in, Arrow out.

``fold_batch`` takes an Arrow table of envelope rows sorted by (stream, revision), folds each
stream through a fresh aggregate and returns the timeline and findings of that batch as Arrow
tables. Python objects (payloads, ``DomainEvent``s, state dicts) live only while their batch is
being folded, with the cyclic GC paused: building them is the cost of a replay, and the GC
walking millions of young objects would multiply it (see DESIGN.md, performance notes).

Two readings are faster than the plain calls and give the same results: payloads decoded by
msgspec and a cached decoder per (type, version) (``_FastDecoder``, which hands every event it
cannot vouch for to the reference decoding), and the state of an aggregate that keeps the
contract's ``state()`` read off its attributes (``_StateReader``). tests/fold/test_engine.py
folds hostile events both ways and compares. Which fields each event changed is worked out
after the loop, column by column (``_columns.StateColumns``).

``esworkbench.fold.batches`` runs the batches, in this process or in forked workers.
"""

from __future__ import annotations

import dataclasses
import operator
import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, Literal, NamedTuple

import msgspec
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
from esworkbench.findings import FINDING_ENVELOPE, FINDINGS_SCHEMA, evidence_json, severity_of
from esworkbench.fold._columns import CHANGED, StateColumns
from esworkbench.fold.batches import gc_paused

OnError = Literal["stop", "skip"]

# The findings' rule name for everything replay reports (the kind says which business rule).
REPLAY_RULE = "replay"

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


# msgspec reads JSON as json.loads does wherever it accepts it (integers of any width exactly,
# floats correctly rounded, the last of duplicate keys) and refuses what json reads leniently
# (NaN, Infinity, 1e400, lone surrogates): those events take the reference path.
_read_json = msgspec.json.Decoder().decode


class _FastDecoder:
    """The decoding of the reference path (``_decode``), faster, for what it can vouch for.

    Payload and metadata are parsed by msgspec instead of json (~7x faster on event-sized
    objects), and each (type, schema version) gets its decoder from the registry once. Anything
    off the plain road (not an object, a version that is not an int, text that msgspec refuses,
    a payload the registry refuses) answers None, and the caller takes the reference path for
    that event: errors, and their messages, come only from there, so both paths give the same
    results by construction.
    """

    def __init__(self, registry: EventRegistry) -> None:
        self._registry = registry
        self._decoders: dict[tuple[str, int], Callable[[dict[str, Any]], Any]] = {}

    def __call__(
        self, event_type: str, data: Any, metadata: Any
    ) -> tuple[Any, dict[str, Any]] | None:
        try:
            if metadata:
                meta = _read_json(metadata) if type(metadata) is str else None
                if type(meta) is not dict:
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
            body = _read_json(data) if type(data) is str else None
            if type(body) is not dict:
                return None
            return decode(body), meta
        except Exception:
            return None


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

    The loop does only what needs the aggregate: decode, apply, and take the state's values
    (one C call for an aggregate with the contract's ``state()``). Which fields each event
    changed is worked out afterwards, column by column (``_changed_column``).
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
    # Rows of `table` that have a timeline row (every row, unless a stream stopped early).
    rows: list[int] = []
    # The state after each timeline row as (field names, values): one shared names tuple while
    # the fields stay the same, so the columns come out of a single zip.
    names: list[tuple[str, ...]] = []
    values: list[tuple[Any, ...]] = []
    # Per stream: its first timeline row and the state of its fresh aggregate (what the first
    # event changed is measured against it).
    starts: list[int] = []
    initial: list[tuple[tuple[str, ...], tuple[Any, ...]]] = []
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
            fresh_names, fresh = read_state(aggregate)
            state_names = interned.setdefault(fresh_names, fresh_names)
            starts.append(len(rows))
            initial.append((state_names, fresh))
            aggregate_id = aggregate.id
            for k in range(start, end):
                revision = revisions[k]
                event_type = event_types[k]
                decoded: tuple[Any, dict[str, Any]] | Exception | None = (
                    fast(event_type, datas[k], metas[k]) if rejected[k] is None else None
                )
                failures: list[Exception] | None
                if decoded is None:
                    try:
                        decoded = _reference_decoding(
                            cls.registry, event_type, datas[k], metas[k], rejected[k]
                        )
                    except Exception as e:
                        raise _apply_error(
                            cls, stream, revision, event_type, event_ids[k], e
                        ) from e
                if isinstance(decoded, tuple):
                    event = _new_event(event_type, aggregate_id, revision, *decoded, event_ids[k])
                    try:
                        aggregate.load_from_history((event,))
                        failures = None
                    except Exception as error:
                        failures = _refusal(aggregate, event, error, skip, stream)
                else:
                    failures = [decoded]
                if failures:
                    said = [_finding(f, stream, skip, later=end - k - 1) for f in failures]
                    findings.extend(said)
                    finding_rows.extend([k] * len(said))
                    # An exception caught here holds this frame through its traceback: keeping
                    # it would keep the whole batch alive until a full collection.
                    failures = None
                    if not skip:
                        break
                    # The version moves past the event, so the rest of the stream is checked
                    # against the contract instead of failing as one long gap.
                    if revision > aggregate.version:
                        aggregate.version = revision
                now_names, now = read_state(aggregate)
                if now_names is not state_names and now_names != state_names:
                    state_names = interned.setdefault(now_names, now_names)
                rows.append(k)
                names.append(state_names)
                values.append(now)
            start = end

        state = StateColumns(names, values, starts, initial)
        columns = state.columns()
        changed = state.changed()
        # Free the batch's Python objects while the GC still sleeps: left alive, the first
        # collection after it wakes would walk every one of them.
        del state, names, values, initial, datas, metas

    timeline = table.select(list(TIMELINE_ENVELOPE))
    if len(rows) < n:
        timeline = timeline.take(pa.array(rows, type=pa.int64()))
    for name, column in columns.items():
        timeline = timeline.append_column(state_column_name(name), column)
    timeline = timeline.append_column(CHANGED, changed)
    return BatchResult(timeline, _findings_table(table, finding_rows, findings))


def _finding(failure: Exception, stream: str, skip: bool, *, later: int) -> tuple[Any, ...]:
    """What replay says about one problem: kind, severity, message, evidence, error type."""
    message = str(failure)
    if not skip and later:
        message += (
            f" [replay of {stream} stopped here (on_error='stop'); "
            f"{later} later event(s) not replayed]"
        )
    kind = finding_kind(failure)
    return (
        kind,
        severity_of(kind),
        message,
        evidence_json(_evidence(failure)),
        type(failure).__name__,
    )


def _findings_table(table: pa.Table, rows: list[int], findings: list[tuple[Any, ...]]) -> pa.Table:
    """The findings of a batch, as a FINDINGS_SCHEMA table.

    The envelope of each finding's event is taken column-wise (no per-event Python objects)
    and set beside what the replay said about it.
    """
    envelope = table.select(list(FINDING_ENVELOPE)).take(pa.array(rows, type=pa.int64()))
    said: list[Sequence[Any]] = (
        list(zip(*findings, strict=True)) if findings else [() for _ in range(5)]
    )
    columns = {
        "rule": pa.array([REPLAY_RULE] * len(rows), pa.string()),
        "kind": pa.array(said[0], pa.string()),
        "severity": pa.array(said[1], pa.string()),
        **{name: envelope.column(name) for name in FINDING_ENVELOPE},
        "message": pa.array(said[2], pa.string()),
        "evidence": pa.array(said[3], pa.string()),
        "error": pa.array(said[4], pa.string()),
    }
    return pa.table([columns[name] for name in FINDINGS_SCHEMA.names], schema=FINDINGS_SCHEMA)


def _refusal(
    aggregate: AggregateRoot, event: DomainEvent, error: Exception, skip: bool, stream: str
) -> list[Exception]:
    """The problems behind an event the aggregate refused (`error`), after a resume if any.

    Only AggregateErrors come back as problems; anything else the aggregate raises is a bug,
    not history, and stops the replay with a FoldError. A refused event leaves the aggregate in
    whatever state it put itself: unchanged for one that checks before it mutates, the event's
    effect for one that (like the bank) applies amounts first and then objects.
    """
    if isinstance(error, DomainRuleErrors):
        return list(error.exceptions)
    if isinstance(error, HistoryError):
        if not (skip and _is_gap(error, aggregate, event.aggregate_version)):
            return [error]
        # Revisions are missing before this event (truncated, deleted, or rejected at ingest
        # and not read): report the gap, then resume the stream at the event that is here.
        aggregate.version = event.aggregate_version - 1
        try:
            aggregate.load_from_history((event,))
        except DomainRuleErrors as group:
            return [error, *group.exceptions]
        except AggregateError as again:
            return [error, again]
        except Exception as bug:
            raise _event_error(aggregate, stream, event, bug) from bug
        return [error]
    if isinstance(error, AggregateError):
        return [error]
    raise _event_error(aggregate, stream, event, error) from error


def _event_error(
    aggregate: AggregateRoot, stream: str, event: DomainEvent, error: Exception
) -> FoldError:
    return _apply_error(
        type(aggregate), stream, event.aggregate_version, event.event_type, event.event_id, error
    )


def _new_event(
    event_type: str,
    aggregate_id: str,
    version: int,
    payload: Any,
    metadata: dict[str, Any],
    event_id: str,
) -> DomainEvent:
    """``DomainEvent(...)`` for a stored event, at half the cost of the dataclass's __init__.

    The frozen dataclass sets each field through ``object.__setattr__``; setting its slots
    directly gives the same object (tests/fold/test_engine.py compares them).
    """
    event = _NEW(DomainEvent)
    _SET_TYPE(event, event_type)
    _SET_AGGREGATE(event, aggregate_id)
    _SET_VERSION(event, version)
    _SET_DATA(event, payload)
    _SET_METADATA(event, metadata)
    _SET_ID(event, event_id)
    return event


_NEW = object.__new__
(_SET_TYPE, _SET_AGGREGATE, _SET_VERSION, _SET_DATA, _SET_METADATA, _SET_ID) = (
    DomainEvent.__dict__[field.name].__set__ for field in dataclasses.fields(DomainEvent)
)


def _reference_decoding(
    registry: EventRegistry, event_type: str, data: Any, metadata: Any, rejected: str | None
) -> tuple[Any, dict[str, Any]] | Exception:
    """(payload, metadata) of an event the fast decoding could not vouch for, or why not."""
    if rejected is not None:
        return PayloadDecodeError(event_type, f"the lake rejected it at ingest ({rejected})")
    return _decode(registry, event_type, data, metadata)


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
