"""Settings: arguments beat the environment, which beats defaults; bad values say the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from esworkbench.config import Settings, mask_uri
from esworkbench.errors import ConfigError


def test_arguments_beat_environment_beat_defaults() -> None:
    env = {"ESWORKBENCH_BATCH_SIZE": "250", "ESWORKBENCH_LAKE": "/tmp/x.duckdb"}
    settings = Settings.load(environ=env, batch_size=1000)
    assert settings.batch_size == 1000
    assert settings.lake == Path("/tmp/x.duckdb")
    assert settings.reader == "fast"


def test_invalid_reader_names_variable_and_choices() -> None:
    with pytest.raises(ConfigError, match=r"ESWORKBENCH_READER.*\['fast', 'plain'\].*'quick'"):
        Settings.load(environ={"ESWORKBENCH_READER": "quick"})


def test_invalid_batch_size() -> None:
    with pytest.raises(ConfigError, match="positive integer"):
        Settings.load(environ={}, batch_size=0)


def test_uri_error_masks_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={"ESWORKBENCH_ESDB_URI": "http://admin:s3cret@host:2113"})
    assert "s3cret" not in str(info.value)
    assert "esdb://" in str(info.value)


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        (
            "esdb://admin:changeit@localhost:2113?tls=true",
            "esdb://admin:***@localhost:2113?tls=true",
        ),
        ("esdb://localhost:2113?tls=false", "esdb://localhost:2113?tls=false"),
        ("esdb+discover://u:p@a,b,c", "esdb+discover://u:***@a,b,c"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


def test_kurrentdb_uris_are_accepted_and_translated_for_the_client() -> None:
    from esworkbench.config import esdbclient_uri

    settings = Settings.load(environ={}, esdb_uri="kurrentdb://admin:s3cret@db:2113?tls=false")
    assert settings.esdb_uri == "kurrentdb://admin:s3cret@db:2113?tls=false"
    assert "s3cret" not in repr(settings)
    assert esdbclient_uri(settings.esdb_uri) == "esdb://admin:s3cret@db:2113?tls=false"
    assert esdbclient_uri("kurrentdb+discover://db") == "esdb+discover://db"


def test_a_lake_path_resolves_from_the_project_root_or_esworkbench_lake(tmp_path: Path) -> None:
    from esworkbench.config import resolve_lake_path

    # Given a project (a pyproject.toml) with the demo's lake, and a notebook directory in it.
    (tmp_path / "pyproject.toml").write_text("")
    lake = tmp_path / "data" / "lake" / "demo.duckdb"
    lake.parent.mkdir(parents=True)
    lake.write_bytes(b"")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    default = "data/lake/demo.duckdb"
    # From notebooks/, the default names the project's lake.
    assert resolve_lake_path(default, environ={}, cwd=notebooks) == lake
    # From the root it is simply where it is.
    assert resolve_lake_path(default, environ={}, cwd=tmp_path) == lake
    # ESWORKBENCH_LAKE names the lake to use when the given path is not there.
    chosen = tmp_path / "elsewhere.duckdb"
    env = {"ESWORKBENCH_LAKE": str(chosen)}
    assert resolve_lake_path(default, environ=env, cwd=notebooks) == chosen
    # A path that exists as given always wins; a missing one outside a project stays as given.
    assert resolve_lake_path(default, environ=env, cwd=tmp_path) == lake
    outside = tmp_path.parent
    assert resolve_lake_path("nope.duckdb", environ={}, cwd=outside) == outside / "nope.duckdb"
