"""Read-model definitions: Python projections with one handler per event type, SQL projections.

A projection turns events into the rows of a read model, one row per key. Two kinds:

- `Projection` (Python): a class with a ``name``, a ``version``, a ``key`` column, the read
  model's ``columns`` (an Arrow schema; money as ``pa.decimal128``), the ``registry`` that
  decodes (and upcasts) its payloads, ``key_of(event)`` and one handler per event type, marked
  with ``@handles("EventType")``, that updates the key's row in place.
- `SqlProjection`: a query over the lake for read models that are just aggregations. It names
  its inputs as placeholders, ``{events}`` (the envelope) and ``{EventType}`` (that type's typed
  view, payload as typed columns, money as DECIMAL), each standing for its rows in the window.

``partition = "stream"`` (the default) promises that all events of one key are in one stream,
so a rebuild may fold streams in parallel and a divergence is traced through that stream only;
``"position"`` makes every run one pass in commit-position order.

Both are named by import path, like aggregates: ``resolve_projection("pkg.mod:Class")``.

Example:
    >>> spec = resolve_projection("esworkbench.examples.bank.projections:AccountSummaryV1")
    >>> spec.name, spec.version, spec.schema_name
    ('account_summary', 1, 'rm_account_summary_v1')
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import pyarrow as pa

from esworkbench.errors import ConfigError
from esworkbench.events import EventRegistry
from esworkbench.imports import import_object
from esworkbench.lake import read_model_schema

__all__ = [
    "Event",
    "Partition",
    "Projection",
    "ProjectionSpec",
    "Row",
    "SqlProjection",
    "handles",
    "resolve_projection",
]

Row = dict[str, Any]
Partition = Literal["stream", "position"]
H = TypeVar("H", bound=Callable[..., None])
_HANDLES = "__projection_handles__"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_$][A-Za-z0-9_$.\-]*)\}")


class Event(NamedTuple):
    """One decoded event as a handler sees it: the envelope and the typed payload."""

    stream_name: str
    stream_revision: int
    commit_position: int
    created: datetime
    occurred_at: datetime
    event_type: str
    event_id: str
    payload: Any


def handles(*event_types: str) -> Callable[[H], H]:
    """Mark a `Projection` method as the handler of these stored event types.

    A handler is called as ``handler(self, row, event)`` with the key's row (a dict, updated
    in place) and the `Event`.

    Example:
        >>> class Counts(Projection):
        ...     name, version, key = "counts", 1, "stream"
        ...     columns = pa.schema([("stream", pa.string()), ("n", pa.int64())])
        ...     registry = EventRegistry()
        ...     @handles("Made")
        ...     def made(self, row, event):
        ...         row["n"] = (row["n"] or 0) + 1
        >>> Counts.event_types()
        ('Made',)
    """
    if not event_types or not all(isinstance(t, str) and t for t in event_types):
        raise ConfigError(f"handles() needs one or more stored event type names, got {event_types}")

    def mark(fn: H) -> H:
        setattr(fn, _HANDLES, (*getattr(fn, _HANDLES, ()), *event_types))
        return fn

    return mark


class Projection:
    """A read model built by Python handlers, one per event type (see the module docstring).

    Subclasses set the class attributes below and mark handlers with `handles`. One instance
    is made per rebuild; keep the read model's state in the rows, not on the instance.

    Attributes:
        name: the read model's name (lower-case, digits, '_'; names the DuckDB schema).
        version: the definition's version; a changed rule gets a new version.
        key: the key column.
        columns: the read model's columns, an Arrow schema including the key (string).
        registry: decodes stored payloads (and upcasts old shapes) before handlers see them.
        partition: "stream" when every key's events are in one stream, else "position".
    """

    name: ClassVar[str]
    version: ClassVar[int]
    key: ClassVar[str]
    columns: ClassVar[pa.Schema]
    registry: ClassVar[EventRegistry]
    partition: ClassVar[Partition] = "stream"
    _handlers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for event_type in getattr(value, _HANDLES, ()):
                    if event_type in handlers and handlers[event_type] != attr and klass is cls:
                        raise ConfigError(
                            f"{cls.__qualname__} has two handlers for {event_type!r} "
                            f"({handlers[event_type]} and {attr}); keep one per event type"
                        )
                    handlers[event_type] = attr
        cls._handlers = handlers

    @classmethod
    def event_types(cls) -> tuple[str, ...]:
        """The stored event types this projection handles."""
        return tuple(cls._handlers)

    def handler(self, event_type: str) -> Callable[[Row, Event], None]:
        """The bound handler of an event type."""
        fn: Callable[[Row, Event], None] = getattr(self, self._handlers[event_type])
        return fn

    def key_of(self, event: Event) -> str | None:
        """The key whose row this event updates (None: the event does not concern the model).

        Default: the stream name.
        """
        return event.stream_name

    def new_row(self, key: str) -> Row:
        """The row of a key before its first event: the key, every other column None."""
        row: Row = dict.fromkeys(self.columns.names)
        row[self.key] = key
        return row

    def stream_of(self, key: str) -> str | None:
        """The stream holding a key's events, when known (narrows divergence tracing)."""
        return None


class SqlProjection:
    """A read model that is one query over the lake (see the module docstring).

    Attributes:
        name: the read model's name.
        version: the definition's version.
        key: the key column of the query's result.
        sql: the query; ``{events}`` and ``{EventType}`` placeholders stand for the rows of the
            envelope and of a typed view in the rebuilt window.

    Example:
        >>> class Deposits(SqlProjection):
        ...     name, version, key = "deposits", 1, "user_id"
        ...     sql = 'SELECT "userId" AS user_id, sum(amount) AS total FROM {BalanceDeposited} GROUP BY 1'
        >>> Deposits.event_types()
        ('BalanceDeposited',)
    """  # noqa: E501

    name: ClassVar[str]
    version: ClassVar[int]
    key: ClassVar[str]
    sql: ClassVar[str]

    @classmethod
    def event_types(cls) -> tuple[str, ...]:
        """The event types the query reads (its placeholders other than ``events``)."""
        found = _PLACEHOLDER.findall(cls.sql)
        return tuple(dict.fromkeys(t for t in found if t != "events"))


@dataclasses.dataclass(frozen=True)
class ProjectionSpec:
    """A resolved projection: its class and what a rebuild needs to know about it.

    Example:
        >>> resolve_projection("esworkbench.examples.bank.projections:AccountTotals").kind
        'sql'
    """

    cls: type[Projection] | type[SqlProjection]
    path: str

    @property
    def kind(self) -> Literal["python", "sql"]:
        """Either "python" or "sql"."""
        return "sql" if issubclass(self.cls, SqlProjection) else "python"

    @property
    def name(self) -> str:
        """The read model's name."""
        return self.cls.name

    @property
    def version(self) -> int:
        """The definition's version."""
        return self.cls.version

    @property
    def key(self) -> str:
        """The key column."""
        return self.cls.key

    @property
    def schema_name(self) -> str:
        """The DuckDB schema its rows live in, ``rm_<name>_v<version>``."""
        return read_model_schema(self.name, self.version)

    @property
    def partition(self) -> Partition:
        """Either "stream" (keys live in one stream each) or "position" (one ordered pass)."""
        return self.cls.partition if issubclass(self.cls, Projection) else "position"

    def event_types(self) -> tuple[str, ...]:
        """The stored event types it reads."""
        return self.cls.event_types()

    def python(self) -> Projection:
        """A fresh instance of a Python projection (ConfigError for a SQL one)."""
        if not issubclass(self.cls, Projection):
            raise ConfigError(f"{self.path} is a SQL projection; it has no Python handlers")
        return self.cls()

    def __str__(self) -> str:
        return f"{self.path} ({self.schema_name}, {self.kind})"


ProjectionLike = ProjectionSpec | type[Projection] | type[SqlProjection] | str


def resolve_projection(projection: ProjectionLike) -> ProjectionSpec:
    """The projection named by an import path ("package.module:Class"), or given as a class.

    Example:
        >>> resolve_projection("esworkbench.examples.bank.projections:AccountSummaryV2").version
        2
    """
    if isinstance(projection, ProjectionSpec):
        return projection
    if isinstance(projection, str):
        cls = _import(projection)
        path = projection
    else:
        cls = projection
        path = f"{getattr(cls, '__module__', '?')}:{getattr(cls, '__qualname__', cls)}"
    if not (isinstance(cls, type) and issubclass(cls, Projection | SqlProjection)):
        raise ConfigError(
            f"{path} is not a projection; subclass esworkbench.projections.Projection "
            "(Python handlers) or SqlProjection (one query)"
        )
    required = ("name", "version", "key") + (
        ("columns", "registry") if issubclass(cls, Projection) else ("sql",)
    )
    missing = [a for a in required if not hasattr(cls, a)]
    if missing:
        raise ConfigError(f"projection {path} lacks the class attribute(s) {missing}")
    read_model_schema(cls.name, cls.version)  # validates both
    if issubclass(cls, Projection):
        if cls.key not in cls.columns.names:
            raise ConfigError(f"projection {path}: key {cls.key!r} is not one of its columns")
        if not cls.event_types():
            raise ConfigError(f"projection {path} has no handlers; mark them with @handles(...)")
        unknown = [t for t in cls.event_types() if t not in cls.registry]
        if unknown:
            raise ConfigError(
                f"projection {path} handles {unknown}, which its registry cannot decode"
            )
        if cls.partition not in ("stream", "position"):
            raise ConfigError(f"projection {path}: partition must be 'stream' or 'position'")
    return ProjectionSpec(cls, path)


def _import(path: str) -> Any:
    return import_object(
        path, what="projection", example="esworkbench.examples.bank.projections:AccountSummaryV1"
    )
