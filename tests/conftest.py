"""Fixtures shared by the whole suite.

``esdb_uri``: one EventStoreDB for the session: the real one named by ``ESWORKBENCH_ESDB_URI``
(e.g. ``esdb://localhost:2113?tls=false``) when set, else the development server, started once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# In CI the property tests draw the same examples every run (a failure there is reproducible,
# never a coin toss); run locally, they explore new examples each time.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def esdb_uri() -> Iterator[str]:
    """Connection string of the session's EventStoreDB."""
    uri = os.environ.get("ESWORKBENCH_ESDB_URI", "").strip()
    if uri:
        yield uri
        return
    from esworkbench.devserver import start

    with start() as server:
        yield server.uri


# -- the event lake (tests/test_lake.py, test_sources_*.py, test_sync*.py) ---------------------


@pytest.fixture(scope="session")
def small_ledger():  # type: ignore[no-untyped-def]
    """A small sample ledger with two anomalies of every kind (about 700 events)."""
    from esworkbench.examples.bank.sample import generate

    return generate(users=40, seed=5, days=30)


@pytest.fixture
def lake(tmp_path):  # type: ignore[no-untyped-def]
    """A new, empty lake in the test's temporary directory (closed afterwards)."""
    from esworkbench.lake import Lake

    with Lake(tmp_path / "lake.duckdb") as opened:
        yield opened


@pytest.fixture
def make_event():  # type: ignore[no-untyped-def]
    """A factory of raw events (RAW_SCHEMA dicts) with JSON payloads by default.

    make_event(position, stream="user-1", revision=0, event_type="Made", data={...} or bytes,
    metadata=b"" or dict, content_type=..., event_id=...)
    """
    import json
    import uuid
    from datetime import UTC, datetime, timedelta

    def build(
        position: int,
        *,
        stream: str = "user-1",
        revision: int = 0,
        event_type: str = "Made",
        data: object = None,
        metadata: object = b"",
        content_type: str = "application/json",
        event_id: str | None = None,
        created: datetime | None = None,
    ) -> dict[str, object]:
        payload = (
            data
            if isinstance(data, bytes)
            else json.dumps({"n": position} if data is None else data).encode()
        )
        meta = metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode()
        return {
            "commit_position": position,
            "prepare_position": position,
            "stream_name": stream,
            "stream_revision": revision,
            "event_id": event_id or str(uuid.uuid5(uuid.NAMESPACE_OID, f"{stream}/{position}")),
            "event_type": event_type,
            "created": created or datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=position),
            "content_type": content_type,
            "data": payload,
            "metadata": meta,
        }

    return build


# -- Dask (tests/fold/test_dask.py, tests/projections/test_dask.py) ----------------------------


@pytest.fixture(scope="session")
def dask_client():  # type: ignore[no-untyped-def]
    """A client of a real LocalCluster: two worker processes under nannies, one thread each."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=40,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client
