"""The balance-timeline sections: given a state timeline, these frames come out, exactly."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from esworkbench.errors import ConfigError
from esworkbench.reports import balance_timeline as tl
from esworkbench.reports.balance_timeline._report import _totals

T0 = datetime(2024, 5, 1, tzinfo=UTC)
MONEY = pl.Decimal(38, 2)


def frame(rows: list[tuple[str, int, float, str]]) -> pl.DataFrame:
    """A timeline from (stream, revision, hours after T0, balance) rows."""
    return pl.DataFrame(
        {
            "stream_name": [r[0] for r in rows],
            "stream_revision": [r[1] for r in rows],
            "commit_position": list(range(1, len(rows) + 1)),
            "occurred_at": [T0 + timedelta(hours=r[2]) for r in rows],
            "event_type": ["BalanceDeposited"] * len(rows),
            "event_id": [f"{r[0]}/{r[1]}" for r in rows],
            "balance": [Decimal(r[3]) for r in rows],
        },
        schema_overrides={
            "stream_revision": pl.UInt64,
            "commit_position": pl.UInt64,
            "occurred_at": pl.Datetime("us", "UTC"),
            "balance": MONEY,
        },
    )


LEDGER = frame(
    [
        ("a", 0, 0, "0.00"),
        ("a", 1, 5, "10.00"),
        ("a", 2, 30, "4.50"),
        ("b", 0, 2, "0.00"),
        ("b", 1, 26, "-20.00"),
        ("b", 2, 50, "100.10"),
    ]
)


def test_balance_at_counts_events_from_when_they_happened() -> None:
    # b's revision 1 is back-dated before revision 0; a's revision 2 happened later than 3.
    shuffled = frame(
        [
            ("a", 0, 0, "1.00"),
            ("a", 1, 10, "2.00"),
            ("a", 2, 20, "3.00"),
            ("b", 0, 5, "5.00"),
            ("b", 1, 1, "7.00"),
        ]
    )
    at = tl.balance_at(shuffled, T0 + timedelta(hours=12))
    # a: revisions 0 and 1 had happened; b: revision 1 (stamped earlier) and 0 both had.
    assert at.rows() == [("a", Decimal("2.00")), ("b", Decimal("7.00"))]
    early = tl.balance_at(shuffled, T0 + timedelta(hours=2))
    # At 02:00 only b's revision 1 had happened; its state includes revision 0 (replay order).
    assert early.rows() == [("a", Decimal("1.00")), ("b", Decimal("7.00"))]


def test_end_of_period_balances_carry_forward() -> None:
    periods = tl.end_of_period(LEDGER, every="1d")
    assert periods.filter(pl.col("stream_name") == "a").select("balance", "events").rows() == [
        (Decimal("10.00"), 2),
        (Decimal("4.50"), 1),
        (Decimal("4.50"), 0),
    ]
    assert periods.filter(pl.col("stream_name") == "b")["balance"].to_list() == [
        Decimal("0.00"),
        Decimal("-20.00"),
        Decimal("100.10"),
    ]


def test_bank_totals_equal_the_sum_of_end_of_period_balances() -> None:
    for every, since, until in (
        ("1d", None, None),
        ("6h", T0 + timedelta(hours=3), T0 + timedelta(hours=40)),
    ):
        totals = tl.bank_totals(LEDGER, every=every, since=since, until=until)
        by_period = (
            tl.end_of_period(LEDGER, every=every, since=since, until=until)
            .group_by("period_end")
            .agg(pl.col("balance").sum().alias("total"))
        )
        joined = totals.join(by_period, on="period_end", how="left", suffix="_sum")
        assert joined.height == totals.height > 0
        assert (joined["total"] == joined["total_sum"].fill_null(Decimal("0"))).all()
        assert totals.schema["total"] == MONEY


def test_a_window_gets_opening_and_closing_rows() -> None:
    since, until = T0 + timedelta(hours=4), T0 + timedelta(hours=29)
    windowed = tl.window(LEDGER, since=since, until=until)
    edges = windowed.filter(pl.col("event_type").str.starts_with("("))
    assert edges.select("stream_name", "occurred_at", "event_type", "balance").rows() == [
        ("a", since, "(balance at start)", Decimal("0.00")),
        ("a", until, "(balance at end)", Decimal("10.00")),
        ("b", since, "(balance at start)", Decimal("0.00")),
        ("b", until, "(balance at end)", Decimal("-20.00")),
    ]
    assert windowed.filter(~pl.col("event_type").str.starts_with("(")).height == 2


def test_stream_summary_opening_closing_change_low_high() -> None:
    summary = tl.stream_summary(
        LEDGER, since=T0 + timedelta(hours=4), until=T0 + timedelta(hours=40)
    )
    expected = pl.DataFrame(
        {
            "stream_name": ["a", "b"],
            "opening": ["0.00", "0.00"],
            "closing": ["4.50", "-20.00"],
            "change": ["4.50", "-20.00"],
            "low": ["0.00", "-20.00"],
            "high": ["10.00", "0.00"],
            "events": [2, 1],
        },
        schema_overrides={"events": pl.UInt32},
    ).with_columns(pl.exclude("stream_name", "events").cast(MONEY))
    assert_frame_equal(summary, expected)


def test_largest_swings_either_way() -> None:
    swings = tl.largest_swings(LEDGER, n=2)
    assert swings.select("stream_name", "stream_revision", "change").rows() == [
        ("b", 2, Decimal("120.10")),
        ("b", 1, Decimal("-20.00")),
    ]


def test_most_active_and_scope() -> None:
    assert tl.most_active(LEDGER, 1) == ["a"]  # tie on events: by name
    assert tl.most_active(LEDGER, 1, since=T0 + timedelta(hours=20)) == ["b"]
    assert tl.most_active(LEDGER, None) == ["a", "b"]
    assert tl.scope_filters("user", user_ids=["7", 8]) == {"streams": ["user-7", "user-8"]}
    assert tl.scope_filters("user", stream_prefix="user-1") == {"stream_prefix": "user-1"}
    assert tl.scope_filters("user") == {"category": "user"}


def test_payload_amounts_join_as_exact_decimals() -> None:
    events = pl.DataFrame(
        {
            "event_id": ["a/1", "a/2"],
            "data": [
                json.dumps({"amount": "10.00", "newBalance": "10.00"}),
                json.dumps({"amount": "5.50", "newBalance": "4.51"}),
            ],
        }
    )
    joined = tl.with_payload(LEDGER, events)
    assert joined.filter(pl.col("stream_name") == "a").select("amount", "new_balance").rows() == [
        (None, None),
        (Decimal("10.00"), Decimal("10.00")),
        (Decimal("5.50"), Decimal("4.51")),
    ]
    assert joined.height == LEDGER.height


def test_bad_periods_and_windows_say_the_fix() -> None:
    with pytest.raises(ConfigError, match="coarser period"):
        tl.end_of_period(LEDGER, every="1m", since=T0, until=T0 + timedelta(days=30))
    with pytest.raises(ConfigError, match="ISO 8601"):
        tl.balance_report("unused.duckdb", since="last tuesday")
    with pytest.raises(ConfigError, match="not a Polars duration"):
        tl.balance_report("unused.duckdb", every="fortnightly")


def test_the_sample_reports_each_kind_it_holds_and_both_totals(tmp_path: Path) -> None:
    from esworkbench.events import archive_line
    from esworkbench.examples.bank.sample import REPLAY_ERRORS, generate
    from esworkbench.lake import Lake, sync
    from esworkbench.sources.files import open_archive

    ledger = generate(users=30, seed=5, days=40)
    archive = tmp_path / "ledger.jsonl"
    archive.write_text("\n".join(archive_line(e) for e in ledger.events) + "\n")
    lake = tmp_path / "lake.duckdb"
    with Lake(lake) as opened:
        sync(open_archive(archive), opened)

    report = tl.balance_report(lake, top_n=3, every="1w")

    # One row per kind replay can see in this ledger, named by the kind of each rule; events the
    # lake rejected are the undecodable events they are, not holes in their streams.
    kinds = set(report.findings_by_kind["kind"])
    named = {
        "ledger_drift": "ledger_drift",
        "duplicate_event": "ledger_drift",
        "overdraft": "overdraft",
        "activity_after_close": "activity_after_close",
        "unknown_event_type": "unknown_event_type",
        "malformed_json": "decode_error",
        "binary_payload": "decode_error",
    }
    assert kinds == {named[a.kind] for a in ledger.truth if REPLAY_ERRORS[a.kind] is not None}
    assert "version_gap" not in kinds
    # Both totals: what the amounts add up to, and what the statements said, to the cent.
    last = report.totals.row(-1, named=True)
    states = report.replay.states()
    assert last["total"] == states["balance"].sum()
    assert last["recorded_total"] == states["recorded_balance"].sum()
    assert last["drift_total"] == last["recorded_total"] - last["total"]


def test_the_default_report_charts_two_years_of_data(tmp_path: Any) -> None:
    from esworkbench import charts
    from esworkbench.examples.bank.sample import generate
    from esworkbench.lake import Lake, sync
    from esworkbench.sources.files import TableSource

    ledger = generate(users=60, seed=3, days=800).to_arrow()
    with Lake(tmp_path / "lake.duckdb") as lake:
        sync(TableSource(ledger, name="ledger"), lake)
        report = tl.balance_report(lake, on_error="skip")
    assert report.every == "1w"  # daily periods would not fit the heatmap
    charts.balance_timeline(report.timeline)
    charts.balance_small_multiples(report.timeline)
    charts.balance_heatmap(report.periods)
    charts.bank_total(report.totals)
    short = tl.balance_report(lake.path, on_error="skip", until="2024-02-01")
    assert short.every == "1d"


def test_a_scope_that_matches_nothing_renders_a_report_that_says_so(tmp_path: Path) -> None:
    from esworkbench import reports
    from esworkbench.events import archive_line
    from esworkbench.examples.bank.sample import generate
    from esworkbench.lake import Lake, sync
    from esworkbench.sources.files import open_archive

    archive = tmp_path / "ledger.jsonl"
    archive.write_text("\n".join(archive_line(e) for e in generate(users=3, seed=2, days=5).events))
    lake = tmp_path / "lake.duckdb"
    with Lake(lake) as opened:
        sync(open_archive(archive), opened)

    result = reports.run_report(
        "balance_timeline",
        lake=lake,
        parameters={"stream_prefix": "nobody-"},
        out_dir=tmp_path / "reports",
    )

    assert result.ok
    assert "No events in the lake match this report" in result.html.read_text()


# --- faithful under aggregation and speed-ups -------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.integers(min_value=0, max_value=10 * 24),  # hours into 10 days
            st.integers(min_value=-(10**5), max_value=10**5),  # cents
        ),
        min_size=1,
        max_size=120,
    ),
    st.sampled_from([(None, None), (30, 200), (0, 100), (100, None)]),
)
def test_bank_totals_equal_a_plain_sum_of_balances_as_of_each_period_end(
    raw: list[tuple[str, int, int]], window_hours: tuple[int | None, int | None]
) -> None:
    # Given streams whose events carry business times out of revision order (back-dated,
    # late-stamped, tied), when the bank totals are computed per period, then each period's
    # total is the sum over streams of the balance after the highest revision that had happened
    # strictly before the period's end, computed here by a plain loop.
    revisions: dict[str, int] = {}
    rows = []
    for stream, hours, cents in raw:
        revision = revisions.get(stream, 0)
        revisions[stream] = revision + 1
        rows.append((stream, revision, hours, f"{Decimal(cents).scaleb(-2):.2f}"))
    ledger = frame(rows)
    since, until = (T0 + timedelta(hours=h) if h is not None else None for h in window_hours)
    if since is not None and until is not None and since >= until:
        return

    totals = tl.bank_totals(ledger, every="1d", since=since, until=until)
    both = _totals(
        ledger.with_columns(pl.col("balance").alias("recorded")),
        every="1d",
        since=since,
        until=until,
        value="balance",
        recorded="recorded",
    )

    for period_end, total in zip(totals["period_end"], totals["total"], strict=True):
        expected = Decimal("0.00")
        for stream in revisions:
            happened = [
                r for r in rows if r[0] == stream and T0 + timedelta(hours=r[2]) < period_end
            ]
            if happened:
                expected += Decimal(max(happened, key=lambda r: r[1])[3])
        assert total == expected
    assert both["total"].to_list() == totals["total"].to_list()
    assert both["recorded_total"].to_list() == totals["total"].to_list()
    assert set(both["drift_total"].to_list()) <= {Decimal("0.00")}


@dataclass(frozen=True)
class Dense:
    """A lake whose busiest accounts have more events than a chart has pixels, and its report."""

    lake: Path
    report: tl.BalanceReport
    html: str
    page: Path


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Dense:
    from esworkbench import reports
    from esworkbench.examples.bank.sample import generate
    from esworkbench.lake import Lake, sync
    from esworkbench.sources.files import TableSource

    base = tmp_path_factory.mktemp("dense")
    # 6 accounts over 900 days: ~700 events each, on a chart 760 pixels wide.
    ledger = generate(users=6, seed=7, days=900).to_arrow()
    lake = base / "lake.duckdb"
    with Lake(lake) as opened:
        sync(TableSource(ledger, name="ledger"), opened)
    result = reports.run_report(
        "balance_timeline", lake=lake, parameters={"top_n": 4}, out_dir=base / "reports"
    )
    return Dense(lake, tl.balance_report(lake, top_n=4), result.html.read_text(), result.html)


# The main timeline's title when it is drawn per time bucket.
_BUCKETED = r"Balance per (day|\d+ days|week|\d+ weeks)"


def _chart_spec(html: str, title: str) -> dict[str, Any]:
    specs = re.findall(r'<script[^>]*class="esw-chart-spec"[^>]*>(.*?)</script>', html, re.S)
    for text in specs:
        spec = json.loads(text)
        heading = spec.get("title")
        if re.fullmatch(title, heading.get("text") if isinstance(heading, dict) else heading):
            return spec  # type: ignore[no-any-return]
    raise AssertionError(f"no chart titled {title!r}")


def test_a_dense_timeline_is_charted_per_bucket_and_each_bucket_is_the_events_in_it(
    dense: Dense,
) -> None:
    # Titled by what it draws: the balance per bucket, not after every event.
    spec = _chart_spec(dense.html, _BUCKETED)
    subtitle = " ".join(spec["title"]["subtitle"])
    every = re.search(r"Aggregated per [^(]+\((\w+)\)", subtitle)
    assert every is not None, subtitle
    (values,) = spec["datasets"].values()
    assert len(values) < dense.report.timeline.height  # fewer points than events
    # Each bucket, from a plain loop over every row of the charted timeline (business-time order
    # per stream): its event count, the balance after its last event, and the lowest and highest
    # balance held in it (including the one carried in).
    # Polars aligns days to the Unix epoch and weeks to Mondays (1970-01-05 was the first).
    epoch, monday = datetime(1970, 1, 1, tzinfo=UTC), datetime(1970, 1, 5, tzinfo=UTC)
    grids = {"1d": (timedelta(days=1), epoch), "2d": (timedelta(days=2), epoch)}
    grids |= {"3d": (timedelta(days=3), epoch), "1w": (timedelta(weeks=1), monday)}
    length, origin = grids[every[1]]
    expected: dict[tuple[str, datetime], list[Any]] = {}
    carried: dict[str, Decimal] = {}
    rows = dense.report.timeline.sort("stream_name", "occurred_at", maintain_order=True)
    for row in rows.iter_rows(named=True):
        stream, moment, balance = row["stream_name"], row["occurred_at"], row["balance"]
        start = origin + ((moment - origin) // length) * length
        seen = [balance] + ([carried[stream]] if stream in carried else [])
        bucket = expected.setdefault((stream, start), [0, min(seen), max(seen), None])
        bucket[0] += 1
        bucket[1], bucket[2], bucket[3] = min(bucket[1], balance), max(bucket[2], balance), balance
        carried[stream] = balance
    shown = {
        (v["stream_name"], datetime.fromtimestamp(v["bucket_start"] / 1000, UTC)): [
            v["events"],
            v["low"],
            v["high"],
            v["balance"],
        ]
        for v in values
    }
    # The chart holds floats (JSON has no decimal): the nearest float to each exact balance.
    as_floats = {k: [n, float(lo), float(hi), float(x)] for k, (n, lo, hi, x) in expected.items()}
    assert shown == as_floats
    assert sum(v["events"] for v in values) == dense.report.timeline.height


def test_every_finding_is_in_the_html_of_a_dense_report(dense: Dense) -> None:
    findings = dense.report.findings
    assert findings.height > 0 and findings["kind"].n_unique() >= 4
    tables = re.findall(r'<div[^>]*class="ewb-table".*?</tbody></table></div>', dense.html, re.S)
    (listed,) = [t for t in tables if "<th>evidence</th>" in t]
    rows = re.findall(r"<tr>(.*?)</tr>", listed.split("<tbody>")[1], re.S)
    assert len(rows) == findings.height
    for finding, row in zip(findings.iter_rows(named=True), rows, strict=True):
        for column in ("rule", "kind", "stream_name", "event_id"):
            assert f">{html.escape(str(finding[column]))}</td>" in row
        assert f"<td>{finding['commit_position']}</td>" in row


def test_a_dense_report_stays_small(dense: Dense) -> None:
    from esworkbench.charts import MIN_BUCKET_PIXELS

    # Charts embed buckets, not events: at most one point per stream per few pixels of width,
    # whatever the number of events behind them; the page is then the Vega bundle (~0.9 MB),
    # nbconvert's page, the tables and charts bounded by their pixels (~1.9 MB here).
    for title, width in ((_BUCKETED, 760), ("Balance per stream", 170)):
        spec = _chart_spec(dense.html, title)
        assert "Aggregated per" in spec["title"]["subtitle"][0]
        (values,) = spec["datasets"].values()
        per_stream = pl.DataFrame(values).group_by("stream_name").len()["len"]
        assert per_stream.max() <= width // MIN_BUCKET_PIXELS
    assert len(dense.html.encode()) < 2_500_000


def test_the_aggregated_charts_render_and_read_in_headless_chromium(
    dense: Dense, tmp_path: Path
) -> None:
    from tests.reports.browser import offline_dom

    dom = offline_dom(dense.page.as_uri(), tmp_path)
    charts = dom.count('class="esw-chart"')
    assert charts == 4 and dom.count('data-esw-rendered="true"') == charts
    assert "data-esw-error" not in dom
    # Bands and points have tooltips, none reads NaN; every small-multiple panel has marks.
    tooltips = [int(n) for n in re.findall(r'data-esw-tooltips="(\d+)"', dom)]
    assert len(tooltips) == charts and all(n > 0 for n in tooltips)
    assert re.findall(r'data-esw-unreadable-tooltips="(\d+)"', dom) == ["0"] * charts
    assert re.findall(r'data-esw-empty-panels="(\d+)"', dom) == ["0"] * charts
