"""Rebuilds on Dask: a real LocalCluster builds each hash partition's keys; the read model, the
findings and the counts are those of a single-process rebuild."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from esworkbench.errors import ConfigError
from esworkbench.examples.bank.projections import AccountSummaryV1
from esworkbench.lake import Lake
from esworkbench.projections import (
    Event,
    RebuildResult,
    Row,
    handles,
    rebuild,
    resolve_projection,
)
from tests.projections.conftest import TOTALS, V1, V2, Scene


def rebuilt(lake: Path, projection: Any, **options: Any) -> tuple[RebuildResult, pl.DataFrame]:
    result = rebuild(lake, projection, **options)
    spec = resolve_projection(projection)
    with Lake(lake, read_only=True) as opened:
        store = opened.read_model(spec.name, spec.version)
        checkpoint = store.checkpoint()
        assert checkpoint is not None and checkpoint.complete
        return result, store.read()


def assert_same(
    got: tuple[RebuildResult, pl.DataFrame], expected: tuple[RebuildResult, Any]
) -> None:
    (result, rows), (want, want_rows) = got, expected
    assert_frame_equal(rows, want_rows)
    assert_frame_equal(result.findings, want.findings)
    assert (result.events, result.rows, result.first_position, result.last_position) == (
        want.events,
        want.rows,
        want.first_position,
        want.last_position,
    )
    assert_frame_equal(
        result.per_type.select("event_type", "events").sort("event_type"),
        want.per_type.select("event_type", "events").sort("event_type"),
    )


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    partitions=st.integers(min_value=1, max_value=9),
    projection=st.sampled_from([V1, V2]),
    half=st.booleans(),
)
def test_a_dask_rebuild_equals_the_single_process_rebuild(
    dask_client: Any,
    scene: Scene,
    tmp_path_factory: pytest.TempPathFactory,
    partitions: int,
    projection: str,
    half: bool,
) -> None:
    base = tmp_path_factory.mktemp("dask-rebuild")
    local, distributed = base / "local.duckdb", base / "dask.duckdb"
    shutil.copy(scene.lake, local)
    shutil.copy(scene.lake, distributed)
    window: dict[str, int] = {}
    if half:
        with Lake(scene.lake, read_only=True) as lake:
            head = lake.head_position()
        assert head is not None
        window = {"last_position": head // 2}

    expected = rebuilt(local, projection, **window)
    got = rebuilt(
        distributed,
        projection,
        engine="dask",
        scheduler=dask_client,
        partitions=partitions,
        workdir=base / "work",
        **window,
    )
    assert_same(got, expected)


def refuses_big_withdrawals() -> type[AccountSummaryV1]:
    """V1 whose withdrawal handler raises above 50.00: findings, pinned to their events.

    Defined in a function, the class travels to the workers by value.
    """

    class RefusesBigWithdrawals(AccountSummaryV1):
        name = "refusing_summary"

        @handles("BalanceWithdrawn")
        def withdrawn(self, row: Row, event: Event) -> None:
            if event.payload.amount > 50:
                raise ValueError(f"withdrawal of {event.payload.amount} is over the limit")
            super().withdrawn(row, event)

    return RefusesBigWithdrawals


def test_findings_of_a_dask_rebuild_are_the_single_process_ones(
    dask_client: Any, scene: Scene, tmp_path: Path
) -> None:
    local, distributed = tmp_path / "local.duckdb", tmp_path / "dask.duckdb"
    shutil.copy(scene.lake, local)
    shutil.copy(scene.lake, distributed)
    cls = refuses_big_withdrawals()
    expected = rebuilt(local, cls)
    assert expected[0].findings.height > 0
    got = rebuilt(
        distributed, cls, engine="dask", scheduler=dask_client, partitions=3, workdir=tmp_path / "w"
    )
    assert_same(got, expected)


def test_projections_that_do_not_split_by_stream_are_refused(
    dask_client: Any, lake_path: Path
) -> None:
    with pytest.raises(ConfigError, match="keyed by stream"):
        rebuild(lake_path, TOTALS, engine="dask", scheduler=dask_client)

    class ByPosition(AccountSummaryV1):
        name = "by_position"
        partition = "position"

    with pytest.raises(ConfigError, match="keyed by stream"):
        rebuild(lake_path, ByPosition, engine="dask", scheduler=dask_client)
