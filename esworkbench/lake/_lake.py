"""The `Lake`: one DuckDB event-lake file and the ways to read it (`esworkbench.lake` re-exports).

Reading follows polars' verbs: `read_*` returns a DataFrame, `scan_*` a LazyFrame, `iter_*` a
stream of Arrow batches; every one takes the same filters (`EventFilter`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import polars as pl
import pyarrow as pa

from esworkbench.config import DEMO_LAKE, resolve_lake_path
from esworkbench.errors import LakeError
from esworkbench.events import ENVELOPE_SCHEMA, OCCURRED_AT_KEY
from esworkbench.filters import EventFilter
from esworkbench.lake import _export, _partitions, _schema, _views
from esworkbench.lake._open import DEFAULT_LOCK_TIMEOUT, connect, permission_error
from esworkbench.lake._readmodels import ReadModelStore, read_model_schemas
from esworkbench.lake._schema import q, rows
from esworkbench.lake._streams import StreamBatches
from esworkbench.lake._writer import LakeWriter, read_checkpoint

if TYPE_CHECKING:
    import pandas as pd
    from typing_extensions import Unpack

    from esworkbench.filters import FilterOptions

__all__ = ["DEFAULT_LOCK_TIMEOUT", "Lake", "LakeSummary", "opened"]

_ENVELOPE_SELECT = _export.ENVELOPE_SELECT
_DIGEST_VERSION = "lake-v1"
_HOW_TO_MAKE_ONE = (
    f"make one with `make demo` (which builds {DEMO_LAKE}) or `esworkbench sync --lake PATH "
    "--uri esdb://HOST:2113?tls=false` (or --archive FILE)"
)


@dataclasses.dataclass(frozen=True, slots=True)
class LakeSummary:
    """Counts for a quick look at a lake (`print(lake.summary())`)."""

    path: str
    events: int
    first_position: int | None
    last_position: int | None
    first_created: datetime | None
    last_created: datetime | None
    event_types: dict[str, int]
    rejected: dict[str, int]
    sync_runs: int
    checkpoints: dict[str, int]
    flags: dict[str, int] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"lake {self.path}: {self.events:,} events, positions "
            f"{self.first_position}..{self.last_position}",
        ]
        if self.first_created is not None and self.last_created is not None:
            lines.append(
                f"  created {self.first_created.isoformat()} .. {self.last_created.isoformat()}"
            )
        width = max((len(t) for t in self.event_types), default=0)
        lines.append("  events per type:")
        lines += [f"    {t:<{width}}  {n:>12,}" for t, n in self.event_types.items()]
        total_rejected = sum(self.rejected.values())
        lines.append(f"  rejected: {total_rejected:,}")
        lines += [f"    {r}: {n:,}" for r, n in self.rejected.items()]
        lines.append(f"  flagged: {sum(self.flags.values()):,}")
        lines += [f"    {f}: {n:,}" for f, n in self.flags.items()]
        lines.append(f"  sync runs: {self.sync_runs}; checkpoints:")
        lines += [f"    {k} -> {p}" for k, p in self.checkpoints.items()]
        return "\n".join(lines)


class Lake:
    """A DuckDB event lake file; open it as a context manager.

    Every event a sync reads ends up in exactly one place: `events` or `_rejected` (with its
    raw bytes and a reason). Events the lake keeps but does not fully trust are *flagged*: one
    row per problem in the `_flags` table (commit position, event id, stream, type, `flag`
    code, `detail`), read with `read_flags()` and counted in `summary()`. Flag codes:
    `not_an_object` (the payload is valid JSON but not an object: its typed view shows no
    columns for it), `number_out_of_range` (a number that does not fit BIGINT, DOUBLE or
    DECIMAL(18, s): left out of type inference, so the column keeps its type, and read as
    NULL where it does not fit), `occurred_at_invalid` and `occurred_at_implausible` (the
    metadata's occurredAt does not parse, or lies more than a year after `created` or more
    than 100 years before it: `occurred_at` holds `created` instead).

    DuckDB lets one process write a file, or several read it, at a time. Opening waits up to
    `lock_timeout` seconds for another process (a running sync, a notebook holding the lake
    open) to let go, saying once that it waits and for whom; hold a lake open only as long as
    you use it (a ``with`` block, or the functions that take a path and open it per call).

    Args:
        path: the DuckDB file (created with its schema if missing, unless read_only).
        read_only: open without write access (several readers may share a file).
        create: create a missing file (else a missing lake is an error that says how to make
            one; read-only opens never create).
        lock_timeout: seconds to wait for a lock held by another process (0: do not wait).
        on_wait: called once with the message when opening has to wait (default: printed to
            stderr, which a notebook shows under the cell).

    Example:
        >>> with Lake("data/lake/demo.duckdb", read_only=True) as lake:   # doctest: +SKIP
        ...     lake.read_events(category="user", event_types=["BalanceDeposited"])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        create: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._fields = _views.FieldState()
        if (read_only or not create) and not self.path.exists():
            where = "" if self.path.is_absolute() else f" (from {Path.cwd()})"
            raise LakeError(f"no lake at {self.path}{where}: {_HOW_TO_MAKE_ONE}")
        existed = self.path.exists()
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except PermissionError as e:
                raise permission_error(self.path, read_only, str(e)) from e
        self._con = connect(self.path, read_only, lock_timeout, on_wait)
        #: True when opening created the file (a first sync that fails removes it again).
        self.created = not existed and self.path.exists()
        # UTC everywhere: `created` and `occurred_at` come back as UTC timestamps.
        q(self._con, "SET TimeZone = 'UTC'")
        if not read_only:
            _schema.create_schema(self._con)
            # A DuckDB file has one writer at a time, so a run still marked running is left over
            # from a process that died (kill -9, power loss): record that.
            q(
                self._con,
                "UPDATE _sync_runs SET outcome = 'interrupted', error = 'the syncing "
                "process ended without finishing (killed?)' WHERE outcome = 'running'",
            )
        elif not rows(
            self._con,
            "SELECT 1 FROM duckdb_tables() WHERE table_name = 'events' AND schema_name = 'main'",
        ):
            raise LakeError(f"{self.path} is not an esworkbench lake (no events table)")

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (LazyFrames from scan_events cannot be collected after this)."""
        self._con.close()

    def remove(self) -> None:
        """Close the lake and delete its file (and DuckDB's write-ahead log beside it)."""
        self.close()
        for file in (self.path, self.path.with_name(self.path.name + ".wal")):
            file.unlink(missing_ok=True)

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lake({str(self.path)!r}, read_only={self.read_only})"

    # -- writing (see esworkbench.lake._sync) -------------------------------------------

    def writer(self, *, batch_size: int) -> LakeWriter:
        """A `LakeWriter` for one sync (use it as a context manager).

        Raises:
            LakeError: the lake is open read-only.
        """
        if self.read_only:
            raise LakeError(
                f"the lake {self.path} is open read-only; open it with "
                "read_only=False to sync into it"
            )
        return LakeWriter(self._con, self._fields, batch_size=batch_size)

    def read_model(self, name: str, version: int) -> ReadModelStore:
        """The read model ``rm_<name>_v<version>`` of a projection (it may not exist yet).

        Rebuilding writes into it, so the lake must be open for writing; reading works either
        way (see `esworkbench.lake._readmodels`).

        Example:
            >>> lake.read_model("account_summary", 1).read()              # doctest: +SKIP
        """
        return ReadModelStore(self._con, name, version)

    def read_model_schemas(self) -> list[str]:
        """The read-model schemas (``rm_<name>_v<version>``) this lake holds."""
        return read_model_schemas(self._con)

    # -- positions and bookkeeping --------------------------------------------------------

    def checkpoint(self, source_key: str) -> int | None:
        """The commit position a source has been synced through, or None if never synced.

        Example:
            >>> lake.checkpoint(source.key)                                # doctest: +SKIP
            123456
        """
        return read_checkpoint(self._con, source_key)

    def head_position(self) -> int | None:
        """The largest commit position in `events` (None for an empty lake)."""
        ((head,),) = rows(self._con, "SELECT max(commit_position) FROM events")
        return None if head is None else int(head)

    # -- reading events -------------------------------------------------------------------

    def _where(self, f: EventFilter) -> tuple[str, list[Any]]:
        return _export.where_sql(f)

    def _events_sql(self, f: EventFilter) -> tuple[str, list[Any]]:
        where, params = self._where(f)
        return f"SELECT {_ENVELOPE_SELECT} FROM events{where} ORDER BY commit_position", params

    def _relation(self, f: EventFilter) -> duckdb.DuckDBPyRelation:
        sql, params = self._events_sql(f)
        rel = self._con.sql(sql, params=params)
        assert rel is not None
        return rel

    def read_events(self, **filters: Unpack[FilterOptions]) -> pl.DataFrame:
        """Events as a Polars DataFrame (ENVELOPE_SCHEMA columns), in commit-position order.

        Filters are those of `EventFilter`: all given conditions must hold.

        Example:
            >>> lake.read_events(category="user", since="2024-01-01")    # doctest: +SKIP
        """
        return pl.from_arrow(self._arrow(EventFilter.of(**filters)))  # type: ignore[return-value]

    def scan_events(self, **filters: Unpack[FilterOptions]) -> pl.LazyFrame:
        """Events as a Polars LazyFrame; filters and column selections are pushed into DuckDB.

        Same filters as `read_events`. Collect it while the lake is open.

        Example:
            >>> lake.scan_events(category="user").select("event_type").collect()  # doctest: +SKIP
        """
        rel = self._relation(EventFilter.of(**filters))
        frame: pl.LazyFrame = rel.pl(lazy=True)
        return frame

    def iter_batches(
        self, *, batch_size: int = 65_536, **filters: Unpack[FilterOptions]
    ) -> Iterator[pa.RecordBatch]:
        """Events as a stream of Arrow record batches (ENVELOPE_SCHEMA), in position order.

        Memory is one batch at a time; the lake stays usable while you iterate (the stream
        runs on its own cursor).

        Example:
            >>> for batch in lake.iter_batches(batch_size=10_000):     # doctest: +SKIP
            ...     process(batch)
        """
        sql, params = self._events_sql(EventFilter.of(**filters))
        cursor = self._con.cursor()
        try:
            q(cursor, "SET TimeZone = 'UTC'")
            rel = cursor.sql(sql, params=params)
            assert rel is not None
            reader = rel.to_arrow_reader(batch_size)
            for batch in reader:
                yield _envelope_batch(batch)
        finally:
            cursor.close()

    def iter_streams(
        self, *, batch_size: int = 50_000, **filters: Unpack[FilterOptions]
    ) -> StreamBatches:
        """Whole streams in (stream, revision) order, in batches: the input of a fold.

        The events in scope and, in their place, those the lake rejected (column
        ``rejected``: the lake's reason). Each batch is about `batch_size` rows and never
        splits a stream; memory follows the batch, not the lake (see ``_streams``). Filter on
        streams (category, names, prefix, regex): rejected copies are matched to kept events
        by stream and revision.

        Example:
            >>> for table in lake.iter_streams(category="user"):         # doctest: +SKIP
            ...     fold(table)
        """
        return StreamBatches(self._con, EventFilter.of(**filters), batch_size=batch_size)

    def _arrow(self, f: EventFilter) -> pa.Table:
        table = self._relation(f).to_arrow_table()
        return _envelope_table(table)

    def read_arrow(self, **filters: Unpack[FilterOptions]) -> pa.Table:
        """Events as an Arrow table (ENVELOPE_SCHEMA); same filters as `read_events`."""
        return self._arrow(EventFilter.of(**filters))

    def read_pandas(self, **filters: Unpack[FilterOptions]) -> pd.DataFrame:
        """Events as a pandas DataFrame; same filters as `read_events`."""
        return self._arrow(EventFilter.of(**filters)).to_pandas()

    # -- typed views ----------------------------------------------------------------------

    def typed_event_types(self) -> list[str]:
        """Event types that have a typed view."""
        found = rows(
            self._con,
            "SELECT view_name FROM duckdb_views() WHERE schema_name = 'typed' ORDER BY view_name",
        )
        return [r[0] for r in found]

    def typed_schema(self, event_type: str) -> dict[str, str]:
        """Payload column -> SQL type of an event type's typed view (as inferred so far)."""
        self._require_typed(event_type)
        found = rows(self._con, f"DESCRIBE SELECT * FROM {_views.view_name(event_type)}")
        skip = set(_views.ENVELOPE_COLUMNS)
        return {r[0]: r[1] for r in found if r[0] not in skip}

    def _require_typed(self, event_type: str) -> None:
        known = self.typed_event_types()
        if event_type not in known:
            raise LakeError(
                f"no typed view for event type {event_type!r}; the lake has views "
                f"for: {', '.join(known) or 'none (sync some events first)'}"
            )

    def read_typed(self, event_type: str, **filters: Unpack[FilterOptions]) -> pl.DataFrame:
        """One event type with its JSON payload flattened into typed columns, by commit position.

        Money comes as exact DECIMAL.

        Example:
            >>> lake.read_typed("BalanceDeposited").select("userId", "amount")  # doctest: +SKIP
        """
        self._require_typed(event_type)
        where, params = self._where(EventFilter.of(**filters))
        rel = self._con.sql(
            f"SELECT * FROM {_views.view_name(event_type)}{where} ORDER BY commit_position",
            params=params,
        )
        assert rel is not None
        return pl.from_arrow(rel.to_arrow_table())  # type: ignore[return-value]

    # -- audit tables ---------------------------------------------------------------------

    def read_rejected(self, **filters: Unpack[FilterOptions]) -> pl.DataFrame:
        """Events that could not be decoded.

        Raw bytes, envelope fields and `reason` (its first word is a code: malformed_json,
        binary_payload, malformed_metadata, invalid_event_id, duplicate_event_id), and
        ``occurred_at`` (business time from the metadata where it still reads, else
        ``created``).

        Same filters as `read_events` (on the envelope fields a rejected event still has).
        """
        where, params = _export.where_sql(
            EventFilter.of(**filters), category="split_part(stream_name, '-', 1)"
        )
        # Business time as the lake derives it for kept events, where the metadata still
        # reads (a malformed payload usually comes with intact metadata); else `created`.
        occurred = (
            "coalesce(try_cast(try(json_extract_string(try(decode(metadata)), "
            f"'$.{OCCURRED_AT_KEY}')) AS TIMESTAMPTZ), created) AS occurred_at"
        )
        return self._frame(
            f"SELECT *, {occurred} FROM _rejected{where} ORDER BY commit_position, event_id",
            params,
        )

    def read_flags(self, **filters: Unpack[FilterOptions]) -> pl.DataFrame:
        """Problems with events the lake kept: one row per flag (see the class docstring).

        Same filters as `read_events` (on the envelope fields a flag row has).

        Example:
            >>> lake.read_flags().group_by("flag").len()                  # doctest: +SKIP
        """
        where, params = _export.where_sql(
            EventFilter.of(**filters), category="split_part(stream_name, '-', 1)"
        )
        return self._frame(
            f"SELECT * FROM _flags{where} ORDER BY commit_position, event_id, flag", params
        )

    def read_sync_runs(self) -> pl.DataFrame:
        """The audit of every sync.

        Source with credentials masked, times, positions, counts, outcome, error.
        """
        return self._frame("SELECT * FROM _sync_runs ORDER BY run_id")

    def read_checkpoints(self) -> pl.DataFrame:
        """Source key -> commit position synced through."""
        return self._frame("SELECT * FROM _checkpoints ORDER BY source_key")

    def read_sql(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """The result of one SQL query over the lake's tables and views, as a DataFrame.

        The tables are those of the module docstring (`events`, `_rejected`, ...) and the typed
        views ``typed."<event type>"``; the connection is the lake's own (UTC time zone).

        Example:
            >>> lake.read_sql("SELECT event_type, count(*) AS n FROM events GROUP BY ALL")
            ... # doctest: +SKIP
        """
        try:
            return self._frame(sql, None if params is None else list(params))
        except duckdb.Error as e:
            raise LakeError(f"the query failed: {e}. Query: {sql.strip()[:300]}") from e

    def _frame(self, sql: str, params: Any = None) -> pl.DataFrame:
        rel = self._con.sql(sql, params=params)
        assert rel is not None
        return pl.from_arrow(rel.to_arrow_table())  # type: ignore[return-value]

    def summary(self) -> LakeSummary:
        """Counts per event type, positions, rejected events per reason, syncs, checkpoints.

        Example:
            >>> print(lake.summary())                                     # doctest: +SKIP
        """
        ((n, first, last, c0, c1),) = rows(
            self._con,
            "SELECT count(*), min(commit_position), max(commit_position), "
            "min(created), max(created) FROM events",
        )
        types = rows(
            self._con, "SELECT event_type, count(*) FROM events GROUP BY ALL ORDER BY 2 DESC, 1"
        )
        rejected = rows(
            self._con,
            "SELECT split_part(reason, ':', 1), count(*) FROM _rejected "
            "GROUP BY ALL ORDER BY 2 DESC, 1",
        )
        flags = rows(self._con, "SELECT flag, count(*) FROM _flags GROUP BY ALL ORDER BY 2 DESC, 1")
        ((runs,),) = rows(self._con, "SELECT count(*) FROM _sync_runs")
        cps = rows(self._con, "SELECT source_key, position FROM _checkpoints ORDER BY 1")
        return LakeSummary(
            path=str(self.path),
            events=int(n),
            first_position=None if first is None else int(first),
            last_position=None if last is None else int(last),
            first_created=c0,
            last_created=c1,
            event_types={t: int(c) for t, c in types},
            rejected={r: int(c) for r, c in rejected},
            sync_runs=int(runs),
            checkpoints={k: int(p) for k, p in cps},
            flags={f: int(c) for f, c in flags},
        )

    def digest(self, **filters: Unpack[FilterOptions]) -> str:
        """A stable digest of the filtered events, computed inside DuckDB.

        It covers ids, positions, streams, types, payloads and metadata. Order-independent per
        event, so the same event set gives the same digest however it was synced; report
        manifests store it and `verify` recomputes it.

        Example:
            >>> lake.digest(category="user")                              # doctest: +SKIP
            'lake-v1:5e0c...'
        """
        where, params = self._where(EventFilter.of(**filters))
        sep = "chr(31)"
        ((n, first, last, acc),) = rows(
            self._con,
            "SELECT count(*), min(commit_position), max(commit_position), "
            f"bit_xor(md5_number(concat_ws({sep}, commit_position, event_id::VARCHAR, "
            f"stream_name, stream_revision, event_type, data, coalesce(metadata, '')))) "
            f"FROM events{where}",
            params,
        )
        text = f"{n}:{first}:{last}:{int(acc or 0):032x}"
        return f"{_DIGEST_VERSION}:{hashlib.sha256(text.encode()).hexdigest()}"

    # -- export ---------------------------------------------------------------------------

    def export_parquet(
        self,
        out_dir: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        **filters: Unpack[FilterOptions],
    ) -> Path:
        """Write events as Parquet partitioned by category and month of `created`.

        Hive layout (category=user/month=2024-01/...), for engines beyond one machine.

        Filters as for `read_events`, except that system events are included unless
        include_system=False. Returns the directory.

        Example:
            >>> lake.export_parquet("data/lake/parquet")                  # doctest: +SKIP
        """
        filters.setdefault("include_system", True)
        return _export.export_parquet(
            self._con, Path(out_dir), EventFilter.of(**filters), overwrite=overwrite
        )

    def export_archive(
        self,
        path: str | os.PathLike[str],
        *,
        format: Literal["jsonl", "parquet"] | None = None,
        include_rejected: bool = True,
        **filters: Unpack[FilterOptions],
    ) -> Path:
        """Write events back out as a RAW_SCHEMA archive (the compliance export).

        `esworkbench.sources.files.open_archive` reads it back: `.jsonl`, `.jsonl.gz` or
        `.parquet` (or as `format` says).

        Rejected events are included by default with their original bytes, so syncing the
        archive into a new lake rebuilds `events` and `_rejected` alike. Filters as for
        `read_events`, except that system events are included unless include_system=False.
        The file appears complete or not at all (written beside it, then renamed).

        Example:
            >>> lake.export_archive("exports/ledger-2024.jsonl.gz")      # doctest: +SKIP
        """
        filters.setdefault("include_system", True)
        out = Path(path)
        fmt = format or ("parquet" if out.suffix == ".parquet" else "jsonl")
        return _export.export_archive(
            self._con, out, EventFilter.of(**filters), fmt=fmt, include_rejected=include_rejected
        )

    def export_partitions(
        self,
        url: str | os.PathLike[str],
        *,
        buckets: int = 16,
        storage_options: dict[str, Any] | None = None,
    ) -> _partitions.PartitionManifest:
        """Write every event as `buckets` Parquet partitions of whole streams, for compute engines.

        Streams go to buckets by a stable hash of their name; each file holds whole streams
        sorted by (stream, revision), the rejected events among them (column ``rejected``), and
        ``manifest.json`` lists positions, event count and digest per partition. A second
        export rewrites only the partitions whose streams changed. `url` is a directory or any
        fsspec URL (``s3://...``, with `storage_options` for its credentials).

        Example:
            >>> lake.export_partitions("data/lake/demo.partitions", buckets=32)  # doctest: +SKIP
        """
        return _partitions.export_partitions(
            self._con, os.fspath(url), buckets=buckets, storage_options=storage_options
        )


def _envelope_table(table: pa.Table) -> pa.Table:
    # DuckDB names the time zone as set ("UTC"), but marks every column nullable: the schema
    # is made exact so frames compare equal whatever path they came through.
    return table.cast(ENVELOPE_SCHEMA) if table.schema != ENVELOPE_SCHEMA else table


def _envelope_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.cast(ENVELOPE_SCHEMA) if batch.schema != ENVELOPE_SCHEMA else batch


def opened(lake: Lake | str | os.PathLike[str]) -> AbstractContextManager[Lake]:
    """`lake` itself if it is an open `Lake`, else its path opened read-only (and closed after).

    For calls that take "a lake or its path" (replay, reports): a path is held open only for
    the duration of the call. A relative path that does not exist from the working directory
    is looked up by `esworkbench.config.resolve_lake_path` (``ESWORKBENCH_LAKE``, then the
    project root), so a notebook kernel started in ``notebooks/`` finds ``data/lake/...``.

    Example:
        >>> with opened("data/lake/demo.duckdb") as lake:                # doctest: +SKIP
        ...     lake.summary()
    """
    if isinstance(lake, Lake):
        return nullcontext(lake)
    return Lake(resolve_lake_path(lake), read_only=True)
