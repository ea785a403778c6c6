"""Rebuild a stream-keyed Python projection on a Dask cluster, one task per hash partition.

A ``partition="stream"`` projection keeps every key's events in one stream, and a hash
partition holds whole streams: each task can build the rows of its partition's keys alone. A
task reads its partition file, keeps the window's events of the projection's types, applies
them in commit-position order with ``_engine.apply_events`` (the loop a single-process rebuild
runs) and writes the rows and findings as Parquet; the driver commits all rows and the
checkpoint in one transaction into the read model's schema, so the read model is the one a
single-process rebuild makes, row for row.

The scheduling, the progress bar and the handling of lost workers are the fold's
(``esworkbench.fold._dask``). A Dask rebuild always starts from scratch: a retried task
replaces its partition's files, and a run that fails commits nothing.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from esworkbench.errors import ConfigError
from esworkbench.filters import EventFilter
from esworkbench.findings import FINDINGS_SCHEMA
from esworkbench.fold._dask import (
    DEFAULT_RETRIES,
    PartResult,
    dask_client,
    export_for_dask,
    reporter,
    run_tasks,
    workdir_of,
)
from esworkbench.lake import Lake, filesystem_for, read_partition, write_parquet
from esworkbench.projections import _engine as engine
from esworkbench.projections._definition import Projection, ProjectionSpec, Row
from esworkbench.projections._result import Estimate, RebuildResult, findings_frame, per_type

if TYPE_CHECKING:
    from distributed import Client


__all__ = ["rebuild_on_dask", "rebuild_partition"]

# Events applied between two progress reports of a task.
_SLICE = 50_000


def rebuild_on_dask(
    lake: Lake,
    spec: ProjectionSpec,
    first: int,
    last: int,
    *,
    scheduler: str | Client | None,
    partitions: int,
    workdir: str | Path | None,
    storage_options: dict[str, Any] | None,
    progress: bool,
    guess: Estimate | None,
    retries: int = DEFAULT_RETRIES,
) -> RebuildResult:
    """Rebuild `spec` over [first, last] on Dask (see the module docstring)."""
    cls = spec.cls
    if not issubclass(cls, Projection) or spec.partition != "stream":
        raise ConfigError(
            f"{spec.path} cannot be rebuilt on Dask: only Python projections keyed by stream "
            "(partition = 'stream') split into independent partitions; use engine='local'"
        )
    started = time.perf_counter()
    root = workdir_of(lake, workdir)
    manifest = export_for_dask(lake, root, partitions=partitions, storage_options=storage_options)
    out = f"{root.rstrip('/')}/rebuilds/{spec.schema_name}-{uuid.uuid4().hex[:12]}"
    with dask_client(scheduler) as client:
        results = run_tasks(
            client,
            rebuild_partition,
            manifest,
            name="rebuild",
            options={
                "out": out,
                "cls": cls,
                "first": first,
                "last": last,
                "storage_options": storage_options,
            },
            retries=retries,
            progress=progress,
            desc=f"rebuild {spec.schema_name} on dask",
        )
        workers = len(client.scheduler_info()["workers"])
    rows = _read_all([r.files["rows"] for r in results], cls.columns, storage_options)
    findings = _read_all([r.files["findings"] for r in results], FINDINGS_SCHEMA, storage_options)
    events = sum(r.events for r in results)
    store = lake.read_model(spec.name, spec.version)
    store.create(cls.columns, key=cls.key, first=first, last=last)
    # Rows and the checkpoint (the window's end) in one transaction: all or nothing.
    store.commit(rows, position=last, events=events)
    timings: dict[str, list[float]] = {}
    for result in results:
        for event_type, (n, seconds) in result.extra.items():
            slot = timings.setdefault(event_type, [0, 0.0])
            slot[0] += n
            slot[1] += seconds
    return RebuildResult(
        projection=spec.path,
        schema=spec.schema_name,
        kind="python",
        first_position=first,
        last_position=last,
        events=events,
        rows=rows.num_rows,
        rows_written=rows.num_rows,
        seconds=time.perf_counter() - started,
        per_type=per_type(timings),
        findings=findings_frame([findings]),
        resumed_from=None,
        chunks=1,
        workers=workers,
        estimate=guess,
    )


def rebuild_partition(
    path: str,
    bucket: int,
    topic: str | None,
    *,
    out: str,
    cls: type[Projection],
    first: int,
    last: int,
    storage_options: dict[str, Any] | None,
) -> PartResult:
    """The Dask task: one partition's rows and findings, written as Parquet; timings back."""
    table = read_partition(path, storage_options=storage_options)
    scope = EventFilter.of(
        event_types=list(cls.event_types()), from_position=first, to_position=last
    )
    mask = scope.mask(table)
    if mask is not None:
        table = table.filter(mask)
    # A rebuild reads the lake's kept events, in commit-position order.
    table = table.filter(table.column("rejected").is_null())
    table = table.select(list(engine.INPUT_COLUMNS)).sort_by("commit_position")
    projection = cls()
    state: dict[str, Row] = {}
    touched: dict[str, None] = {}
    timings: dict[str, list[float]] = {}
    findings: list[dict[str, Any]] = []
    report = reporter(topic, bucket)
    for start in range(0, table.num_rows, _SLICE):
        piece = table.slice(start, _SLICE)
        applied = engine.apply_events(projection, piece, state)
        touched.update(dict.fromkeys(applied.touched))
        findings += applied.findings
        for event_type, (n, seconds) in applied.timings.items():
            slot = timings.setdefault(event_type, [0, 0.0])
            slot[0] += n
            slot[1] += seconds
        report(piece.num_rows)
    files: dict[str, str | None] = {"rows": None, "findings": None}
    outputs = (
        ("rows", engine.rows_table(projection, state, list(touched))),
        ("findings", pa.Table.from_pylist(findings, schema=FINDINGS_SCHEMA)),
    )
    for name, result in outputs:
        if result.num_rows:
            url = f"{out}/{name}/part-{bucket:05d}.parquet"
            write_parquet(result, url, storage_options=storage_options)
            files[name] = url
    return PartResult(bucket, table.num_rows, files, timings)


def _read_all(
    files: list[str | None], schema: pa.Schema, storage_options: dict[str, Any] | None
) -> pa.Table:
    import pyarrow.parquet as pq

    tables = [schema.empty_table()]
    for file in files:
        if file is None:
            continue
        fs, path = filesystem_for(file, storage_options)
        with fs.open_input_file(path) as fh:
            tables.append(pq.read_table(fh).cast(schema))
    return pa.concat_tables(tables)
