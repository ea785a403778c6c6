"""The event envelope, the lake's Arrow schema, and the event-type registry.

Every event has one envelope, the same in Python, Arrow and DuckDB. Sources emit *raw* batches
(``RAW_SCHEMA``: what EventStoreDB stores, payload bytes untouched); the lake derives the rest
(``ENVELOPE_SCHEMA``: JSON payload as text, category, correlation and causation ids) in SQL.

Payloads are decoded once, at the boundary, by an ``EventRegistry``: stored type name -> payload
class. Names are the contract (a renamed class keeps its stored name); a second registration of
a name is an error; an unknown name is reported, never silently dropped; older payload versions
are upcast to the current shape before the class sees them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

import pyarrow as pa

from esworkbench.errors import DuplicateEventTypeError, PayloadDecodeError, UnknownEventTypeError

__all__ = [
    "ENVELOPE_SCHEMA",
    "OCCURRED_AT_KEY",
    "RAW_SCHEMA",
    "SCHEMA_VERSION_KEY",
    "EventRegistry",
    "Payload",
    "archive_line",
    "category_of",
    "created_from_ticks",
    "is_system_event_type",
    "parse_archive_line",
    "ticks_from_created",
]

# Columns every source emits, in this order. Positions and revisions are uint64 as on the wire.
RAW_SCHEMA = pa.schema(
    [
        pa.field("commit_position", pa.uint64(), nullable=False),
        pa.field("prepare_position", pa.uint64(), nullable=False),
        pa.field("stream_name", pa.string(), nullable=False),
        pa.field("stream_revision", pa.uint64(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("created", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("content_type", pa.string(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
        pa.field("metadata", pa.binary(), nullable=False),
    ]
)

# The lake's `events` table and the frames read from it. `data` and `metadata` are JSON text;
# events whose payload is not JSON are kept in the lake's `_rejected` table instead.
ENVELOPE_SCHEMA = pa.schema(
    [
        *(RAW_SCHEMA.field(i) for i in range(RAW_SCHEMA.get_field_index("data"))),
        pa.field("data", pa.string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=True),
        pa.field("category", pa.string(), nullable=False),
        pa.field("occurred_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("correlation_id", pa.string(), nullable=True),
        pa.field("causation_id", pa.string(), nullable=True),
    ]
)

# Metadata key that carries a payload's shape version (absent = version 1).
SCHEMA_VERSION_KEY = "schemaVersion"
# Metadata key with the business time of an event (ISO 8601). EventStoreDB's `created` is the
# time of the write, which for imported or replayed history is not when things happened; the
# lake's `occurred_at` is this value when present, else `created`. Time-based analyses use it.
OCCURRED_AT_KEY = "occurredAt"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# json.dumps(obj, separators=(",", ":")) without building an encoder per call (a third faster).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def created_from_ticks(ticks: int) -> datetime:
    """EventStoreDB's `created` (100-ns ticks since the Unix epoch) as a UTC datetime (µs).

    Example:
        >>> created_from_ticks(17_000_000_000_000_000)
        datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc)
    """
    return _EPOCH + timedelta(microseconds=ticks // 10)


def ticks_from_created(created: datetime) -> int:
    """The inverse of `created_from_ticks` (to µs precision)."""
    delta = created - _EPOCH
    return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds) * 10


def category_of(stream_name: str) -> str:
    """The category of a stream: its name before the first '-' (the whole name if none).

    Example:
        >>> category_of("user-42")
        'user'
    """
    return stream_name.split("-", 1)[0]


def is_system_event_type(event_type: str) -> bool:
    """System event types start with '$' ($metadata, $streamDeleted, $>, ...)."""
    return event_type.startswith("$")


def archive_line(event: Mapping[str, Any]) -> str:
    r"""One raw event (RAW_SCHEMA fields) as a line of a JSONL archive.

    The archive format, one JSON object per line: the RAW_SCHEMA fields by name; `created` as
    ISO 8601 UTC with microseconds and a trailing 'Z'; `data` and `metadata` as text when the
    bytes are UTF-8, else `data_base64` / `metadata_base64` holding the bytes (nothing is lost).

    Example:
        >>> line = archive_line({"commit_position": 1, "prepare_position": 1,
        ...     "stream_name": "s-1", "stream_revision": 0, "event_id": "e",
        ...     "event_type": "T", "created": datetime(2024, 1, 1, tzinfo=UTC),
        ...     "content_type": "application/octet-stream", "data": b"\xff", "metadata": b"{}"})
        >>> parse_archive_line(line)["data"]
        b'\xff'
    """
    out: dict[str, Any] = {}
    for name in RAW_SCHEMA.names:
        value = event[name]
        if name == "created":
            out[name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        elif name in ("data", "metadata"):
            try:
                out[name] = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                out[name + "_base64"] = base64.b64encode(value).decode("ascii")
        else:
            out[name] = value
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def json_object(text: bytes | str, event_type: str, *, what: str = "payload") -> dict[str, Any]:
    """Stored JSON text that must hold an object, parsed; anything else is a PayloadDecodeError.

    Example:
        >>> json_object('{"amount": "5.00"}', "BalanceDeposited")
        {'amount': '5.00'}
    """
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise PayloadDecodeError(event_type, f"{what} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise PayloadDecodeError(
            event_type, f"{what} is a JSON {type(value).__name__}, not an object"
        )
    return value


def parse_archive_line(line: str) -> dict[str, Any]:
    """The inverse of `archive_line`: a raw event dict with bytes payloads and a UTC datetime."""
    obj: dict[str, Any] = json.loads(line)
    for name in ("data", "metadata"):
        if name + "_base64" in obj:
            obj[name] = base64.b64decode(obj.pop(name + "_base64"))
        else:
            obj[name] = obj[name].encode("utf-8")
    obj["created"] = datetime.fromisoformat(obj["created"].replace("Z", "+00:00"))
    return obj


def _too_new(event_type: str, version: int, current: int) -> PayloadDecodeError:
    return PayloadDecodeError(
        event_type,
        f"payload version {version} is newer than the registered version {current}; "
        "upgrade the code that registers this type",
    )


def _no_step(event_type: str, version: int) -> PayloadDecodeError:
    return PayloadDecodeError(
        event_type,
        f"no upcaster from version {version} to {version + 1}; register one with "
        f"@registry.upcaster({event_type!r}, from_version={version})",
    )


@runtime_checkable
class Payload(Protocol):
    """A typed payload: built from a JSON object, turned back into one without loss."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Payload:
        """The payload decoded from its stored JSON object (current shape)."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The payload as the JSON object production stores."""
        ...


P = TypeVar("P", bound=type)
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class _Registration:
    event_type: str
    cls: type
    version: int


class EventRegistry:
    """Stored event type name -> payload class, with upcasters for older payload versions.

    Example:
        >>> registry = EventRegistry()
        >>> @registry.register("Renamed", version=2)
        ... @dataclasses.dataclass(frozen=True)
        ... class Renamed:
        ...     full_name: str
        ...     @classmethod
        ...     def from_json(cls, data): return cls(data["fullName"])
        ...     def to_json(self): return {"fullName": self.full_name}
        >>> @registry.upcaster("Renamed", from_version=1)
        ... def _v1_to_v2(data): return {"fullName": data["name"]}
        >>> registry.decode("Renamed", {"name": "Ada"}, version=1)
        Renamed(full_name='Ada')
    """

    def __init__(self) -> None:
        self._by_name: dict[str, _Registration] = {}
        self._by_class: dict[type, str] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._decoders: dict[tuple[str, int], Callable[[dict[str, Any]], Any]] = {}

    def register(self, event_type: str, *, version: int = 1) -> Callable[[P], P]:
        """Class decorator: register a payload class under its stored type name."""

        def decorate(cls: P) -> P:
            self.add(event_type, cls, version=version)
            return cls

        return decorate

    def add(self, event_type: str, cls: type, *, version: int = 1) -> None:
        """Register `cls` for `event_type` (current shape `version`); a second name raises."""
        if not event_type:
            raise ValueError("event type names must be non-empty strings")
        if event_type in self._by_name:
            raise DuplicateEventTypeError(event_type, self._by_name[event_type].cls, cls)
        if version < 1:
            raise ValueError(f"payload version must be >= 1, got {version}")
        self._by_name[event_type] = _Registration(event_type, cls, version)
        self._by_class[cls] = event_type
        self._decoders.clear()

    def upcaster(self, event_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register a function turning a `from_version` payload into the next one."""

        def decorate(fn: Upcaster) -> Upcaster:
            key = (event_type, from_version)
            if key in self._upcasters:
                raise ValueError(f"an upcaster for {event_type!r} v{from_version} already exists")
            self._upcasters[key] = fn
            self._decoders.clear()
            return fn

        return decorate

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._by_name

    @property
    def event_types(self) -> list[str]:
        """The registered stored type names, sorted."""
        return sorted(self._by_name)

    def class_for(self, event_type: str) -> type:
        """The payload class registered for `event_type`; raises UnknownEventTypeError."""
        try:
            return self._by_name[event_type].cls
        except KeyError:
            raise UnknownEventTypeError(event_type, list(self._by_name)) from None

    def type_name_of(self, payload: object) -> str:
        """The stored type name of a payload object (or payload class)."""
        cls = payload if isinstance(payload, type) else type(payload)
        try:
            return self._by_class[cls]
        except KeyError:
            raise UnknownEventTypeError(cls.__name__, list(self._by_name)) from None

    def current_version(self, event_type: str) -> int:
        """The payload version new events of `event_type` are written with."""
        self.class_for(event_type)
        return self._by_name[event_type].version

    def upcast(self, event_type: str, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Bring a stored payload of `version` up to the registered current shape."""
        current = self.current_version(event_type)
        if version > current:
            raise _too_new(event_type, version, current)
        while version < current:
            step = self._upcasters.get((event_type, version))
            if step is None:
                raise _no_step(event_type, version)
            data = step(data)
            version += 1
        return data

    def _chain(self, event_type: str, version: int) -> list[Upcaster]:
        """The upcasters from `version` to the current one, checked whole before any runs."""
        current = self.current_version(event_type)
        if version > current:
            raise _too_new(event_type, version, current)
        steps = []
        for v in range(version, current):
            step = self._upcasters.get((event_type, v))
            if step is None:
                raise _no_step(event_type, v)
            steps.append(step)
        return steps

    def decode(
        self, event_type: str, data: Mapping[str, Any] | bytes | str, *, version: int = 1
    ) -> Any:
        """Decode a stored payload (JSON bytes/text or an object) into its payload class."""
        cls = self.class_for(event_type)
        if isinstance(data, bytes | str):
            data = json_object(data, event_type)
        if not isinstance(data, Mapping):
            raise PayloadDecodeError(
                event_type, f"payload is a JSON {type(data).__name__}, not an object"
            )
        upcast = self.upcast(event_type, dict(data), version)
        try:
            return cls.from_json(upcast)  # type: ignore[attr-defined]
        except (KeyError, TypeError, ValueError, ArithmeticError) as e:
            raise PayloadDecodeError(event_type, f"{type(e).__name__}: {e}") from e

    def decoder(self, event_type: str, *, version: int = 1) -> Callable[[dict[str, Any]], Any]:
        """A function decoding parsed payloads of `event_type` stored at `version`, as `decode`.

        It runs the upcasters from `version` and the class's ``from_json``, wrapping their
        errors as ``decode`` does, so ``decoder(t, version=v)(data)`` is ``decode(t, data,
        version=v)``. It is built once per (type, version) and kept until the next registration,
        so a replay of a million events looks the chain up once, not a million times. It may
        change the dict it is given (upcasters receive it): pass a fresh one. Raises
        UnknownEventTypeError for an unknown type and PayloadDecodeError for a version it
        cannot upcast (a version too new, a missing step), where ``decode`` would first run the
        steps that exist.

        Example:
            >>> registry = EventRegistry()
            >>> @registry.register("Noted")
            ... @dataclasses.dataclass(frozen=True)
            ... class Noted:
            ...     text: str
            ...     @classmethod
            ...     def from_json(cls, data): return cls(data["text"])
            ...     def to_json(self): return {"text": self.text}
            >>> registry.decoder("Noted")({"text": "hi"})
            Noted(text='hi')
        """
        found = self._decoders.get((event_type, version))
        if found is None:
            found = self._decoders[(event_type, version)] = self._build_decoder(event_type, version)
        return found

    def _build_decoder(self, event_type: str, version: int) -> Callable[[dict[str, Any]], Any]:
        from_json = self.class_for(event_type).from_json  # type: ignore[attr-defined]
        steps = self._chain(event_type, version)

        def decode(data: dict[str, Any]) -> Any:
            for step in steps:
                data = step(data)
            try:
                return from_json(data)
            except (KeyError, TypeError, ValueError, ArithmeticError) as e:
                raise PayloadDecodeError(event_type, f"{type(e).__name__}: {e}") from e

        return decode

    def encode(self, payload: Any) -> tuple[str, bytes, int]:
        """A payload object as (stored type name, JSON bytes, payload version)."""
        event_type = self.type_name_of(payload)
        body = _COMPACT_JSON.encode(payload.to_json())
        return event_type, body.encode(), self._by_name[event_type].version
