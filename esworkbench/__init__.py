"""esworkbench: an analytics workbench for event-sourced systems on EventStoreDB (KurrentDB).

Pull events into a DuckDB event lake exactly once (``sync``, ``Lake``), read them as Polars,
pandas or Arrow (``Lake.read_events`` and friends), replay them through production aggregates
(``replay``, ``state_as_of``), hold history to rules (``check``), rebuild and compare read
models (``rebuild``, ``compare``, ``divergences``), and render parameterized notebooks into
offline HTML reports with manifests (``run_report``, ``verify_manifest``).

Example:
    >>> import esworkbench as ew
    >>> with ew.Lake("data/lake/demo.duckdb") as lake:                  # doctest: +SKIP
    ...     ew.sync(ew.open_source("esdb://127.0.0.1:2113?tls=false"), lake)
    ...     run = ew.replay(lake, "esworkbench.examples.bank:User")
"""

from esworkbench.aggregates import AggregateRoot, DomainEvent, EventStoreRepository, Repository
from esworkbench.anomalies import Findings, check
from esworkbench.config import Settings, mask_uri
from esworkbench.demo import DemoResult, run_demo
from esworkbench.errors import (
    ConcurrencyError,
    ConfigError,
    DomainRuleError,
    DomainRuleErrors,
    EsWorkbenchError,
    FoldError,
    HistoryError,
    LakeError,
    ReportError,
    SourceError,
)
from esworkbench.events import EventRegistry
from esworkbench.examples.bank.balances import bank_balances
from esworkbench.examples.bank.sample import Ledger, generate, write_archive
from esworkbench.examples.bank.seed import SeedResult, seed_esdb
from esworkbench.filters import EventFilter
from esworkbench.fold import Replay, replay, state_as_of
from esworkbench.lake import Lake, LakeSummary, SyncResult, sync
from esworkbench.projections import (
    Projection,
    RebuildResult,
    SqlProjection,
    compare,
    divergences,
    follow_lag,
    rebuild,
)
from esworkbench.reports import ReportResult, VerifyResult, run_report, verify_manifest
from esworkbench.sources import EventSource, open_source

__all__ = [
    "AggregateRoot",
    "ConcurrencyError",
    "ConfigError",
    "DemoResult",
    "DomainEvent",
    "DomainRuleError",
    "DomainRuleErrors",
    "EsWorkbenchError",
    "EventFilter",
    "EventRegistry",
    "EventSource",
    "EventStoreRepository",
    "Findings",
    "FoldError",
    "HistoryError",
    "Lake",
    "LakeError",
    "LakeSummary",
    "Ledger",
    "Projection",
    "RebuildResult",
    "Replay",
    "ReportError",
    "ReportResult",
    "Repository",
    "SeedResult",
    "Settings",
    "SourceError",
    "SqlProjection",
    "SyncResult",
    "VerifyResult",
    "bank_balances",
    "check",
    "compare",
    "divergences",
    "follow_lag",
    "generate",
    "mask_uri",
    "open_source",
    "rebuild",
    "replay",
    "run_demo",
    "run_report",
    "seed_esdb",
    "state_as_of",
    "sync",
    "verify_manifest",
    "write_archive",
]
