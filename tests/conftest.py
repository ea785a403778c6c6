"""Fixtures shared by the whole suite.

``esdb_uri``: one EventStoreDB for the session: the real one named by ``ESWORKBENCH_ESDB_URI``
(e.g. ``esdb://localhost:2113?tls=false``) when set, else the development server, started once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


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
