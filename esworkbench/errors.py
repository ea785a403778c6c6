"""One error tree for the whole workbench.

Every error the workbench raises on purpose is an ``EsWorkbenchError``; library errors are
wrapped at the stage boundary with ``raise ... from e``. Messages name the bad value and the fix.

    EsWorkbenchError
    ├── ConfigError                 an invalid setting or argument (also a ValueError)
    ├── EventError                  decoding events at the boundary
    │   ├── DuplicateEventTypeError a stored type name registered twice
    │   ├── UnknownEventTypeError   a stored type name nobody registered
    │   └── PayloadDecodeError      a payload that is not what its type promises
    ├── AggregateError              the production aggregate contract
    │   ├── DomainRuleError         a business rule refused a command (subclassed per rule)
    │   ├── DomainRuleErrors        several rules one replayed event breaks (an ExceptionGroup)
    │   ├── HistoryError            replayed history that breaks the contract (foreign event, gap)
    │   ├── ConcurrencyError        another writer moved the stream first
    │   └── AggregateNotFoundError  no stream for that aggregate id (also a LookupError)
    ├── SourceError                 reading from EventStoreDB or an archive
    ├── LakeError                   the DuckDB event lake
    ├── FoldError                   replay through aggregates
    ├── ReportError                 running or verifying a report notebook
    └── DevServerError              the development server
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "AggregateError",
    "AggregateNotFoundError",
    "ConcurrencyError",
    "ConfigError",
    "DevServerError",
    "DomainRuleError",
    "DomainRuleErrors",
    "DuplicateEventTypeError",
    "EsWorkbenchError",
    "EventError",
    "FoldError",
    "HistoryError",
    "LakeError",
    "PayloadDecodeError",
    "ReportError",
    "SourceError",
    "UnknownEventTypeError",
]


class EsWorkbenchError(Exception):
    """Base of every error esworkbench raises on purpose."""


class ConfigError(EsWorkbenchError, ValueError):
    """An invalid setting: the message names the setting, the bad value and the valid choices."""


class EventError(EsWorkbenchError):
    """Events could not be decoded at the boundary."""


class DuplicateEventTypeError(EventError):
    """A stored event type name was registered twice."""

    def __init__(self, event_type: str, existing: object, new: object) -> None:
        self.event_type = event_type
        super().__init__(
            f"event type {event_type!r} is already registered to {existing!r}; "
            f"cannot register it again to {new!r}. Stored type names are the contract: "
            "give the new class its own type name or register it in a separate EventRegistry."
        )


class UnknownEventTypeError(EventError):
    """No class is registered for a stored event type name."""

    def __init__(self, event_type: str, known: list[str]) -> None:
        self.event_type = event_type
        super().__init__(
            f"no payload class is registered for event type {event_type!r} "
            f"(known: {', '.join(sorted(known)) or 'none'}); register one with "
            "EventRegistry.register, or treat the event as unknown."
        )


class PayloadDecodeError(EventError):
    """A payload could not be decoded into its registered shape."""

    def __init__(self, event_type: str, reason: str) -> None:
        self.event_type = event_type
        self.reason = reason
        super().__init__(f"cannot decode a {event_type!r} payload: {reason}")


class AggregateError(EsWorkbenchError):
    """The production aggregate contract was broken or refused a command."""


class DomainRuleError(AggregateError):
    """A business rule refused a command. Domains subclass this, one class per rule.

    Each subclass names the finding ``kind`` its breaches are counted under in replay findings
    (``overdraft``, ``ledger_drift``, ...; snake_case, stable: reports and scheduled checks
    count by it), and may return the values that make a breach checkable from ``evidence()``.

    Example:
        >>> class Overdraft(DomainRuleError):
        ...     kind = "overdraft"
        >>> Overdraft("user 1: balance -20.00 below the limit of 10.00").kind
        'overdraft'
    """

    kind: ClassVar[str] = "rule_violation"

    def evidence(self) -> dict[str, Any]:
        """The expected and actual values behind the breach (JSON-able), for findings."""
        return {}


class DomainRuleErrors(AggregateError, ExceptionGroup[DomainRuleError]):
    """Several business rules broken by one replayed event, raised together.

    The aggregate contract: ``apply`` must replay history older writers produced, so it applies
    the event, then checks it against *every* rule and raises one ``DomainRuleError`` if one
    rule is broken, or this group if several are (an overdraft that also breaks the ledger's
    balance chain). Replay turns each member into its own finding. Commands are unchanged: they
    raise the first rule they break, before recording anything.

    Example:
        >>> group = DomainRuleErrors.of([DomainRuleError("a"), DomainRuleError("b")])
        >>> [str(e) for e in group.exceptions]
        ['a', 'b']
    """

    @classmethod
    def of(cls, errors: Sequence[DomainRuleError]) -> DomainRuleError | DomainRuleErrors:
        """The one error itself, or a group of several (raise what this returns)."""
        if len(errors) == 1:
            return errors[0]
        return cls(f"{len(errors)} business rules broken: {'; '.join(map(str, errors))}", errors)


class HistoryError(AggregateError):
    """Replayed history breaks the contract: an event of another aggregate, or out of order."""

    def __init__(
        self,
        message: str,
        *,
        aggregate_id: str,
        expected_version: int,
        event_version: int | None = None,
    ) -> None:
        self.aggregate_id = aggregate_id
        self.expected_version = expected_version
        self.event_version = event_version
        super().__init__(message)


class ConcurrencyError(AggregateError):
    """Another writer appended to the stream since the aggregate was loaded."""

    def __init__(
        self, stream_name: str, expected_version: int | None, actual_version: int | None
    ) -> None:
        self.stream_name = stream_name
        self.expected_version = expected_version
        self.actual_version = actual_version
        expected = "no stream" if expected_version is None else f"version {expected_version}"
        actual = "no stream" if actual_version is None else f"version {actual_version}"
        super().__init__(
            f"stream {stream_name!r} was expected at {expected} but is at {actual}: "
            "another writer got there first. Reload the aggregate and retry the command."
        )


class AggregateNotFoundError(AggregateError, LookupError):
    """A repository was asked to load an aggregate whose stream does not exist."""

    def __init__(self, stream_name: str) -> None:
        self.stream_name = stream_name
        super().__init__(
            f"stream {stream_name!r} does not exist (or was deleted): check the aggregate id, "
            "or create the aggregate and save it first."
        )


class SourceError(EsWorkbenchError):
    """Events could not be read from their source (EventStoreDB or an archive)."""


class LakeError(EsWorkbenchError):
    """The DuckDB event lake is missing, locked or inconsistent."""


class FoldError(EsWorkbenchError):
    """Replay through aggregates could not run (not a finding: a finding is a row)."""


class ReportError(EsWorkbenchError):
    """A report notebook could not run, render or verify."""


class DevServerError(EsWorkbenchError):
    """The development server could not start or serve."""
