"""Read models in the lake: one DuckDB schema per projection version (private; see `Lake`).

A projection's rows live in schema ``rm_<name>_v<version>`` of the lake file, beside the events
they were built from: table ``rows`` (the read model, one row per key) and ``_checkpoint`` (one
row: the commit position the rows are built through, the pinned window, events applied). Rows
and checkpoint change in one transaction (`ReadModelStore.commit`), so an interrupted rebuild
leaves the rows of its last commit and resumes after its position: nothing twice, nothing lost.

Only the lake speaks SQL to DuckDB: projections hand over Arrow rows (Python projections) or a
query text over the lake's views (SQL projections) and get Arrow or Polars back.

Example:
    >>> with Lake("data/lake/demo.duckdb") as lake:                       # doctest: +SKIP
    ...     store = lake.read_model("account_summary", 1)
    ...     store.read()
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Sequence

import duckdb
import polars as pl
import pyarrow as pa

from esworkbench.errors import ConfigError, LakeError
from esworkbench.lake import _views
from esworkbench.lake._schema import q, rows

__all__ = ["READ_MODEL_PREFIX", "ReadModelCheckpoint", "ReadModelStore", "read_model_schema"]

READ_MODEL_PREFIX = "rm_"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# `{events}` or `{EventType}` in a SQL projection: the window's rows of that table or view.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_$][A-Za-z0-9_$.\-]*)\}")


def read_model_schema(name: str, version: int) -> str:
    """The schema of a read model: ``rm_<name>_v<version>``.

    Example:
        >>> read_model_schema("account_summary", 2)
        'rm_account_summary_v2'
    """
    if not _NAME.match(name):
        raise ConfigError(
            f"read-model name {name!r} must be lower-case letters, digits and '_', "
            "starting with a letter (it names a DuckDB schema)"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"read-model version must be an integer >= 1, got {version!r}")
    return f"{READ_MODEL_PREFIX}{name}_v{version}"


@dataclasses.dataclass(frozen=True, slots=True)
class ReadModelCheckpoint:
    """How far a read model is built.

    Attributes:
        position: the commit position its rows include every event through (None: none yet).
        first_position: the pinned window's first commit position.
        last_position: the pinned window's last commit position.
        events: events applied so far.
    """

    position: int | None
    first_position: int
    last_position: int
    events: int

    @property
    def complete(self) -> bool:
        """True when every event of the window is in the rows."""
        return self.position is not None and self.position >= self.last_position


class ReadModelStore:
    """The rows and checkpoint of one read model (made by `Lake.read_model`).

    Example:
        >>> store = lake.read_model("account_summary", 1)                  # doctest: +SKIP
        >>> store.checkpoint().position                                    # doctest: +SKIP
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, name: str, version: int) -> None:
        self._con = con
        self.name = name
        self.version = version
        self.schema = read_model_schema(name, version)

    def __repr__(self) -> str:
        return f"ReadModelStore({self.schema!r})"

    @property
    def _rows(self) -> str:
        return f'"{self.schema}".rows'

    @property
    def _cp(self) -> str:
        return f'"{self.schema}"._checkpoint'

    # -- life cycle ---------------------------------------------------------------------

    def exists(self) -> bool:
        """True when the schema holds a read model (rows and checkpoint)."""
        found = rows(
            self._con,
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? "
            "AND table_name IN ('rows', '_checkpoint')",
            [self.schema],
        )
        return int(found[0][0]) == 2

    def drop(self) -> None:
        """Remove the read model (its schema and everything in it)."""
        q(self._con, f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def create(self, columns: pa.Schema, *, key: str, first: int, last: int) -> None:
        """A new, empty read model with these columns, keyed by `key`, over [first, last].

        An existing one is replaced.
        """
        if key not in columns.names:
            raise ConfigError(f"read model {self.schema}: key {key!r} is not a column")
        self.drop()
        q(self._con, "BEGIN TRANSACTION")
        try:
            q(self._con, f'CREATE SCHEMA "{self.schema}"')
            with _registered(self._con, "_rm_empty", columns.empty_table()) as empty:
                q(self._con, f"CREATE TABLE {self._rows} AS SELECT * FROM {empty}")
            q(
                self._con,
                f"CREATE TABLE {self._cp} (key_column VARCHAR NOT NULL, position UBIGINT, "
                "first_position UBIGINT NOT NULL, last_position UBIGINT NOT NULL, "
                "events UBIGINT NOT NULL, updated TIMESTAMPTZ NOT NULL)",
            )
            q(
                self._con,
                f"INSERT INTO {self._cp} VALUES (?, NULL, ?, ?, 0, now())",
                [key, first, last],
            )
            q(self._con, "COMMIT")
        except BaseException:
            q(self._con, "ROLLBACK")
            raise

    def checkpoint(self) -> ReadModelCheckpoint | None:
        """How far the read model is built (None when it does not exist)."""
        if not self.exists():
            return None
        ((position, first, last, events),) = rows(
            self._con, f"SELECT position, first_position, last_position, events FROM {self._cp}"
        )
        return ReadModelCheckpoint(
            position=None if position is None else int(position),
            first_position=int(first),
            last_position=int(last),
            events=int(events),
        )

    def key(self) -> str:
        """The key column."""
        ((key,),) = rows(self._con, f"SELECT key_column FROM {self._cp}")
        return str(key)

    # -- rows ---------------------------------------------------------------------------

    def load_rows(self, keys: Sequence[str] | pa.Array) -> pa.Table:
        """The stored rows of these keys (those that exist)."""
        key = self.key()
        wanted = pa.table({"k": pa.array(keys, pa.string())})
        with _registered(self._con, "_rm_wanted", wanted) as name:
            rel = self._con.sql(
                f'SELECT r.* FROM {self._rows} r SEMI JOIN {name} w ON r."{key}" = w.k'
            )
            assert rel is not None
            return rel.to_arrow_table()

    def commit(self, changed: pa.Table, *, position: int, events: int) -> None:
        """Replace the rows of `changed`'s keys and move the checkpoint, in one transaction.

        Args:
            changed: the new rows of every key the events since the last commit touched.
            position: the commit position these rows now include every event through.
            events: events applied since the last commit.
        """
        key = self.key()
        q(self._con, "BEGIN TRANSACTION")
        try:
            if changed.num_rows:
                with _registered(self._con, "_rm_changed", changed) as name:
                    q(
                        self._con,
                        f'DELETE FROM {self._rows} WHERE "{key}" IN (SELECT "{key}" FROM {name})',
                    )
                    q(self._con, f"INSERT INTO {self._rows} BY NAME SELECT * FROM {name}")
            q(
                self._con,
                f"UPDATE {self._cp} SET position = ?, events = events + ?, updated = now()",
                [position, events],
            )
            q(self._con, "COMMIT")
        except BaseException:
            q(self._con, "ROLLBACK")
            raise

    def materialize(self, sql: str, *, key: str, first: int, last: int) -> int:
        """Build the read model from one query over the window [first, last]; returns rows.

        `sql` names its inputs as placeholders: ``{events}`` (the envelope) and
        ``{EventType}`` (that type's typed view), each standing for its rows in the window.
        Rows and checkpoint are replaced in one transaction.
        """
        query = self.window_sql(sql, first=first, last=last)
        self.drop()
        q(self._con, "BEGIN TRANSACTION")
        try:
            q(self._con, f'CREATE SCHEMA "{self.schema}"')
            try:
                q(self._con, f"CREATE TABLE {self._rows} AS {query}")
            except duckdb.Error as e:
                raise LakeError(f"the SQL of read model {self.schema} failed: {e}") from e
            columns = [r[0] for r in rows(self._con, f"DESCRIBE {self._rows}")]
            if key not in columns:
                raise ConfigError(
                    f"the SQL of read model {self.schema} has no key column {key!r}; "
                    f"its columns: {columns}"
                )
            ((count, events),) = rows(
                self._con,
                f"SELECT (SELECT count(*) FROM {self._rows}), "
                "(SELECT count(*) FROM events WHERE commit_position BETWEEN ? AND ?)",
                [first, last],
            )
            q(
                self._con,
                f"CREATE TABLE {self._cp} AS SELECT ?::VARCHAR AS key_column, "
                "?::UBIGINT AS position, ?::UBIGINT AS first_position, "
                "?::UBIGINT AS last_position, ?::UBIGINT AS events, now() AS updated",
                [key, last, first, last, int(events)],
            )
            q(self._con, "COMMIT")
        except BaseException:
            q(self._con, "ROLLBACK")
            raise
        return int(count)

    def query(self, sql: str, *, key: str, first: int, last: int) -> pl.DataFrame:
        """Run a SQL projection's query over [first, last] without storing it, by key."""
        rel = self._con.sql(
            f'SELECT * FROM ({self.window_sql(sql, first=first, last=last)}) ORDER BY "{key}"'
        )
        assert rel is not None
        return pl.from_arrow(rel.to_arrow_table())  # type: ignore[return-value]

    def window_sql(self, sql: str, *, first: int, last: int) -> str:
        """`sql` with each placeholder replaced by its table's or view's rows in the window."""
        known = set(
            r[0]
            for r in rows(
                self._con, "SELECT view_name FROM duckdb_views() WHERE schema_name = 'typed'"
            )
        )
        window = f"commit_position BETWEEN {int(first)} AND {int(last)}"

        def source(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "events":
                return f"(SELECT * FROM main.events WHERE {window})"
            if name not in known:
                # A type the lake has not seen yet reads as no rows of the envelope's shape.
                return f"(SELECT * FROM main.events WHERE false AND event_type = '{name}')"
            return f"(SELECT * FROM {_views.view_name(name)} WHERE {window})"

        return _PLACEHOLDER.sub(source, sql)

    def read(self) -> pl.DataFrame:
        """The read model's rows, ordered by key."""
        if not self.exists():
            raise LakeError(f"no read model {self.schema} in this lake; rebuild it first")
        rel = self._con.sql(f'SELECT * FROM {self._rows} ORDER BY "{self.key()}"')
        assert rel is not None
        return pl.from_arrow(rel.to_arrow_table())  # type: ignore[return-value]


@contextlib.contextmanager
def _registered(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> Iterator[str]:
    """`table` visible to SQL as `name` for the duration (explicit: no frame inspection)."""
    con.register(name, table)
    try:
        yield name
    finally:
        con.unregister(name)


def read_model_schemas(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The read-model schemas in a lake."""
    found = rows(
        con,
        "SELECT DISTINCT schema_name FROM duckdb_tables() WHERE schema_name LIKE 'rm\\_%' "
        "ESCAPE '\\' AND table_name = '_checkpoint' ORDER BY 1",
    )
    return [r[0] for r in found]
