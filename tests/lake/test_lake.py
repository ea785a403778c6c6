"""The event lake: decoding at the boundary, rejected events, typed views, reads, exports."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from polars.testing import assert_frame_equal

from esworkbench.errors import ConfigError, LakeError
from esworkbench.events import ENVELOPE_SCHEMA, OCCURRED_AT_KEY, RAW_SCHEMA
from esworkbench.lake import EventFilter, Lake, sync
from esworkbench.lake._timings import PHASES
from esworkbench.sources.files import TableSource

AUDIT_COLUMNS = ("source_key", "run_id", "rejected_at")
ENVELOPE_FRAME: pl.DataFrame = pl.from_arrow(ENVELOPE_SCHEMA.empty_table())  # type: ignore[assignment]


def source(events: list[dict[str, Any]], name: str = "t") -> TableSource:
    return TableSource(pa.Table.from_pylist(events, schema=RAW_SCHEMA), name=name)


def snapshot(lake: Lake) -> dict[str, pl.DataFrame]:
    """Everything a sync decides, without the audit columns that name the run."""
    return {
        "events": lake.read_events(include_system=True),
        "rejected": lake.read_rejected().drop(AUDIT_COLUMNS),
        **{f"typed:{t}": lake.read_typed(t) for t in lake.typed_event_types()},
    }


def assert_same_lake(a: Lake, b: Lake) -> None:
    left, right = snapshot(a), snapshot(b)
    assert left.keys() == right.keys()
    for name in left:
        assert_frame_equal(left[name], right[name], check_exact=True), name


# -- a new lake -------------------------------------------------------------------------------


def test_a_new_lake_is_empty_but_readable(lake: Lake) -> None:
    events = lake.read_events()
    assert events.height == 0
    assert events.schema == ENVELOPE_FRAME.schema
    assert lake.read_arrow().schema == ENVELOPE_SCHEMA
    assert lake.head_position() is None
    assert lake.checkpoint("anything") is None
    assert lake.summary().events == 0
    assert lake.read_rejected().height == 0


def test_a_lake_held_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb; c = duckdb.connect(sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(LakeError, match=f"still locked by PID {holder.pid}"):
            Lake(path, lock_timeout=0.2, on_wait=lambda _: None)
    finally:
        holder.communicate("")


def test_read_only_lakes_refuse_to_sync_and_must_exist(tmp_path: Path, make_event: Any) -> None:
    with pytest.raises(LakeError, match="no lake at"):
        Lake(tmp_path / "missing.duckdb", read_only=True)
    with Lake(tmp_path / "l.duckdb"):
        pass
    with (
        Lake(tmp_path / "l.duckdb", read_only=True) as ro,
        pytest.raises(LakeError, match="read-only"),
    ):
        sync(source([make_event(1)]), ro)


# -- decoding at the boundary -----------------------------------------------------------------


def test_sync_derives_the_envelope(lake: Lake, make_event: Any) -> None:
    meta = {
        OCCURRED_AT_KEY: "2023-05-01T10:00:00.5Z",
        "$correlationId": "c-1",
        "$causationId": "m-9",
        "schemaVersion": 2,
    }
    result = sync(
        source(
            [
                make_event(10, stream="user-7", data={"a": 1}, metadata=meta),
                make_event(20, stream="ledger", data={"b": "é"}, revision=0),
            ]
        ),
        lake,
    )
    assert (result.events, result.rejected, result.duplicates, result.outcome) == (2, 0, 0, "ok")
    first, second = lake.read_events().to_dicts()
    assert first["category"] == "user" and second["category"] == "ledger"
    assert first["occurred_at"] == datetime(2023, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert second["occurred_at"] == second["created"]  # no business time: the write time
    assert (first["correlation_id"], first["causation_id"]) == ("c-1", "m-9")
    assert json.loads(first["metadata"]) == meta
    assert second["metadata"] is None  # empty metadata
    assert json.loads(second["data"]) == {"b": "é"}
    assert lake.checkpoint(source([]).key) == 20


@pytest.mark.parametrize(
    ("payload", "content_type", "metadata", "event_id", "code", "detail"),
    [
        (b'{"amount": "1', "application/json", b"", None, "malformed_json", "Unterminated string"),
        (
            b"\xff\x00\x01",
            "application/octet-stream",
            b"",
            None,
            "binary_payload",
            "3 bytes that are not UTF-8",
        ),
        (b"plain text", "application/octet-stream", b"", None, "binary_payload", "not valid JSON"),
        (b"", "application/json", b"", None, "malformed_json", "empty"),
        (b"\xc3\x28", "application/json", b"", None, "malformed_json", "not UTF-8"),
        (b"{}", "application/json", b"{nope", None, "malformed_metadata", "metadata"),
        (b"{}", "application/json", b"", "not-a-uuid", "invalid_event_id", "not-a-uuid"),
    ],
)
def test_undecodable_events_are_rejected_with_the_reason_and_kept(
    lake: Lake,
    make_event: Any,
    payload: bytes,
    content_type: str,
    metadata: bytes,
    event_id: str | None,
    code: str,
    detail: str,
) -> None:
    bad = make_event(
        20,
        revision=1,
        data=payload,
        content_type=content_type,
        metadata=metadata,
        event_id=event_id,
    )
    events = [make_event(10), bad, make_event(30, revision=2)]
    result = sync(source(events), lake)
    assert (result.events, result.rejected) == (2, 1)
    assert lake.read_events()["commit_position"].to_list() == [10, 30]
    rejected = lake.read_rejected().row(0, named=True)
    assert rejected["reason"].startswith(code + ":")
    assert detail in rejected["reason"]
    assert (rejected["data"], rejected["metadata"]) == (payload, metadata)  # the raw bytes
    assert rejected["commit_position"] == 20 and rejected["event_type"] == "Made"
    assert lake.checkpoint(source([]).key) == 30
    assert lake.summary().rejected == {code: 1}


def test_json_under_octet_stream_and_unknown_types_are_events(lake: Lake, make_event: Any) -> None:
    sync(
        source(
            [
                make_event(1, data=b'{"x": 1}', content_type="application/octet-stream"),
                make_event(2, event_type="NobodyRegisteredThis"),
            ]
        ),
        lake,
    )
    events = lake.read_events()
    assert events["content_type"].to_list() == ["application/octet-stream", "application/json"]
    assert events["event_type"].to_list() == ["Made", "NobodyRegisteredThis"]


def test_a_reused_event_id_at_another_position_is_rejected(lake: Lake, make_event: Any) -> None:
    same = "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    sync(source([make_event(1, event_id=same)], "a"), lake)
    result = sync(
        source(
            [
                make_event(5, event_id=same.upper(), stream="user-2"),
                make_event(7, event_id="7f9619ff-8b86-d011-b42d-00c04fc964ff"),
                make_event(9, event_id="7f9619ff-8b86-d011-b42d-00c04fc964ff", stream="user-3"),
            ],
            "b",
        ),
        lake,
    )
    assert (result.events, result.rejected) == (1, 2)
    reasons = lake.read_rejected()["reason"].to_list()
    assert reasons[0].startswith("duplicate_event_id:") and "position 1" in reasons[0]
    assert "position 7" in reasons[1]
    assert lake.read_events()["event_id"].to_list() == [
        same,
        "7f9619ff-8b86-d011-b42d-00c04fc964ff",
    ]


def test_a_reused_event_id_is_caught_across_batches_of_one_sync(
    lake: Lake, make_event: Any
) -> None:
    same = "8f9619ff-8b86-d011-b42d-00c04fc964ff"
    events = [
        make_event(1),
        make_event(2, event_id=same),
        make_event(3),
        make_event(4, stream="user-2", event_id=same),
    ]
    result = sync(source(events), lake, batch_size=1)
    assert (result.events, result.rejected) == (3, 1) and result.batches >= 4
    assert lake.read_rejected()["commit_position"].to_list() == [4]


def test_ids_are_checked_against_the_whole_lake_not_a_sync_s_memory(
    lake: Lake, make_event: Any
) -> None:
    # the first sync's ids are long committed (many batches, another source) when reused
    first = [make_event(p, stream=f"user-{p % 5}") for p in range(1, 60)]
    sync(source(first, "a"), lake, batch_size=7)
    reused = first[3]["event_id"]
    again = [
        first[10],  # the same event at its own position: harmless
        make_event(100, event_id=reused.upper(), stream="user-9"),  # an old id, a new place
        make_event(101),
    ]
    result = sync(source(again, "b"), lake, batch_size=1)
    assert (result.events, result.rejected, result.duplicates) == (1, 1, 1)
    (reason,) = lake.read_rejected()["reason"].to_list()
    assert reason.startswith("duplicate_event_id:") and "commit position 4" in reason
    assert sorted(result.timings) == sorted(PHASES)
    assert all(seconds >= 0 for seconds in result.timings.values())


def test_redelivery_is_harmless(lake: Lake, make_event: Any) -> None:
    events = [make_event(1), make_event(2, data=b"{bad"), make_event(3)]
    sync(source(events, "a"), lake)
    before = snapshot(lake)
    # another source with the same events, and a batch that repeats a row
    again = sync(source([*events, events[0]], "b"), lake)
    assert (again.events, again.rejected, again.duplicates) == (0, 0, 4)
    after = snapshot(lake)
    for name in before:
        assert_frame_equal(before[name], after[name])


def test_the_sample_ledger_lands_with_its_anomalies(lake: Lake, small_ledger: Any) -> None:
    result = sync(TableSource(small_ledger.to_arrow(), name="ledger"), lake, batch_size=97)
    assert result.events + result.rejected == len(small_ledger)
    rejected = {r["event_id"]: r["reason"] for r in lake.read_rejected().to_dicts()}
    for anomaly in small_ledger.truth:
        if anomaly.kind in ("malformed_json", "binary_payload"):
            assert rejected[anomaly.event_id].startswith(anomaly.kind + ":"), anomaly
        else:
            assert anomaly.event_id not in rejected, anomaly
    assert len(rejected) == sum(
        small_ledger.counts()[k] for k in ("malformed_json", "binary_payload")
    )
    unknown = [a.event_id for a in small_ledger.truth if a.kind == "unknown_event_type"]
    assert set(unknown) <= set(lake.read_events()["event_id"].to_list())


def test_sync_twice_is_sync_once(tmp_path: Path, small_ledger: Any) -> None:
    table = small_ledger.to_arrow()
    with Lake(tmp_path / "once.duckdb") as once, Lake(tmp_path / "twice.duckdb") as twice:
        sync(TableSource(table, name="l"), once, batch_size=100)
        sync(TableSource(table, name="l"), twice, batch_size=100)
        second = sync(TableSource(table, name="l"), twice, batch_size=33)
        assert (second.events, second.rejected) == (0, 0)
        assert_same_lake(once, twice)
        assert once.digest() == twice.digest()


# -- typed views ------------------------------------------------------------------------------


def test_typed_views_flatten_payloads_with_exact_money(lake: Lake, make_event: Any) -> None:
    sync(
        source(
            [
                make_event(
                    1,
                    event_type="Paid",
                    data={
                        "amount": "12.50",
                        "count": 3,
                        "ratio": 0.5,
                        "ok": True,
                        "tags": ["a"],
                        "at": "2024-02-01T10:00:00Z",
                        "day": "2024-02-01",
                        "who": {"name": "Ada", "zip": "0123"},
                    },
                ),
                make_event(
                    2,
                    event_type="Paid",
                    revision=1,
                    data={
                        "amount": "7",
                        "count": 4,
                        "ratio": 2,
                        "ok": False,
                        "tags": [],
                        "at": "2024-02-02T10:00:00+01:00",
                        "day": "2024-02-02",
                        "who": {"name": "Bo", "zip": "9"},
                    },
                ),
            ]
        ),
        lake,
    )
    assert lake.typed_schema("Paid") == {
        "amount": "DECIMAL(18,2)",
        "at": "TIMESTAMP WITH TIME ZONE",
        "count": "BIGINT",
        "day": "DATE",
        "ok": "BOOLEAN",
        "ratio": "DOUBLE",
        "tags": "JSON",
        "who.name": "VARCHAR",
        "who.zip": "VARCHAR",
    }
    paid = lake.read_typed("Paid")
    assert paid["amount"].to_list() == [Decimal("12.50"), Decimal("7.00")]
    assert paid["who.name"].to_list() == ["Ada", "Bo"]
    assert paid["at"].to_list()[1] == datetime(2024, 2, 2, 9, tzinfo=UTC)
    assert lake.read_typed("Paid", from_position=2).height == 1


def test_typed_views_follow_the_data(lake: Lake, make_event: Any) -> None:
    sync(source([make_event(1, event_type="T", data={"amount": "1.50"})], "a"), lake)
    assert lake.typed_schema("T") == {"amount": "DECIMAL(18,2)"}
    sync(
        source(
            [make_event(2, event_type="T", revision=1, data={"amount": "100.125", "note": "x"})],
            "b",
        ),
        lake,
    )
    assert lake.typed_schema("T") == {"amount": "DECIMAL(18,3)", "note": "VARCHAR"}
    sync(source([make_event(3, event_type="T", revision=2, data={"amount": "n/a"})], "c"), lake)
    assert lake.typed_schema("T")["amount"] == "VARCHAR"  # schema drift: text now
    with pytest.raises(LakeError, match="no typed view for event type 'Nope'"):
        lake.read_typed("Nope")


# -- reading ----------------------------------------------------------------------------------


@pytest.fixture
def ledger_lake(lake: Lake, small_ledger: Any) -> Lake:
    sync(TableSource(small_ledger.to_arrow(), name="ledger"), lake)
    return lake


def _filters(events: pl.DataFrame) -> list[tuple[dict[str, Any], pl.Expr]]:
    streams = events["stream_name"].unique().sort().to_list()[:3]
    positions = events["commit_position"].to_list()
    created = events["created"].sort().to_list()
    mid = created[len(created) // 2]
    name = pl.col("stream_name")
    return [
        ({"streams": streams}, name.is_in(streams)),
        ({"streams": streams[0]}, name == streams[0]),
        ({"stream_prefix": streams[0][:9]}, name.str.starts_with(streams[0][:9])),
        ({"stream_regex": "-[0-3]"}, name.str.contains("-[0-3]")),
        ({"category": "user"}, pl.col("category") == "user"),
        ({"category": "nothing"}, pl.lit(False)),
        (
            {"event_types": ["UserCreated", "UserClosed"]},
            pl.col("event_type").is_in(["UserCreated", "UserClosed"]),
        ),
        ({"from_position": positions[10]}, pl.col("commit_position") >= positions[10]),
        ({"to_position": positions[10]}, pl.col("commit_position") <= positions[10]),
        ({"since": mid}, pl.col("created") >= mid),
        ({"until": mid.isoformat()}, pl.col("created") < mid),
        (
            {"category": "user", "event_types": "BalanceDeposited", "from_position": positions[5]},
            (pl.col("category") == "user")
            & (pl.col("event_type") == "BalanceDeposited")
            & (pl.col("commit_position") >= positions[5]),
        ),
    ]


def test_every_read_filter(ledger_lake: Lake) -> None:
    everything = ledger_lake.read_events()
    for options, expr in _filters(everything):
        expected = everything.filter(expr)
        got = ledger_lake.read_events(**options)
        assert_frame_equal(got, expected), options
        assert_frame_equal(ledger_lake.scan_events(**options).collect(), expected), options
        assert ledger_lake.read_arrow(**options).num_rows == expected.height
        batches = list(ledger_lake.iter_batches(batch_size=50, **options))
        assert sum(b.num_rows for b in batches) == expected.height
        assert ledger_lake.digest(**options) == ledger_lake.digest(**options)


def test_system_events_are_left_out_unless_asked(lake: Lake, make_event: Any) -> None:
    sync(
        TableSource(
            pa.Table.from_pylist(
                [
                    make_event(1, stream="$$user-1", event_type="$metadata"),
                    make_event(2),
                    make_event(3, stream="$settings", event_type="PersistentConfig1"),
                ],
                schema=RAW_SCHEMA,
            ),
            name="s",
            filter=EventFilter.of(include_system=True),
        ),
        lake,
    )
    assert lake.read_events()["commit_position"].to_list() == [2]
    assert lake.read_events(include_system=True).height == 3


def test_frames_agree_across_polars_arrow_pandas_and_batches(ledger_lake: Lake) -> None:
    frame = ledger_lake.read_events()
    assert frame.schema == ENVELOPE_FRAME.schema
    arrow = ledger_lake.read_arrow()
    assert arrow.schema == ENVELOPE_SCHEMA
    assert_frame_equal(pl.from_arrow(arrow), frame)  # type: ignore[arg-type]
    streamed = pa.Table.from_batches(list(ledger_lake.iter_batches(batch_size=100)))
    assert streamed.schema == ENVELOPE_SCHEMA
    assert_frame_equal(pl.from_arrow(streamed), frame)  # type: ignore[arg-type]
    pandas = ledger_lake.read_pandas()
    assert pandas["event_id"].tolist() == frame["event_id"].to_list()
    assert str(pandas["commit_position"].dtype) == "uint64"


def test_bad_filters_name_the_option(lake: Lake) -> None:
    with pytest.raises(ConfigError, match="stream_regex"):
        lake.read_events(stream_regex="(")
    with pytest.raises(ConfigError, match="from_position"):
        lake.read_events(from_position=-1)
    with pytest.raises(ConfigError, match="since"):
        lake.read_events(since="yesterday")


def test_digest_pins_the_events_read(tmp_path: Path, small_ledger: Any, make_event: Any) -> None:
    table = small_ledger.to_arrow()
    with Lake(tmp_path / "a.duckdb") as a, Lake(tmp_path / "b.duckdb") as b:
        sync(TableSource(table, name="l"), a, batch_size=1000)
        # another batching, and the rows in reverse order: the same events
        sync(
            TableSource(table.take(list(range(table.num_rows - 1, -1, -1))), name="l"),
            b,
            batch_size=64,
        )
        assert a.digest().startswith("lake-v1:")
        assert a.digest() == b.digest()
        assert a.digest(category="user") == b.digest(category="user")
        assert a.digest(event_types="UserCreated") != a.digest()
        sync(source([make_event(10**9, stream="user-x")]), b)
        assert a.digest() != b.digest()
        assert a.digest(to_position=10**8) == b.digest(to_position=10**8)


def test_summary_reads_well(ledger_lake: Lake, small_ledger: Any) -> None:
    summary = ledger_lake.summary()
    assert summary.events + sum(summary.rejected.values()) == len(small_ledger)
    assert set(summary.rejected) == {"malformed_json", "binary_payload"}
    text = str(summary)
    assert "events per type:" in text and "UserCreated" in text and "malformed_json" in text


# -- exports ----------------------------------------------------------------------------------


def test_export_parquet_partitions_by_category_and_month(ledger_lake: Lake, tmp_path: Path) -> None:
    out = ledger_lake.export_parquet(tmp_path / "pq")
    months = sorted(p.name for p in (out / "category=user").iterdir())
    assert months == ["month=2024-01", "month=2024-02"] or months[0] == "month=2024-01"
    data = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert data.num_rows == ledger_lake.read_events().height
    with pytest.raises(LakeError, match="not empty"):
        ledger_lake.export_parquet(out)


def test_sync_runs_are_audited(ledger_lake: Lake) -> None:
    runs = ledger_lake.read_sync_runs()
    assert runs.height == 1
    run = runs.row(0, named=True)
    assert run["outcome"] == "ok" and run["finished"] >= run["started"]
    assert run["events"] + run["rejected"] == ledger_lake.summary().events + 4
    assert run["source_key"] == "table:ledger" and run["to_position"] is not None


def test_a_sync_left_running_by_a_dead_process_is_marked(tmp_path: Path, make_event: Any) -> None:
    path = tmp_path / "l.duckdb"
    with Lake(path) as lake:
        lake.writer(batch_size=1).begin_run("k", "killed sync", None)  # what a kill -9 leaves
    with Lake(path) as lake:
        run = lake.read_sync_runs().row(0, named=True)
        assert run["outcome"] == "interrupted" and "killed" in run["error"]


def test_a_file_that_is_not_a_lake_gets_no_lock_hint(tmp_path: Path) -> None:
    path = tmp_path / "not-a-lake.duckdb"
    path.write_bytes(b"not a DuckDB file " * 100)
    with pytest.raises(LakeError, match="not a valid DuckDB database") as caught:
        Lake(path)
    assert "Another process" not in str(caught.value)
