"""The lake's writer: one sync run's bookkeeping and its batch + checkpoint transactions.

`sync` drives a `LakeWriter`; the `Lake` only hands out one (`Lake.writer`) over its own
connection and the typed-view state it keeps between syncs. Keeping the write path in its own
object leaves `Lake` a reader and lets the sync loop talk to a small, explicit surface:
`begin_run`, `ingest`, `checkpoint`, `finish_run`; `timings` says where its time went.
"""

from __future__ import annotations

import contextlib
import os

import duckdb
import pyarrow as pa

from esworkbench.errors import LakeError
from esworkbench.events import RAW_SCHEMA
from esworkbench.lake import _ingest, _views
from esworkbench.lake._ingest import IngestCounts
from esworkbench.lake._schema import q, rows
from esworkbench.lake._timings import Timings
from esworkbench.sources import SourceBatch

__all__ = ["LakeWriter", "read_anchor", "read_checkpoint"]

# DuckDB's row group size: a checkpoint per this many new rows writes each group about once.
_ROW_GROUP_SIZE = 122_880
_SYNC_CHECKPOINT_THRESHOLD = "1GB"
# Set for the commit of a batch that completes a row group, so that the commit checkpoints.
_COMMIT_CHECKPOINT_THRESHOLD = "1KB"
# DuckDB's memory during a sync: enough for a row group awaiting its checkpoint and a batch
# being decoded, whatever the size of the lake.
_SYNC_MEMORY_FLOOR = 256 * 2**20
_SYNC_MEMORY_PER_EVENT = 8 * 2**10
# Decoding copies a batch's payloads several times over (bytes, text, shapes, the insert): a
# batch holding a few very large events needs this many times its size, whatever its count
# (measured: an 18 MiB event needs more than 16x).
_SYNC_MEMORY_PER_BATCH_BYTE = 32


def read_checkpoint(con: duckdb.DuckDBPyConnection, source_key: str) -> int | None:
    """The commit position a source has been synced through, or None if never synced."""
    found = rows(con, "SELECT position FROM _checkpoints WHERE source_key = ?", [source_key])
    return int(found[0][0]) if found else None


def read_anchor(con: duckdb.DuckDBPyConnection, source_key: str) -> tuple[int, str] | None:
    """The last event a source's checkpoint follows: (commit position, event id), or None.

    None when the source was never synced, no batch has read an event yet, or the lake predates
    schema version 2 (its next batch records one).
    """
    found = rows(
        con,
        "SELECT anchor_position, anchor_event_id FROM _checkpoints WHERE source_key = ? "
        "AND anchor_event_id IS NOT NULL",
        [source_key],
    )
    return (int(found[0][0]), str(found[0][1])) if found else None


class LakeWriter:
    """Writes one sync's batches into a lake, each with its checkpoint in one transaction.

    A batch that crosses a row group commits in parts, the checkpoint with the last (`ingest`).

    Made by `Lake.writer`, used as a context manager for the storage settings of a bulk sync
    (see `__enter__`).

    Example:
        >>> with lake.writer(batch_size=25_000) as writer:               # doctest: +SKIP
        ...     run_id = writer.begin_run(source.key, source.describe(), None)
        ...     writer.ingest(batch, source_key=source.key, run_id=run_id)
        ...     writer.finish_run(run_id, "ok", None)
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, fields: _views.FieldState, *, batch_size: int
    ) -> None:
        self._con = con
        self._fields = fields
        self._batch_size = batch_size
        self._unflushed = 0
        self.timings = Timings()
        self._sync_memory = "256MB"
        self._saved: tuple[str, str, str] | None = None

    # -- storage settings ---------------------------------------------------------------

    def __enter__(self) -> LakeWriter:
        """Storage settings for a sync.

        DuckDB checkpoints (compresses the WAL's rows into the file) every 16 MiB of WAL by
        default, which during a bulk sync rewrites the same partly filled row group again and
        again (a third of the sync's CPU); instead the sync checkpoints once per row group's
        worth of rows (`ingest`), keeping DuckDB's own trigger as a safety net. And DuckDB
        keeps every block it has read cached up to 80% of RAM: during a sync its memory is
        capped to what the batches need, so memory follows the batch size, not the lake.
        Last, the reading thread (gRPC and decoding, in Python) needs a core of its own, so
        DuckDB gets the others: per-batch queries are small, and on a small machine a second
        DuckDB thread only contends with the reader.
        """
        ((threshold, limit, threads),) = rows(
            self._con,
            "SELECT current_setting('checkpoint_threshold'), current_setting('memory_limit'), "
            "current_setting('threads')",
        )
        self._saved = (str(threshold), str(limit), str(threads))
        cap = max(_SYNC_MEMORY_FLOOR, self._batch_size * _SYNC_MEMORY_PER_EVENT)
        self._sync_memory = f"{cap // 2**20}MB"
        q(self._con, f"SET checkpoint_threshold = '{_SYNC_CHECKPOINT_THRESHOLD}'")
        q(self._con, f"SET memory_limit = '{self._sync_memory}'")
        q(self._con, f"SET threads = {max(1, (os.cpu_count() or 2) - 1)}")
        self._unflushed = 0
        return self

    def __exit__(self, *exc: object) -> None:
        # The last rows are checkpointed under the sync's memory cap; otherwise the next
        # commit would do it with the cap lifted, and DuckDB then caches all it touches.
        if self._unflushed:
            self._flush()
        if self._saved is not None:
            threshold, limit, threads = self._saved
            q(self._con, f"SET checkpoint_threshold = '{threshold}'")
            q(self._con, f"SET memory_limit = '{limit}'")
            q(self._con, f"SET threads = {threads}")
            self._saved = None

    # -- run bookkeeping ----------------------------------------------------------------

    def begin_run(self, source_key: str, source: str, from_position: int | None) -> int:
        """Record a running sync in `_sync_runs`; returns its run id."""
        ((run_id,),) = rows(
            self._con,
            "INSERT INTO _sync_runs (run_id, source_key, source, started, from_position, "
            "to_position, outcome) VALUES (nextval('_sync_run_ids'), ?, ?, now(), ?, ?, "
            "'running') RETURNING run_id",
            [source_key, source, from_position, from_position],
        )
        return int(run_id)

    def finish_run(self, run_id: int, outcome: str, error: str | None) -> None:
        """Record how a sync ended."""
        q(
            self._con,
            "UPDATE _sync_runs SET finished = now(), outcome = ?, error = ? WHERE run_id = ?",
            [outcome, error, run_id],
        )

    def checkpoint(self, source_key: str) -> int | None:
        """The commit position a source has been synced through (see `read_checkpoint`)."""
        return read_checkpoint(self._con, source_key)

    def anchor(self, source_key: str) -> tuple[int, str] | None:
        """The last event the source's checkpoint follows (see `read_anchor`)."""
        return read_anchor(self._con, source_key)

    # -- batches ------------------------------------------------------------------------

    def ingest(self, batch: SourceBatch, *, source_key: str, run_id: int) -> IngestCounts:
        """Commit one batch and its checkpoint; in two or more transactions if it is cut.

        A batch that would carry the rows since the last checkpoint past a row group is cut
        there, so that every checkpoint writes whole row groups. DuckDB starts a new row group
        after a checkpoint rather than fill the last one, and leaves the checkpoint's vacuum to
        merge a part-filled group with its successors: each checkpoint then rewrote the rows
        carried over from the one before (a third more than it wrote), and once the vacuum's
        merges slipped out of step with the row groups, five groups at every checkpoint. A cut
        part commits without the checkpoint: a sync that stops there re-reads it, and the
        lake skips what it already holds.
        """
        events = batch.events
        if events.schema != RAW_SCHEMA:
            try:
                events = events.cast(RAW_SCHEMA)
            except (pa.ArrowInvalid, ValueError) as e:
                raise LakeError(
                    f"source {source_key!r} sent a batch that is not RAW_SCHEMA ({e})"
                ) from e
        counts = IngestCounts()
        start = 0
        while True:
            size = min(events.num_rows - start, _ROW_GROUP_SIZE - self._unflushed)
            last = start + size == events.num_rows
            part = self._commit(
                events.slice(start, size),
                batch.checkpoint if last else None,
                source_key=source_key,
                run_id=run_id,
                completes_batch=last,
            )
            counts.events += part.events
            counts.rejected += part.rejected
            counts.duplicates += part.duplicates
            if last:
                return counts
            start += size

    def _commit(
        self,
        events: pa.RecordBatch,
        checkpoint: int | None,
        *,
        source_key: str,
        run_id: int,
        completes_batch: bool,
    ) -> IngestCounts:
        """One transaction: these events, and the checkpoint if given."""
        needed = events.nbytes * _SYNC_MEMORY_PER_BATCH_BYTE
        raised = self._saved is not None and needed > _megabytes(self._sync_memory) * 2**20
        if raised:  # events as large as the server accepts must fit, or no sync gets past them
            q(self._con, f"SET memory_limit = '{needed // 2**20 + 1}MB'")
        # A transaction that completes a row group is checkpointed by its own COMMIT: DuckDB
        # then writes its rows compressed into the file and skips logging them to the WAL
        # first (a large commit that triggers a checkpoint skips the WAL), which saves writing
        # them twice. `_flush` still runs, and finds little or nothing left to do.
        at_commit = self._saved is not None and (
            self._unflushed + events.num_rows >= _ROW_GROUP_SIZE
        )
        if at_commit:
            q(self._con, f"SET checkpoint_threshold = '{_COMMIT_CHECKPOINT_THRESHOLD}'")
        try:
            counts = _ingest.ingest_batch(
                self._con,
                events,
                source_key=source_key,
                run_id=run_id,
                checkpoint=checkpoint,
                fields=self._fields,
                timings=self.timings,
                completes_batch=completes_batch,
            )
        finally:
            if raised:
                q(self._con, f"SET memory_limit = '{self._sync_memory}'")
            if at_commit:
                q(self._con, f"SET checkpoint_threshold = '{_SYNC_CHECKPOINT_THRESHOLD}'")
        # Rows received, not rows kept, so the cuts fall on the same rows whatever the lake
        # rejects; a group is short by the few rejected or re-delivered, never over.
        self._unflushed += events.num_rows
        if self._unflushed >= _ROW_GROUP_SIZE:
            self._flush()
        return counts

    def _flush(self) -> None:
        """Checkpoint the rows synced so far, then drop DuckDB's cached blocks.

        The blocks just written stay cached until memory runs short, and dropping them now keeps the
        sync's memory flat however large the lake grows.
        """
        self._unflushed = 0
        with (
            self.timings.phase("checkpoint"),
            contextlib.suppress(duckdb.Error),  # busy: DuckDB's own trigger will do it
        ):
            q(self._con, "CHECKPOINT")
            q(self._con, "SET memory_limit = '32MB'")
            q(self._con, f"SET memory_limit = '{self._sync_memory}'")


def _megabytes(setting: str) -> int:
    return int(setting.removesuffix("MB"))
