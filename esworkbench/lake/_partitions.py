"""Partitioned export for compute engines: whole streams per Parquet file, plus a manifest.

The lake writes its events (and the events it rejected at ingest) into ``N`` buckets by a stable
hash of the stream name, one Parquet file per non-empty bucket, each holding whole streams
sorted by (stream, revision): a worker that reads one file can fold every stream in it without
seeing any other file. A ``manifest.json`` beside the files lists, per partition, its file, its
event count, its first and last commit position and a digest of its rows.

The bucket of a stream is the first 64 bits of the MD5 of its UTF-8 name, modulo ``N``
(`bucket_of`): the same in DuckDB and in Python, on every machine and in every version, so a
stream stays in its bucket from one export to the next.

Export is incremental: the digests are computed first (one aggregate over the lake), and only
the partitions whose digest differs from the manifest's, or whose file is missing, are written
again. After a sync that appended to a few streams, a second export rewrites only their buckets.
Each file is written beside its name and then moved into place, and the manifest is written
last, so an interrupted export leaves every file either old or new, and the next export
rewrites whatever the manifest does not describe.

Targets are a local directory or any fsspec URL (``s3://bucket/lake``, ``memory://x``,
``gcs://...``); fsspec is needed only for URLs.

Columns: the lake's envelope (``ENVELOPE_SCHEMA``; ``data`` may be null) and ``rejected``: null
for kept events; for a rejected event the lake's reason, with ``data`` and ``metadata`` null and
``occurred_at`` from its metadata where that still reads (as ``Lake.read_rejected`` gives it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from esworkbench.errors import ConfigError, LakeError
from esworkbench.events import ENVELOPE_SCHEMA, OCCURRED_AT_KEY
from esworkbench.lake._schema import rows

__all__ = [
    "MANIFEST_NAME",
    "PARTITION_SCHEMA",
    "PartitionEntry",
    "PartitionManifest",
    "bucket_of",
    "export_partitions",
    "filesystem_for",
    "read_manifest",
    "read_partition",
    "write_parquet",
]

MANIFEST_NAME = "manifest.json"
_FORMAT = "esworkbench-partitions-v1"
_DIGEST_VERSION = "partition-v1"
REJECTED = "rejected"
PARTITION_SCHEMA = pa.schema(
    [
        pa.field("data", pa.string(), nullable=True) if f.name == "data" else f
        for f in ENVELOPE_SCHEMA
    ]
    + [pa.field(REJECTED, pa.string(), nullable=True)]
)
# Row groups of this many rows: a reader can skip through a large partition without holding it.
_ROW_GROUP = 128 * 1024

_BUCKET_SQL = "(('0x' || md5(stream_name)[1:16])::UBIGINT % {n})"
_ROWS_SQL = """
SELECT {columns}, NULL::VARCHAR AS rejected FROM events
UNION ALL
SELECT commit_position, prepare_position, stream_name, stream_revision, event_id, event_type,
       created, content_type, NULL::VARCHAR AS data, NULL::VARCHAR AS metadata,
       split_part(stream_name, '-', 1) AS category,
       -- business time as Lake.read_rejected derives it
       coalesce(try_cast(try(json_extract_string(try(decode(metadata)), '$.{occurred}'))
                AS TIMESTAMPTZ), created) AS occurred_at,
       NULL::VARCHAR AS correlation_id, NULL::VARCHAR AS causation_id, reason AS rejected
FROM _rejected
"""
# Per row: what the digest covers (for a rejected row its reason stands for its payload).
_ROW_DIGEST = (
    "md5_number(concat_ws(chr(31), commit_position, event_id, stream_name, stream_revision, "
    "event_type, coalesce(data, ''), coalesce(metadata, ''), coalesce(rejected, '')))"
)


def bucket_of(stream_name: str, buckets: int) -> int:
    """The bucket of a stream among `buckets`: the export's hash, computed in Python.

    Example:
        >>> bucket_of("user-1", 7)
        6
    """
    return int(hashlib.md5(stream_name.encode()).hexdigest()[:16], 16) % buckets


@dataclasses.dataclass(frozen=True)
class PartitionEntry:
    """One partition of an export: a bucket's file and what it holds.

    Attributes:
        bucket: the bucket number (0 .. buckets-1).
        path: the file's name, relative to the export's directory.
        events: rows in the file (kept and rejected events).
        rejected: of which, events the lake rejected at ingest.
        first_position: the smallest commit position in it.
        last_position: the largest commit position in it.
        digest: a digest of its rows (ids, positions, streams, types, payloads, metadata).
    """

    bucket: int
    path: str
    events: int
    rejected: int
    first_position: int
    last_position: int
    digest: str


@dataclasses.dataclass(frozen=True)
class PartitionManifest:
    """What a partitioned export holds (``manifest.json``), and what its last run rewrote.

    Attributes:
        url: the export's directory or fsspec URL.
        buckets: the number of hash buckets.
        events: rows over all partitions.
        head_position: the lake's largest commit position at export (None: empty lake).
        partitions: the non-empty partitions, by bucket.
        rewritten: the buckets the last export wrote (the others were unchanged).
        exported_at: when the last export finished (UTC, ISO 8601).
    """

    url: str
    buckets: int
    events: int
    head_position: int | None
    partitions: tuple[PartitionEntry, ...]
    rewritten: tuple[int, ...]
    exported_at: str

    def paths(self) -> list[str]:
        """The partition files' full paths or URLs, by bucket."""
        return [_join(self.url, p.path) for p in self.partitions]

    def to_json(self) -> str:
        """The manifest as JSON text (what ``manifest.json`` holds)."""
        body = dataclasses.asdict(self)
        body.pop("url")
        return json.dumps({"format": _FORMAT, **body}, indent=1)


def _join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def filesystem_for(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[pafs.FileSystem, str]:
    """The (pyarrow) filesystem and the path inside it for a local path or an fsspec URL.

    Example:
        >>> fs, path = filesystem_for("data/lake/demo.partitions")
        >>> type(fs).__name__
        'LocalFileSystem'
    """
    if "://" not in url or url.startswith("file://"):
        local = Path(url.removeprefix("file://")).absolute()
        return pafs.LocalFileSystem(), local.as_posix()
    try:
        import fsspec
    except ImportError as e:
        raise ConfigError(
            f"writing to {url!r} needs fsspec: pip install 'esworkbench[dask]' (or fsspec and "
            "the filesystem's own package, such as s3fs)"
        ) from e
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_manifest(
    url: str | Path, *, storage_options: dict[str, Any] | None = None
) -> PartitionManifest | None:
    """The manifest of the export at `url` (None when there is none yet).

    Example:
        >>> read_manifest("data/lake/demo.partitions").buckets  # doctest: +SKIP
        16
    """
    url = str(url)
    fs, root = filesystem_for(url, storage_options)
    name = _join(root, MANIFEST_NAME)
    if fs.get_file_info(name).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(name) as fh:
        try:
            body = json.loads(fh.read().decode())
        except ValueError as e:
            raise LakeError(f"{_join(url, MANIFEST_NAME)} is not JSON ({e}); export again") from e
    if body.get("format") != _FORMAT:
        raise LakeError(
            f"{_join(url, MANIFEST_NAME)} is not an esworkbench partition manifest "
            f"(format {body.get('format')!r}, expected {_FORMAT!r}); export into another place"
        )
    return PartitionManifest(
        url=url,
        buckets=int(body["buckets"]),
        events=int(body["events"]),
        head_position=body["head_position"],
        partitions=tuple(PartitionEntry(**p) for p in body["partitions"]),
        rewritten=tuple(body["rewritten"]),
        exported_at=str(body["exported_at"]),
    )


def read_partition(
    path: str,
    *,
    storage_options: dict[str, Any] | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """One partition file as an Arrow table (``PARTITION_SCHEMA``, sorted by stream, revision).

    Example:
        >>> manifest = read_manifest("data/lake/demo.partitions")  # doctest: +SKIP
        >>> read_partition(manifest.paths()[0]).num_rows           # doctest: +SKIP
    """
    fs, name = filesystem_for(path, storage_options)
    with fs.open_input_file(name) as fh:
        table = pq.read_table(fh, columns=None if columns is None else list(columns))
    return table


def export_partitions(
    con: duckdb.DuckDBPyConnection,
    url: str,
    *,
    buckets: int,
    storage_options: dict[str, Any] | None = None,
) -> PartitionManifest:
    """Write the lake's events as `buckets` hash partitions of whole streams (see module doc).

    Partitions whose digest matches the manifest already there are left as they are.
    """
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= 65_536:
        raise ConfigError(f"buckets={buckets!r}; give an integer from 1 to 65536")
    fs, root = filesystem_for(url, storage_options)
    fs.create_dir(root, recursive=True)
    previous = read_manifest(url, storage_options=storage_options)
    old = {p.bucket: p for p in previous.partitions} if previous is not None else {}
    # Another bucket count moves nearly every stream: nothing of the old layout is reusable.
    known = old if previous is not None and previous.buckets == buckets else {}

    bucket = _BUCKET_SQL.format(n=buckets)
    source = _ROWS_SQL.format(
        columns=", ".join(
            "event_id::VARCHAR AS event_id" if n == "event_id" else n for n in ENVELOPE_SCHEMA.names
        ),
        occurred=OCCURRED_AT_KEY,
    )
    # One snapshot for the digests and the rows they describe, even if a sync commits meanwhile.
    cursor = con.cursor()
    try:
        cursor.execute("SET TimeZone = 'UTC'")
        cursor.execute("BEGIN TRANSACTION")
        stats = rows(
            cursor,
            f"SELECT {bucket} AS bucket, count(*), count(rejected), min(commit_position), "
            f"max(commit_position), bit_xor({_ROW_DIGEST}) FROM ({source}) GROUP BY ALL "
            "ORDER BY bucket",
        )
        ((head,),) = rows(cursor, "SELECT max(commit_position) FROM events")
        entries = {
            int(b): PartitionEntry(
                bucket=int(b),
                path=f"part-{int(b):05d}.parquet",
                events=int(n),
                rejected=int(r),
                first_position=int(lo),
                last_position=int(hi),
                digest=_digest(int(n), int(lo), int(hi), int(acc or 0)),
            )
            for b, n, r, lo, hi, acc in stats
        }
        stale = [
            b
            for b, entry in entries.items()
            if known.get(b) != entry
            or fs.get_file_info(_join(root, entry.path)).type != pafs.FileType.File
        ]
        if stale:
            _write(cursor, fs, root, source, bucket, stale, entries)
        cursor.execute("COMMIT")
    finally:
        cursor.close()
    # Buckets that hold nothing now (only after a change of layout): their old files go.
    for b, gone in old.items():
        if b not in entries:
            _remove(fs, _join(root, gone.path))
    manifest = PartitionManifest(
        url=url,
        buckets=buckets,
        events=sum(e.events for e in entries.values()),
        head_position=None if head is None else int(head),
        partitions=tuple(entries[b] for b in sorted(entries)),
        rewritten=tuple(sorted(stale)),
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    _write_bytes(fs, _join(root, MANIFEST_NAME), manifest.to_json().encode())
    return manifest


def _digest(n: int, first: int, last: int, acc: int) -> str:
    text = f"{n}:{first}:{last}:{acc:032x}"
    return f"{_DIGEST_VERSION}:{hashlib.sha256(text.encode()).hexdigest()}"


def _write(
    cursor: duckdb.DuckDBPyConnection,
    fs: pafs.FileSystem,
    root: str,
    source: str,
    bucket: str,
    stale: Iterable[int],
    entries: dict[int, PartitionEntry],
) -> None:
    """Write the stale buckets' files, streaming one query sorted by (bucket, stream, revision)."""
    wanted = ", ".join(str(b) for b in sorted(stale))
    rel = cursor.sql(
        f"SELECT {bucket} AS _bucket, * FROM ({source}) WHERE {bucket} IN ({wanted}) "
        "ORDER BY _bucket, stream_name, stream_revision, commit_position, event_id"
    )
    assert rel is not None
    part: _PartWriter | None = None
    try:
        for batch in rel.to_arrow_reader(_ROW_GROUP):
            column = batch.column(0)
            # A batch can straddle buckets: split it where the bucket changes.
            for b in sorted(pc.unique(column).to_pylist()):
                if part is None or part.entry.bucket != b:
                    if part is not None:
                        part.finish()
                    part = _PartWriter(fs, root, entries[b])
                rows_of_b = batch.filter(pc.equal(column, pa.scalar(b, column.type)))
                part.write(rows_of_b.drop_columns(["_bucket"]))
        if part is not None:
            part.finish()
            part = None
    finally:
        if part is not None:
            part.abandon()


class _PartWriter:
    """One partition file, written beside its name and moved into place when complete."""

    def __init__(self, fs: pafs.FileSystem, root: str, entry: PartitionEntry) -> None:
        self.fs, self.entry = fs, entry
        self.final = _join(root, entry.path)
        self.sink = fs.open_output_stream(self.final + ".partial")
        self.writer = pq.ParquetWriter(self.sink, PARTITION_SCHEMA, compression="zstd")

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.schema != PARTITION_SCHEMA:
            batch = batch.cast(PARTITION_SCHEMA)
        self.writer.write_batch(batch, row_group_size=_ROW_GROUP)

    def finish(self) -> None:
        self.writer.close()
        self.sink.close()
        _remove(self.fs, self.final)
        self.fs.move(self.final + ".partial", self.final)

    def abandon(self) -> None:
        self.writer.close()
        self.sink.close()
        _remove(self.fs, self.final + ".partial")


def _remove(fs: pafs.FileSystem, path: str) -> None:
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path + ".partial") as fh:
        fh.write(data)
    _remove(fs, path)
    fs.move(path + ".partial", path)


def write_parquet(
    table: pa.Table, url: str, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Write `table` as one Parquet file at a local path or fsspec URL, complete or not at all.

    Written beside its name and then moved into place, so a writer killed half-way (a lost
    Dask worker) leaves no file that reads as complete, and its retry simply writes again.

    Example:
        >>> write_parquet(pa.table({"n": [1]}), "/tmp/esworkbench-example.parquet")
    """
    fs, path = filesystem_for(url, storage_options)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path + ".partial") as sink:
        pq.write_table(table, sink, compression="zstd")
    _remove(fs, path)
    fs.move(path + ".partial", path)
