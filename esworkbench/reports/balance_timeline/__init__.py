"""The balance-timeline report's sections, computed from a replay: frames in, frames out.

``balance_report`` reads the lake once (recording what it read), replays it through the
production aggregate, and derives every section of the ``balance_timeline`` notebook; the
building blocks are public for analysts who want one section in JupyterLab.

Time is business time (``occurred_at``). "The balance at time T" follows ``fold.state_as_of``:
a stream's state after its highest revision whose ``occurred_at`` is at or before T, so a
back-dated event counts from when it happened, and a late-stamped one does not undo the events
before it. Money stays Decimal throughout; only the charts turn it into floats.

Inside: `_report` (``balance_report`` and its ``BalanceReport``: reading, replaying, choosing
the period and the streams) and `_sections` (each section from a timeline, public one by one).
"""

from esworkbench.reports.balance_timeline._report import (
    BalanceReport,
    balance_report,
    scope_filters,
)
from esworkbench.reports.balance_timeline._sections import (
    balance_at,
    bank_totals,
    end_of_period,
    largest_swings,
    most_active,
    stream_summary,
    window,
    with_payload,
)

__all__ = [
    "BalanceReport",
    "balance_at",
    "balance_report",
    "bank_totals",
    "end_of_period",
    "largest_swings",
    "most_active",
    "scope_filters",
    "stream_summary",
    "window",
    "with_payload",
]
