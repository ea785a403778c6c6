"""Projection-rebuild experiments: read models rebuilt from the lake, compared, traced, timed.

A projection builds a read model (one row per key) from events: a Python class with a handler
per event type (`Projection`), or one query over the lake (`SqlProjection`), named by import
path like aggregates. This stage rebuilds read models from the lake into their own DuckDB
schema (``rm_<name>_v<version>``) in resumable chunks with progress, an ETA and timings
(`rebuild`, `estimate_rebuild`), compares two versions over one pinned window (`compare`), and
traces each difference to the first event where the versions diverge (`divergences`), and
measures a projection's lag live against EventStoreDB (`follow_lag`).

Inside: `_definition` (the two kinds, `handles`, `resolve_projection`), `_engine` (applying
events to rows; batches of whole streams for ``esworkbench.fold.batches``), `_rebuild`
(chunks, checkpoints, timings, the estimate), `_diff` (blue/green: two versions over one
window, diffed by key), `_bisect` (the first event after which two versions differ, per key),
`_lag` (a projection on a catch-up subscription, sampled against the server's head), `_dask`
(rebuilds of stream-keyed projections on a Dask cluster; imported only when used).

Example:
    >>> import esworkbench.projections as pj
    >>> pj.resolve_projection("esworkbench.examples.bank.projections:AccountTotals").kind
    'sql'
"""

from esworkbench.projections._bisect import DIVERGENCE_KIND, Divergences, divergences
from esworkbench.projections._definition import (
    Event,
    Partition,
    Projection,
    ProjectionSpec,
    Row,
    SqlProjection,
    handles,
    resolve_projection,
)
from esworkbench.projections._diff import Comparison, ReadModelDiff, compare, diff_read_models
from esworkbench.projections._lag import LagReport, follow_lag
from esworkbench.projections._rebuild import (
    DEFAULT_CHUNK_SIZE,
    Estimate,
    RebuildResult,
    estimate_rebuild,
    pin_window,
    rebuild,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DIVERGENCE_KIND",
    "Comparison",
    "Divergences",
    "Estimate",
    "Event",
    "LagReport",
    "Partition",
    "Projection",
    "ProjectionSpec",
    "ReadModelDiff",
    "RebuildResult",
    "Row",
    "SqlProjection",
    "compare",
    "diff_read_models",
    "divergences",
    "estimate_rebuild",
    "follow_lag",
    "handles",
    "pin_window",
    "rebuild",
    "resolve_projection",
]
