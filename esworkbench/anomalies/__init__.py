"""Anomaly rules: every way history breaks its rules, each finding pinned to its event.

`check(lake, rules, aggregate=..., **filters)` runs rules over the lake and returns one
`Findings` frame in the shared vocabulary (`esworkbench.findings`). Rules are plain objects
with a name, a kind, a severity and a plain-language description, written as a query over the
lake (`SqlRule`), a Polars filter over the replay timeline (`TimelineRule`), or a function
(`FunctionRule`); `ReplayRule` brings the production aggregate's own findings in. Users name
their own rules by import path, like aggregates.

Inside: `_rules` (the rule kinds and the check context), `_generic` (rules for any event store),
`_check` (the runner and `Findings`: counts, first violation per stream, since an earlier run).

Example:
    >>> sorted(r.kind for r in GENERIC_RULES)[:3]
    ['dangling_reference', 'decode_error', 'duplicate_event']
"""

from esworkbench.anomalies._check import Findings, check
from esworkbench.anomalies._generic import (
    GENERIC_RULES,
    BusinessTimeBackwards,
    DanglingCausation,
    DuplicatePayload,
    MetadataMissingField,
    RevisionOrder,
    SchemaDrift,
    Undecodable,
    UnknownEventType,
)
from esworkbench.anomalies._rules import (
    CheckContext,
    FunctionRule,
    ReplayRule,
    Rule,
    RuleSpec,
    SqlRule,
    TimelineRule,
    resolve_rules,
)

__all__ = [
    "GENERIC_RULES",
    "BusinessTimeBackwards",
    "CheckContext",
    "DanglingCausation",
    "DuplicatePayload",
    "Findings",
    "FunctionRule",
    "MetadataMissingField",
    "ReplayRule",
    "RevisionOrder",
    "Rule",
    "RuleSpec",
    "SchemaDrift",
    "SqlRule",
    "TimelineRule",
    "Undecodable",
    "UnknownEventType",
    "check",
    "resolve_rules",
]
