"""The DuckDB event lake: one file holding every synced event, and the ways to read it.

Tables (see DESIGN.md): `events` (the envelope; unique event ids; read in commit-position
order), `_checkpoints` (source key -> last commit position looked at, and the last event read
at or before it, which a resuming sync checks the source still holds), `_sync_runs` (an audit
row per sync), `_rejected` (events that could not be decoded, or that readers would read
differently, with raw bytes and the reason), `_flags` (problems with events the lake kept; see
`Lake`), and per event type a view `typed."<type>"` with the JSON payload flattened into typed
columns.

Reading follows polars' verbs: `read_*` returns a DataFrame, `scan_*` a LazyFrame, `iter_*` a
stream of Arrow batches; every one takes the same filters (`EventFilter`). Writing goes through
`sync`, which drives a `LakeWriter` (a batch and its checkpoint per transaction, cut where a row
group fills).

Inside: `_lake` (the `Lake` reader), `_writer` (run bookkeeping, batch + checkpoint
transactions), `_sync` (the producer/consumer sync loop and its progress), `_schema` (tables,
version, SQL helpers), `_ingest` (decoding a raw batch into `events` / `_rejected` / `_flags`),
`_payloads` (exact checks of suspect payloads), `_views` (typed views), `_export` (filter SQL,
Parquet and archive export), `_partitions` (hash partitions of whole streams for compute
engines, incremental, with a manifest), `_open` (opening the file, waiting for locks),
`_readmodels` (projections' read models, rows + checkpoint per transaction), `_streams` (whole
streams in batches, sorted within a memory limit: what a fold reads).

Example:
    >>> from esworkbench.lake import Lake, sync
    >>> from esworkbench.sources.files import open_archive
    >>> with Lake("data/lake/demo.duckdb") as lake:                       # doctest: +SKIP
    ...     sync(open_archive("data/sample/ledger.jsonl.gz"), lake)
    ...     deposits = lake.read_typed("BalanceDeposited")
    ...     print(lake.summary())
"""

from esworkbench.filters import EventFilter
from esworkbench.lake._lake import Lake, LakeSummary, opened
from esworkbench.lake._open import DEFAULT_LOCK_TIMEOUT
from esworkbench.lake._partitions import (
    PARTITION_SCHEMA,
    PartitionEntry,
    PartitionManifest,
    bucket_of,
    filesystem_for,
    read_manifest,
    read_partition,
    write_parquet,
)
from esworkbench.lake._readmodels import ReadModelCheckpoint, ReadModelStore, read_model_schema
from esworkbench.lake._streams import FOLD_INPUT_SCHEMA, SORT_MEMORY_LIMIT, StreamBatches
from esworkbench.lake._sync import (
    DEFAULT_BATCH_SIZE,
    SyncInterrupted,
    SyncProgress,
    SyncResult,
    TqdmProgress,
    sync,
)
from esworkbench.lake._writer import LakeWriter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LOCK_TIMEOUT",
    "FOLD_INPUT_SCHEMA",
    "PARTITION_SCHEMA",
    "SORT_MEMORY_LIMIT",
    "EventFilter",
    "Lake",
    "LakeSummary",
    "LakeWriter",
    "PartitionEntry",
    "PartitionManifest",
    "ReadModelCheckpoint",
    "ReadModelStore",
    "StreamBatches",
    "SyncInterrupted",
    "SyncProgress",
    "SyncResult",
    "TqdmProgress",
    "bucket_of",
    "filesystem_for",
    "opened",
    "read_manifest",
    "read_model_schema",
    "read_partition",
    "sync",
    "write_parquet",
]
