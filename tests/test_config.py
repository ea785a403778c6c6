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
