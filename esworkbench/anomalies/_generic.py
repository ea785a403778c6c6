"""Rules any event store's history can be held to, whatever the domain (set-based, in DuckDB).

Events the lake rejected at ingest (``_rejected``) still took their revision in their stream,
so the rules about revisions count them as present.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import polars as pl

from esworkbench.anomalies._rules import CheckContext, Rule, SqlRule

__all__ = [
    "GENERIC_RULES",
    "BusinessTimeBackwards",
    "DanglingCausation",
    "DuplicatePayload",
    "MetadataMissingField",
    "RevisionOrder",
    "SchemaDrift",
    "Undecodable",
    "UnknownEventType",
]

# Every event in the lake, kept or rejected, with its envelope (rejected rows have no JSON).
_ALL_EVENTS = """
    SELECT stream_name, stream_revision, commit_position, event_id::VARCHAR AS event_id
    FROM events
    UNION ALL
    SELECT stream_name, stream_revision, commit_position, event_id FROM _rejected
"""


class RevisionOrder(SqlRule):
    """A stream's revisions, in commit order, go 0, 1, 2...: no gaps, none out of order."""

    name = "revision_order"
    kind = "version_gap"
    description = (
        "In each stream, every event's revision is the previous one plus one, in commit order. "
        "A jump is a gap (events missing: deleted, truncated or never synced); a step back is "
        "an event out of order."
    )

    def sql(self) -> str:
        """Compare each revision with the one before it in the stream."""
        return f"""
        SELECT event_id,
               CASE WHEN stream_revision > expected THEN 'version_gap'
                    ELSE 'version_out_of_order' END AS kind,
               printf('revision %d follows revision %s in %s (expected %d)', stream_revision,
                      coalesce(previous::VARCHAR, 'none'), stream_name, expected) AS message,
               json_object('expected', expected, 'revision', stream_revision) AS evidence
        FROM (
            SELECT *, coalesce(previous + 1, 0) AS expected FROM (
                SELECT *, lag(stream_revision) OVER w AS previous
                FROM (SELECT DISTINCT ON (commit_position, stream_name) * FROM ({_ALL_EVENTS}))
                WINDOW w AS (PARTITION BY stream_name ORDER BY commit_position)
            )
        )
        WHERE stream_revision <> expected
        """


class DuplicatePayload(SqlRule):
    """The same payload written again in the same stream under a new event id."""

    name = "duplicate_payload"
    kind = "duplicate_event"
    description = (
        "An event whose type, payload and metadata bytes repeat an earlier event of the same "
        "stream, under another event id: a retried write without idempotency. The first is "
        "kept as the original; each repeat is a finding. Two events that only happen to carry "
        "the same payload (the same amount bringing an account to the same balance twice) "
        "differ in their metadata (business time, correlation) and are not repeats."
    )

    def sql(self) -> str:
        """Group by (stream, type, hash of payload and metadata); only repeats are joined back."""
        return """
        WITH copies AS (
            SELECT stream_name, event_type, md5_number(data || chr(31) || coalesce(metadata, ''))
                       AS h,
                   min(commit_position) AS first_at
            FROM events GROUP BY ALL HAVING count(*) > 1
        )
        SELECT e.event_id::VARCHAR AS event_id,
               printf('same %s payload as event %s (revision %d) of this stream', e.event_type,
                      o.event_id::VARCHAR, o.stream_revision) AS message,
               json_object('original_event_id', o.event_id::VARCHAR,
                           'original_revision', o.stream_revision) AS evidence
        FROM copies c
        JOIN events e ON e.stream_name = c.stream_name AND e.event_type = c.event_type
         AND md5_number(e.data || chr(31) || coalesce(e.metadata, '')) = c.h
         AND e.commit_position > c.first_at
        JOIN events o ON o.commit_position = c.first_at AND o.stream_name = c.stream_name
        """


class BusinessTimeBackwards(SqlRule):
    """Business time (occurred_at) going backwards within a stream."""

    name = "business_time_backwards"
    kind = "timestamp_out_of_order"
    description = (
        "An event whose business time (occurredAt) is earlier than the event before it in its "
        "stream: a writer's clock was off, or the event was back-dated."
    )

    def sql(self) -> str:
        """Compare each occurred_at with the previous one in the stream."""
        return """
        SELECT event_id::VARCHAR AS event_id,
               printf('occurred at %s, %s before the previous event of the stream (%s)',
                      occurred_at, previous - occurred_at, previous) AS message,
               json_object('occurred_at', occurred_at::VARCHAR,
                           'previous_occurred_at', previous::VARCHAR) AS evidence
        FROM (
            SELECT *, lag(occurred_at) OVER (PARTITION BY stream_name ORDER BY stream_revision)
                AS previous
            FROM events
        )
        WHERE occurred_at < previous
        """


class Undecodable(SqlRule):
    """Events the lake could not decode (kept in `_rejected` with the reason)."""

    name = "undecodable"
    kind = "decode_error"
    description = (
        "Events whose payload or metadata could not be decoded when synced (not JSON, binary, "
        "a bad id): the lake kept their bytes in _rejected with the reason."
    )

    def sql(self) -> str:
        """The rejected events, with the lake's reason."""
        return """
        SELECT event_id, 'the lake rejected it: ' || reason AS message,
               json_object('reason', reason, 'content_type', content_type) AS evidence
        FROM _rejected
        """


@dataclasses.dataclass(frozen=True)
class UnknownEventType(Rule):
    """Events of types the aggregate's registry does not know (needs aggregate=...)."""

    name: ClassVar[str] = "unknown_event_type"
    kind: ClassVar[str] = "unknown_event_type"
    description: ClassVar[str] = (
        "Events of a type no registered payload class decodes: a newer writer, a removed "
        "feature, or a typo in a type name. Without an aggregate there is no registry to ask, "
        "and the rule finds nothing."
    )

    def find(self, ctx: CheckContext) -> pl.DataFrame:
        """The events whose stored type the registry does not know."""
        if ctx.aggregate is None:
            return pl.DataFrame({"event_id": []}, schema={"event_id": pl.String})
        known = list(ctx.aggregate.registry.event_types)
        return (
            ctx.envelope.filter(~pl.col("event_type").is_in(known))
            .filter(~pl.col("event_type").str.starts_with("$"))
            .select(
                "event_id",
                pl.format("{} is not a registered event type", "event_type").alias("message"),
            )
        )


class SchemaDrift(SqlRule):
    """A payload or metadata field that appears, disappears or changes JSON type for good."""

    name = "schema_drift"
    kind = "schema_drift"
    description = (
        "Per event type, a payload or metadata field that appears, disappears or changes JSON "
        "type from some position on, and never goes back: a new writer version. The first event "
        "of each change is reported; a field that comes and goes (optional) is not a drift."
    )

    def sql(self) -> str:
        """Per (type, part, field): the span of each state, and the states that cut cleanly.

        A field's state in an event is its JSON type there (object, array, string, number,
        boolean, null) or absent. Events are grouped by shape first (`json_structure`: one
        parse per event, a handful of shapes per type), so the per-field work is on shapes. A
        state is a drift when every state seen before its first event ended before it.
        """
        return """
        WITH docs AS (
            SELECT event_type, 'payload' AS part, commit_position, event_id, data AS doc
            FROM events
            UNION ALL
            SELECT event_type, 'metadata', commit_position, event_id, metadata
            FROM events WHERE metadata IS NOT NULL
        ),
        shapes AS (
            SELECT event_type, part, json_structure(doc) AS shape,
                   min(commit_position) AS first_at, max(commit_position) AS last_at,
                   arg_min(event_id, commit_position)::VARCHAR AS first_id
            FROM docs GROUP BY ALL
        ),
        fields AS (
            SELECT DISTINCT event_type, part, unnest(json_keys(shape)) AS field
            FROM shapes WHERE json_type(shape) = 'OBJECT'
        ),
        typed AS (
            SELECT s.*, f.field,
                   json_extract(s.shape, '$."' || replace(f.field, '"', '\\"') || '"') AS t
            FROM shapes s JOIN fields f ON s.event_type = f.event_type AND s.part = f.part
        ),
        states AS (
            SELECT event_type, part, field, first_at, last_at, first_id,
                   CASE WHEN t IS NULL THEN 'absent'
                        WHEN json_type(t) = 'OBJECT' THEN 'object'
                        WHEN json_type(t) = 'ARRAY' THEN 'array'
                        WHEN t::VARCHAR = '"VARCHAR"' THEN 'string'
                        WHEN t::VARCHAR = '"BOOLEAN"' THEN 'boolean'
                        WHEN t::VARCHAR = '"NULL"' THEN 'null'
                        ELSE 'number' END AS state
            FROM typed
        ),
        spans AS (
            SELECT event_type, part, field, state, min(first_at) AS first_at,
                   max(last_at) AS last_at, arg_min(first_id, first_at) AS first_id
            FROM states GROUP BY ALL
        ),
        ordered AS (
            SELECT *,
                   max(last_at) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                       AS earlier_last,
                   lag(state) OVER w AS before
            FROM spans
            WINDOW w AS (PARTITION BY event_type, part, field ORDER BY first_at)
        )
        -- one finding per event, naming every field that changed there
        SELECT first_id AS event_id,
               string_agg(printf('%s field %s %s', part, field,
                                 CASE WHEN state = 'absent' THEN 'is gone'
                                      WHEN before = 'absent' THEN 'appears (' || state || ')'
                                      ELSE 'turns ' || state || ' (was ' || before || ')' END),
                          '; ' ORDER BY part DESC, field) || ' from this event on' AS message,
               to_json(list({'part': part, 'field': field, 'before': before, 'after': state}
                            ORDER BY part DESC, field))::VARCHAR AS evidence
        FROM ordered
        WHERE earlier_last IS NOT NULL AND earlier_last < first_at
        GROUP BY first_id
        """


@dataclasses.dataclass(frozen=True)
class MetadataMissingField(SqlRule):
    """Metadata that lacks a key the other events of its type carry around it."""

    min_share: float = 0.9
    name: ClassVar[str] = "metadata_missing_field"
    kind: ClassVar[str] = "metadata_missing_field"
    description: ClassVar[str] = (
        "An event whose metadata lacks a key that the events of its type carry (at least "
        "min_share of those written between the first and last event carrying it): a writer "
        "that dropped a correlation id or a schema version. A key that only appears from some "
        "position on is schema drift, not a missing field."
    )

    def sql(self) -> str:
        """For each (type, key), the events inside the key's span that lack it.

        Key sets are grouped first (a handful per type); events are only looked at for the
        (type, key) pairs where some key set without the key falls inside the key's span.
        """
        return f"""
        WITH meta AS MATERIALIZED (
            SELECT event_type, commit_position, event_id::VARCHAR AS event_id,
                   json_keys(metadata) AS keys
            FROM events WHERE json_type(metadata) = 'OBJECT'
        ),
        key_sets AS (
            SELECT event_type, keys, min(commit_position) AS first_at,
                   max(commit_position) AS last_at
            FROM meta GROUP BY ALL
        ),
        spans AS (
            SELECT event_type, key, min(first_at) AS first_at, max(last_at) AS last_at
            FROM (SELECT event_type, unnest(keys) AS key, first_at, last_at FROM key_sets)
            GROUP BY ALL
        ),
        candidates AS (
            SELECT DISTINCT s.event_type, s.key, s.first_at, s.last_at
            FROM spans s JOIN key_sets k ON k.event_type = s.event_type
             AND NOT list_contains(k.keys, s.key)
             AND k.last_at >= s.first_at AND k.first_at <= s.last_at
        ),
        inside AS (
            SELECT c.event_type, c.key, m.event_id, list_contains(m.keys, c.key) AS has,
                   count(*) OVER (PARTITION BY c.event_type, c.key) AS n,
                   count(*) FILTER (WHERE list_contains(m.keys, c.key))
                       OVER (PARTITION BY c.event_type, c.key) AS carried
            FROM candidates c JOIN meta m ON m.event_type = c.event_type
             AND m.commit_position BETWEEN c.first_at AND c.last_at
        )
        SELECT event_id,
               printf('metadata has no %s, which %d of %d %s events around it carry', key,
                      carried, n, event_type) AS message,
               json_object('missing', key, 'carried_by', carried, 'of', n) AS evidence
        FROM inside
        WHERE NOT has AND carried >= {self.min_share} * n
        """


class DanglingCausation(SqlRule):
    """A causation id that names no event in the lake (nor the chain's root command)."""

    name = "dangling_causation"
    kind = "dangling_reference"
    description = (
        "An event caused by another event ($causationId) that is not in the lake: lost, "
        "deleted, or never synced. A causation id that is a correlation id names the command "
        "that started a chain, which is not an event, and is not reported."
    )

    def sql(self) -> str:
        """Causation ids that match no event id."""
        return f"""
        SELECT e.event_id::VARCHAR AS event_id,
               printf('caused by %s, which is not an event in the lake', e.causation_id)
                   AS message,
               json_object('causation_id', e.causation_id, 'correlation_id', e.correlation_id)
                   AS evidence
        FROM events e
        WHERE e.causation_id IS NOT NULL
          AND e.causation_id IS DISTINCT FROM e.correlation_id
          AND e.causation_id NOT IN (
              SELECT correlation_id FROM events WHERE correlation_id IS NOT NULL)
          AND e.causation_id NOT IN (SELECT event_id FROM ({_ALL_EVENTS}))
        """


GENERIC_RULES: tuple[Rule, ...] = (
    RevisionOrder(),
    DuplicatePayload(),
    BusinessTimeBackwards(),
    Undecodable(),
    UnknownEventType(),
    SchemaDrift(),
    MetadataMissingField(),
    DanglingCausation(),
)
