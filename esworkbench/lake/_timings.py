"""Where a sync's time goes: CPU seconds per phase, cheap enough to keep always on (private).

Each phase is timed on the thread that runs it (`time.thread_time`, one clock read at each end,
a few per batch): the reader thread's receiving and decoding, and the committing thread's
SQL. DuckDB runs a batch's statements on the calling thread when it has one thread, as a sync
sets it on a two-core machine; with more DuckDB threads their work is not counted here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

__all__ = ["PHASES", "Timings"]

# The phases, in pipeline order: receiving and decoding batches (the reader thread); checking
# and decoding them in SQL; inserting events, flags and rejects; typed-view inference; the
# transaction's bookkeeping rows and COMMIT (the write-ahead log); DuckDB checkpoints
# (compressing the rows into the lake file).
PHASES = ("read", "validate", "insert", "views", "commit", "checkpoint")


class Timings:
    """CPU seconds per phase.

    Example:
        >>> t = Timings()
        >>> with t.phase("views"):
        ...     pass
        >>> sorted(t.seconds)
        ['views']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the CPU time of the block to `name` (each thread adds to its own phases)."""
        started = time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.thread_time() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
