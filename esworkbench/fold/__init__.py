"""Replay lake events through production aggregates: state timelines, states as of, findings.

Each stream is folded in revision order through a fresh instance of the aggregate class that
production uses, unchanged. See `esworkbench.fold._replay` for the columns of the timeline and
the findings, and `esworkbench.fold.batches` for the batching of whole streams (in this process
or in forked workers) that other stages reuse.

Inside: `_replay` (the public calls), `_frames` (the fold of a frame and its `Replay`, what
every engine runs), `_engine` (one batch of whole streams in, Arrow out),
`batches` (planning and running batches of whole streams), `_dask` (replay on a Dask cluster:
one task per hash partition of whole streams, results as Parquet; imported only when used).

Example:
    >>> from esworkbench.fold import resolve_aggregate
    >>> resolve_aggregate("esworkbench.examples.bank:User").stream_prefix
    'user'
"""

from esworkbench.fold._engine import INPUT_COLUMNS
from esworkbench.fold._frames import Replay
from esworkbench.fold._replay import (
    FINDINGS_COLUMNS,
    AggregateSpec,
    Engine,
    OnError,
    replay,
    replay_frame,
    resolve_aggregate,
    state_as_of,
    with_rejected,
)

__all__ = [
    "FINDINGS_COLUMNS",
    "INPUT_COLUMNS",
    "AggregateSpec",
    "Engine",
    "OnError",
    "Replay",
    "replay",
    "replay_frame",
    "resolve_aggregate",
    "state_as_of",
    "with_rejected",
]
