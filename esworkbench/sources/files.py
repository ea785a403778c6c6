"""Archives of events as sources: JSONL (optionally gzipped) and Parquet.

The JSONL format is `esworkbench.events.archive_line` (one RAW_SCHEMA event per line, payloads
as text or base64); Parquet files hold the RAW_SCHEMA columns. `Lake.export_archive` writes
both, so an archive exported from one lake syncs into another unchanged (the compliance
round trip). Reading is columnar (Arrow's JSON and Parquet readers) and streams in batches.

An archive carries its own commit positions but need not be sorted by them, so a file source
promises a checkpoint only once it has read the whole file; an interrupted import reads the
file again and event ids make the repeat harmless.

Example:
    >>> from esworkbench.lake import Lake, sync
    >>> with Lake("data/lake/demo.duckdb") as lake:                       # doctest: +SKIP
    ...     sync(open_archive("data/sample/ledger.jsonl.gz"), lake)
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from esworkbench.errors import SourceError
from esworkbench.events import RAW_SCHEMA
from esworkbench.sources import EventFilter, SourceBatch, concat_batches

__all__ = ["ArchiveSource", "JsonlSource", "ParquetSource", "TableSource", "open_archive"]

_TEXT_FIELDS = ("data", "metadata")
_JSONL_SCHEMA = pa.schema(
    [f for f in RAW_SCHEMA if f.name not in (*_TEXT_FIELDS, "created")]
    + [pa.field("created", pa.string())]
    + [pa.field(n, pa.string()) for n in _TEXT_FIELDS]
    + [pa.field(n + "_base64", pa.string()) for n in _TEXT_FIELDS]
)
# Arrow parses JSONL a block at a time; a block must hold whole lines, and EventStoreDB events
# can be up to 16 MiB, so blocks are that large (memory is one block plus one batch).
_BLOCK_SIZE = 32 << 20


class _BatchedSource:
    """Common part of the archive sources: key, description, filtering, batching."""

    kind = "archive"
    filter: EventFilter
    # True when the rows are known to be in commit-position order: then every batch can carry
    # a checkpoint (its last position) and an interrupted sync resumes mid-way.
    ordered = False
    # DuckDB's row group: a transaction that inserts a whole one writes it to the lake file
    # compressed, once, instead of logging the rows and compressing them at the next checkpoint
    # (bench/sync.py --archive: about 1.5x the events/s of 25,000-event batches).
    preferred_batch_size = 122_880

    def _identity(self) -> str:
        raise NotImplementedError

    def _label(self) -> str:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """The source's identity plus the filter."""
        spec = self.filter.describe()
        return f"{self._identity()}|{spec}" if spec else self._identity()

    def describe(self) -> str:
        """For `_sync_runs`."""
        spec = self.filter.describe()
        return f"{self.kind} {self._label()}" + (f" ({spec})" if spec else "")

    def _raw_batches(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def read_batches(self, after: int | None, *, batch_size: int) -> Iterator[SourceBatch]:
        """RAW batches of the archive's events with position > `after`.

        The last batch carries the checkpoint (the largest position in the file). Earlier batches
        carry none unless the rows are known to be in position order (`ordered`).

        Example:
            >>> for b in open_archive("ledger.jsonl.gz").read_batches(None, batch_size=1000):
            ...     print(b.events.num_rows, b.checkpoint)                 # doctest: +SKIP
        """
        highest = after
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for raw in self._raw_batches(batch_size):
            if raw.num_rows == 0:
                continue
            top = pc.max(raw.column("commit_position")).as_py()
            highest = top if highest is None else max(highest, top)
            if after is not None:
                raw = raw.filter(
                    pc.greater(raw.column("commit_position"), pa.scalar(after, pa.uint64()))
                )
            raw = self.filter.apply(raw)
            while raw.num_rows:
                take = raw.slice(0, batch_size - pending_rows)
                raw = raw.slice(take.num_rows)
                pending.append(take)
                pending_rows += take.num_rows
                if pending_rows >= batch_size:
                    out = concat_batches(pending)
                    checkpoint = out.column("commit_position")[-1].as_py() if self.ordered else None
                    yield SourceBatch(out, checkpoint)
                    pending, pending_rows = [], 0
        yield SourceBatch(concat_batches(pending), highest)


class ArchiveSource(_BatchedSource):
    """A file of events; see `open_archive`."""

    def __init__(self, path: str | os.PathLike[str], *, filter: EventFilter | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"no archive at {self.path}: check the path")
        self.filter = filter or EventFilter()

    def _identity(self) -> str:
        return f"file:{self.path.resolve()}"

    def _label(self) -> str:
        return str(self.path)


class TableSource(_BatchedSource):
    """Events already in memory as a RAW_SCHEMA Arrow table (a generated ledger, a test).

    Args:
        table: the events (RAW_SCHEMA columns).
        name: identifies the data in the lake's checkpoints: give different data different
            names.
        filter: which events.

    Example:
        >>> from esworkbench.examples.bank.sample import generate
        >>> TableSource(generate(users=3, seed=1, days=5).to_arrow(), name="sample").key
        'table:sample'
    """

    kind = "table"

    def __init__(self, table: pa.Table, *, name: str, filter: EventFilter | None = None) -> None:
        try:
            self.table = table.select(RAW_SCHEMA.names).cast(RAW_SCHEMA)
        except (KeyError, pa.ArrowInvalid, ValueError) as e:
            raise SourceError(f"table {name!r} is not in RAW_SCHEMA: {e}") from e
        self.name = name
        self.filter = filter or EventFilter()
        positions = self.table.column("commit_position")
        self.ordered = (
            self.table.num_rows < 2
            or pc.all(
                pc.greater(positions.slice(1), positions.slice(0, self.table.num_rows - 1))
            ).as_py()
        )

    def _identity(self) -> str:
        return f"table:{self.name}"

    def _label(self) -> str:
        return f"{self.name} ({self.table.num_rows:,} rows)"

    def _raw_batches(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        yield from self.table.to_batches(max_chunksize=batch_size)


class JsonlSource(ArchiveSource):
    """A JSONL(.gz) archive in the `archive_line` format.

    Example:
        >>> JsonlSource("data/sample/ledger.jsonl.gz").key              # doctest: +SKIP
        'file:/work/main/data/sample/ledger.jsonl.gz'
    """

    kind = "jsonl"

    def _raw_batches(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        compression = "gzip" if self.path.suffix == ".gz" else None
        try:
            stream = pa.input_stream(str(self.path), compression=compression)
            reader = pj.open_json(
                stream,
                read_options=pj.ReadOptions(block_size=_BLOCK_SIZE, use_threads=True),
                parse_options=pj.ParseOptions(
                    explicit_schema=_JSONL_SCHEMA, unexpected_field_behavior="ignore"
                ),
            )
            with stream:
                for block in reader:
                    yield _raw_from_jsonl(block, self.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(
                f"cannot read the JSONL archive {self.path}: {e}. Each line "
                "must be one event as written by events.archive_line or "
                "Lake.export_archive."
            ) from e


class ParquetSource(ArchiveSource):
    """A Parquet archive with the RAW_SCHEMA columns (as `Lake.export_archive` writes).

    Example:
        >>> ParquetSource("exports/ledger.parquet").describe()           # doctest: +SKIP
        'parquet exports/ledger.parquet'
    """

    kind = "parquet"

    def _raw_batches(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        try:
            file = pq.ParquetFile(str(self.path))
            missing = set(RAW_SCHEMA.names) - set(file.schema_arrow.names)
            if missing:
                raise SourceError(
                    f"the Parquet archive {self.path} lacks the columns "
                    f"{sorted(missing)}; it must hold the RAW_SCHEMA columns"
                )
            for batch in file.iter_batches(batch_size=batch_size, columns=RAW_SCHEMA.names):
                yield pa.RecordBatch.from_arrays(
                    [
                        batch.column(n).cast(f.type)
                        for n, f in zip(RAW_SCHEMA.names, RAW_SCHEMA, strict=True)
                    ],
                    schema=RAW_SCHEMA,
                )
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
            raise SourceError(f"cannot read the Parquet archive {self.path}: {e}") from e


def _payload_column(block: pa.RecordBatch, name: str, path: Path) -> pa.Array:
    text = block.column(name)
    data = pc.cast(text, pa.binary())
    missing = pc.is_null(data)
    if not pc.any(missing).as_py():
        return data
    # Binary payloads are base64 in the archive: few rows, decoded one by one.
    b64 = block.column(name + "_base64").filter(missing)
    if b64.null_count:
        raise SourceError(f"an event in {path} has neither {name!r} nor {name + '_base64'!r}")
    decoded = pa.array([base64.b64decode(s) for s in b64.to_pylist()], pa.binary())
    return pc.replace_with_mask(data, missing, decoded)


def _raw_from_jsonl(block: pa.RecordBatch, path: Path) -> pa.RecordBatch:
    columns: list[pa.Array] = []
    for field in RAW_SCHEMA:
        if field.name in _TEXT_FIELDS:
            columns.append(_payload_column(block, field.name, path))
        elif field.name == "created":
            columns.append(pc.cast(block.column("created"), field.type))
        else:
            col = block.column(field.name)
            if col.null_count:
                raise SourceError(f"an event in {path} has no {field.name!r}")
            columns.append(col)
    return pa.RecordBatch.from_arrays(columns, schema=RAW_SCHEMA)


def open_archive(
    path: str | os.PathLike[str], *, filter: EventFilter | None = None
) -> ArchiveSource:
    """A source for an archive, chosen by its name: `.parquet`, else JSONL (`.gz` = gzip).

    Example:
        >>> open_archive("data/sample/ledger.jsonl.gz").describe()      # doctest: +SKIP
        'jsonl data/sample/ledger.jsonl.gz'
    """
    p = Path(path)
    return (
        ParquetSource(p, filter=filter) if p.suffix == ".parquet" else JsonlSource(p, filter=filter)
    )
