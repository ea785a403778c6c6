"""Chart builders: small frames in, Vega-Lite specs out; money is exact until the chart."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esworkbench import charts

START = datetime(2024, 3, 1, tzinfo=UTC)


def timeline_frame(streams: int = 3, events: int = 5) -> pl.DataFrame:
    """A timeline of the fold's shape: envelope, Decimal balance, payload amount/newBalance."""
    rows = []
    for s in range(streams):
        balance = Decimal("0.00")
        for r in range(events):
            amount = Decimal(f"{r + 1}.{s}5")
            balance += amount
            moment = START + timedelta(hours=r * 5 + s)
            rows.append(
                {
                    "stream_name": f"user-{s}",
                    "stream_revision": r,
                    "commit_position": 1000 * s + r,
                    "created": moment + timedelta(seconds=1),
                    "occurred_at": moment,
                    "event_type": "BalanceDeposited",
                    "event_id": f"e-{s}-{r}",
                    "balance": balance,
                    "amount": amount,
                    "new_balance": balance,
                }
            )
    return pl.DataFrame(
        rows,
        schema_overrides={
            "stream_revision": pl.UInt64,
            "commit_position": pl.UInt64,
            "balance": pl.Decimal(38, 2),
            "amount": pl.Decimal(38, 2),
            "new_balance": pl.Decimal(38, 2),
        },
    )


def dataset(spec: dict[str, Any]) -> list[dict[str, Any]]:
    (values,) = spec["datasets"].values()
    return values  # type: ignore[no-any-return]


def marks(spec: Any) -> list[dict[str, Any]]:
    """Every unit spec (one with a mark) inside a layered / concatenated / faceted spec."""
    if isinstance(spec, dict):
        found = [spec] if "mark" in spec else []
        for value in spec.values():
            found.extend(marks(value))
        return found
    if isinstance(spec, list):
        return [m for item in spec for m in marks(item)]
    return []


def test_balance_timeline_is_a_step_line_with_event_tooltips() -> None:
    spec = charts.balance_timeline(timeline_frame()).to_dict()
    lines = [m for m in marks(spec) if m["mark"]["type"] == "line"]
    assert lines and all(m["mark"]["interpolate"] == "step-after" for m in lines)
    points = [m for m in marks(spec) if m["mark"]["type"] == "point"]
    titles = [t["title"] for t in points[0]["encoding"]["tooltip"]]
    for wanted in (
        "event type",
        "amount",
        "newBalance",
        "balance",
        "revision",
        "position",
        "created",
        "occurred_at",
    ):
        assert wanted in titles
    # The overview's interval brush drives the main chart's x domain: zoom by brushing.
    params = json.dumps(spec)
    assert '"interval"' in params and '{"param": "zoom"}' in params


def test_decimal_money_becomes_float_only_in_the_chart_data() -> None:
    frame = timeline_frame(streams=1, events=2)
    values = dataset(charts.balance_timeline(frame).to_dict())
    assert [v["balance"] for v in values] == [1.05, 3.1]
    assert [v["amount"] for v in values] == [1.05, 2.05]
    # Times as epoch milliseconds (UTC): numbers Vega formats as dates everywhere, tooltips too.
    assert values[0]["occurred_at"] == 1_709_251_200_000
    assert frame.schema["balance"] == pl.Decimal(38, 2)  # the caller's frame is untouched


def test_plot_frame_casts_at_the_boundary() -> None:
    frame = pl.DataFrame(
        {
            "balance": [Decimal("0.10"), Decimal("-2.50")],
            "commit_position": pl.Series([2**40, 7], dtype=pl.UInt64),
        }
    )
    out = charts.plot_frame(frame)
    assert out.schema == pl.Schema({"balance": pl.Float64, "commit_position": pl.Int64})
    assert out["balance"].to_list() == [0.1, -2.5]
    moments = pl.DataFrame({"t": [datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)]})
    assert charts.plot_frame(moments)["t"].to_list() == [1_704_164_645_123]


def test_max_points_decides_not_altairs_row_limit() -> None:
    frame = timeline_frame(streams=2, events=3_500)
    spec = charts.balance_timeline(frame, bucket=None, max_points=8_000).to_dict()
    assert len(dataset(spec)) == 7_000
    assert spec["title"] == "Balance after every event"  # one point per event, as asked
    with pytest.raises(ValueError, match="max_points=5,000"):
        charts.balance_timeline(frame, bucket=None)


def test_pandas_frames_work_too() -> None:
    spec = charts.balance_timeline(timeline_frame().to_pandas()).to_dict()
    assert len(dataset(spec)) == 15


def test_a_timeline_denser_than_the_pixels_is_aggregated_and_says_at_what_bucket() -> None:
    # 2 streams of 1,000 events 5 hours apart (208 days) on a 760-pixel chart: under a pixel
    # per event.
    frame = timeline_frame(streams=2, events=1_000)
    spec = charts.balance_timeline(frame).to_dict()
    values = dataset(spec)
    assert spec["title"]["text"] == "Balance per day"  # not "after every event"
    subtitle = " ".join(spec["title"]["subtitle"])
    assert "Aggregated per day (1d)" in subtitle and "2,000 events" in subtitle
    assert f"drawn as {len(values)} buckets" in subtitle
    # Every bucket is the one named, and each stream's buckets hold all of its events.
    assert {v["bucket_end"] - v["bucket_start"] for v in values} == {24 * 3600 * 1000}
    assert sum(v["events"] for v in values) == frame.height
    # The last bucket of each stream ends at the stream's true final balance.
    finals = frame.group_by("stream_name").agg(pl.col("balance").last().cast(pl.Float64))
    shown = {v["stream_name"]: v["balance"] for v in sorted(values, key=lambda v: v["occurred_at"])}
    assert shown == dict(finals.iter_rows())
    # A band of lowest to highest balance per bucket, and hovering says what a bucket is.
    assert [m["mark"]["type"] for m in spec["vconcat"][0]["layer"]] == ["rect", "line", "point"]
    titles = [t["title"] for t in spec["vconcat"][0]["layer"][2]["encoding"]["tooltip"]]
    assert titles[:7] == [
        "stream",
        "day from",
        "to",
        "events in it",
        "lowest balance",
        "highest balance",
        "balance at its end",
    ]
    assert "last event: revision" in titles and "last event: position" in titles


def test_a_sparse_timeline_keeps_one_point_per_event() -> None:
    frame = timeline_frame(streams=3, events=100)  # 100 events per stream on 760 pixels
    spec = charts.balance_timeline(frame).to_dict()
    assert len(dataset(spec)) == 300 and spec["title"] == "Balance after every event"
    # The small multiples' panels are 170 pixels wide: there, the same events are too dense.
    facet = charts.balance_small_multiples(frame).to_dict()
    assert "Aggregated per" in facet["title"]["subtitle"][0]
    assert sum(v["events"] for v in dataset(facet)) == 300


# Bucket lengths, and where their grid starts: Polars aligns days and hours to the Unix epoch
# and weeks to Mondays (the first one after the epoch is 1970-01-05).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GRIDS = {
    "1h": (timedelta(hours=1), EPOCH),
    "6h": (timedelta(hours=6), EPOCH),
    "1d": (timedelta(days=1), EPOCH),
    "2d": (timedelta(days=2), EPOCH),
    "1w": (timedelta(weeks=1), datetime(1970, 1, 5, tzinfo=UTC)),
}


def _plain_buckets(
    rows: list[tuple[str, datetime, Decimal]], every: str
) -> dict[tuple[str, datetime], tuple[int, Decimal, Decimal, Decimal]]:
    """Per (stream, bucket start): events, low, high, last; a plain loop over every row.

    Each stream's rows in time order (ties in frame order); low and high include the balance
    carried into the bucket from the stream's previous row, as a step line through them shows.
    """
    length, origin = GRIDS[every]
    out: dict[tuple[str, datetime], tuple[int, Decimal, Decimal, Decimal]] = {}
    by_stream: dict[str, list[tuple[datetime, Decimal]]] = {}
    for stream, moment, value in rows:
        by_stream.setdefault(stream, []).append((moment, value))
    for stream, items in by_stream.items():
        carried: Decimal | None = None
        for moment, value in sorted(items, key=lambda item: item[0]):  # stable: ties in order
            key = (stream, origin + ((moment - origin) // length) * length)
            if key in out:
                n, low, high, _ = out[key]
                out[key] = (n + 1, min(low, value), max(high, value), value)
            else:
                seen = [value] if carried is None else [value, carried]
                out[key] = (1, min(seen), max(seen), value)
            carried = value
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["user-a", "user-b", "user-c"]),
            st.integers(min_value=0, max_value=20 * 24 * 60),  # minutes into 20 days
            st.integers(min_value=-(10**6), max_value=10**6),  # cents
        ),
        min_size=1,
        max_size=300,
    ),
    st.sampled_from(sorted(GRIDS)),
)
def test_buckets_equal_a_plain_loop_over_every_event(
    raw: list[tuple[str, int, int]], every: str
) -> None:
    # Times out of order and tied, as back-dated events and batch writes make them.
    rows = [(s, START + timedelta(minutes=m), Decimal(c).scaleb(-2)) for s, m, c in raw]
    frame = pl.DataFrame(
        {
            "stream_name": [r[0] for r in rows],
            "occurred_at": [r[1] for r in rows],
            "balance": [r[2] for r in rows],
        },
        schema_overrides={"balance": pl.Decimal(38, 2)},
    )

    buckets = charts.bucket_timeline(frame, every)

    got = {
        (r["stream_name"], r["bucket_start"]): (r["events"], r["low"], r["high"], r["balance"])
        for r in buckets.iter_rows(named=True)
    }
    assert got == _plain_buckets(rows, every)  # exact: Decimals compared as Decimals
    assert buckets.schema["low"] == buckets.schema["balance"] == pl.Decimal(38, 2)
    assert (buckets["bucket_end"] - buckets["bucket_start"]).unique().to_list() == [GRIDS[every][0]]


def test_small_multiples_heatmap_and_bank_total_build() -> None:
    frame = timeline_frame()
    facet = charts.balance_small_multiples(frame).to_dict()
    assert facet["facet"]["field"] == "stream_name"
    periods = pl.DataFrame(
        {
            "stream_name": ["user-0", "user-1"],
            "period_start": [START, START],
            "period_end": [START + timedelta(days=1)] * 2,
            "balance": [Decimal("-5.00"), Decimal("7.25")],
            "events": [1, 2],
        }
    )
    heat = charts.balance_heatmap(periods).to_dict()
    assert heat["mark"]["type"] == "rect"
    assert [v["balance"] for v in dataset(heat)] == [-5.0, 7.25]
    totals = pl.DataFrame(
        {
            "period_end": [START, START + timedelta(days=1)],
            "total": [Decimal("1.10"), Decimal("2.20")],
        }
    )
    assert [v["total"] for v in dataset(charts.bank_total(totals).to_dict())] == [1.1, 2.2]


def test_builders_refuse_to_embed_too_much() -> None:
    with pytest.raises(ValueError, match="balance_heatmap for many streams"):
        charts.balance_small_multiples(timeline_frame(streams=5), max_series=4)
    totals = pl.DataFrame({"period_end": [START] * 11, "total": [1.0] * 11})
    with pytest.raises(ValueError, match="coarser period"):
        charts.bank_total(totals, max_points=10)
    with pytest.raises(ValueError, match=r"needs the column\(s\) \['balance'\]"):
        charts.balance_timeline(pl.DataFrame({"stream_name": ["a"], "occurred_at": [START]}))


def test_every_chart_renders_to_svg_offline() -> None:
    import vl_convert as vlc

    frame = timeline_frame()
    for chart in (charts.balance_timeline(frame), charts.balance_small_multiples(frame)):
        svg = vlc.vegalite_to_svg(chart.to_dict(), vl_version="6.4")
        assert svg.lstrip().startswith("<svg") and "<path" in svg


@pytest.fixture
def restore_renderer() -> Iterator[None]:
    import altair as alt

    before = alt.renderers.active
    yield
    alt.renderers.enable(before)


@pytest.mark.usefixtures("restore_renderer")
def test_renderer_gives_an_offline_svg_and_the_spec() -> None:
    charts.enable_renderer()
    charts.enable_renderer()  # idempotent
    data, _ = charts.balance_timeline(timeline_frame())._repr_mimebundle_()
    spec_keys = [k for k in data if k.startswith(charts.SPEC_MIME_PREFIX)]
    assert spec_keys == ["application/vnd.esworkbench.vegalite.v6+json"]
    assert data[spec_keys[0]]["vconcat"]
    # What JupyterLab and nbconvert show: a static SVG, no HTML that would fetch Vega.
    assert data["image/svg+xml"].startswith("<svg") and "text/html" not in data


def test_importing_charts_does_not_import_altair() -> None:
    code = "import sys, esworkbench.charts; print('altair' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
