"""No password leaves the workbench: not through mask_uri, Settings, open_source or EsdbSource.

Given URIs as people really type them (passwords holding '/', '@', ':' or spaces, leading
whitespace, 'esdb:/' typos, kurrentdb:// schemes), when they are masked, validated or opened,
then the password appears in no output and no error message.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from esworkbench.config import Settings, check_esdb_uri, mask_uri
from esworkbench.errors import ConfigError, EsWorkbenchError
from esworkbench.sources import open_source
from esworkbench.sources.esdb import EsdbSource

LEADS = ["", " ", "  ", "\t", "\n"]
SCHEMES = [
    "esdb://",
    "esdb+discover://",
    "kurrentdb://",
    "kurrentdb+discover://",
    "KurrentDB://",
    "esdb:/",
    "esdb:",
    "esdb//",
    "esdb:///",
    "esdb:\\\\",
    "http://",
    "",
]
HOSTS = ["localhost:2113", "a:2113,b:2113,c:2113", "db.example.com", "[::1]:2113"]
TAILS = ["", "?tls=false", "/?tls=true&tlsVerifyCert=false", " ", "\n", "?tls=true "]

passwords = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from("/@:?#% \\"),
    min_size=1,
    max_size=20,
)
users = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", max_size=8)


# For outputs full of English (error messages), a password is threaded with a sentinel that no
# message contains: every fragment of two or more characters then carries it, so "the
# sentinel appears nowhere" proves that no part of the password leaked.
SENTINEL = "\u01c2"
threaded_passwords = st.lists(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from("/@:?#% \\"), max_size=8
).map(lambda chars: SENTINEL + SENTINEL.join(chars) + SENTINEL)


@st.composite
def uris_with_passwords(
    draw: st.DrawFn, passwords: st.SearchStrategy[str] = passwords
) -> tuple[str, str]:
    """(uri, password): a connection string, well-formed or not, and its password."""
    lead, scheme = draw(st.sampled_from(LEADS)), draw(st.sampled_from(SCHEMES))
    user, password = draw(users), draw(passwords)
    host, tail = draw(st.sampled_from(HOSTS)), draw(st.sampled_from(TAILS))
    # The password must not occur by chance in what a correct mask would still show.
    rest = f"@{host}{tail}"
    before = f"{lead}{scheme}{user}"
    assume(not any(password in before[:i] + ":***" + rest for i in range(len(before) + 1)))
    assume(password not in before + rest)
    return f"{before}:{password}{rest}", password


@settings(max_examples=400, deadline=None)
@given(uris_with_passwords())
@example(("esdb://admin:pa/ss@localhost:2113", "pa/ss"))
@example(("esdb://admin:p@ss@localhost:2113", "p@ss"))
@example((" esdb://admin:changeit@localhost:2113", "changeit"))
@example(("esdb:/admin:changeit@localhost:2113", "changeit"))
@example(("kurrentdb://admin:changeit@localhost:2113", "changeit"))
@example(("kurrentdb+discover://admin:changeit@db", "changeit"))
@example(("admin:pa:/ss@localhost:2113", "pa:/ss"))
@example(("a:/@localhost:2113", "/"))
def test_mask_uri_never_shows_the_password(case: tuple[str, str]) -> None:
    uri, password = case
    masked = mask_uri(uri)
    assert password not in masked
    assert ":***@" in masked
    assert mask_uri(masked) == masked  # the report runner relies on masking being idempotent


@settings(max_examples=200, deadline=None)
@given(uris_with_passwords(threaded_passwords))
@example((f"esdb://admin:pa/ss{SENTINEL}@localhost:2113", f"pa/ss{SENTINEL}"))
@example((f"esdb://admin:p@ss{SENTINEL}@localhost:2113?tls=false", f"p@ss{SENTINEL}"))
@example((f" esdb://admin:{SENTINEL}@localhost:2113", SENTINEL))
@example((f"esdb:/admin:{SENTINEL}@localhost:2113", SENTINEL))
@example((f"kurrentdb://admin:{SENTINEL}@localhost:2113", SENTINEL))
def test_settings_and_sources_never_show_the_password(case: tuple[str, str]) -> None:
    uri, _ = case
    try:
        loaded = Settings.load(environ={}, esdb_uri=uri)
    except ConfigError as e:
        assert SENTINEL not in str(e)
    else:
        assert SENTINEL not in repr(loaded)
    for open_it in (open_source, EsdbSource):
        try:
            source = open_it(uri)
        except EsWorkbenchError as e:
            assert SENTINEL not in str(e)
        else:
            assert SENTINEL not in source.describe()
            assert SENTINEL not in repr(source)
            assert SENTINEL not in source.key


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("esdb://admin:pa/ss@localhost:2113", "esdb://admin:***@localhost:2113"),
        ("esdb://admin:p@ss@localhost:2113?tls=true", "esdb://admin:***@localhost:2113?tls=true"),
        (" esdb://admin:changeit@localhost:2113", " esdb://admin:***@localhost:2113"),
        ("esdb:/admin:changeit@localhost:2113", "esdb:/admin:***@localhost:2113"),
        ("kurrentdb://admin:changeit@db:2113", "kurrentdb://admin:***@db:2113"),
        ("kurrentdb+discover://admin:changeit@db", "kurrentdb+discover://admin:***@db"),
        ("esdb://admin:pass word@db:2113", "esdb://admin:***@db:2113"),
        ("esdb://admin@db:2113", "esdb://admin@db:2113"),
        ("data/archive@2024.jsonl", "data/archive@2024.jsonl"),
    ],
)
def test_mask_uri_cases(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


@pytest.mark.parametrize(
    ("uri", "fix"),
    [
        ("esdb://admin:p@ss@db:2113", "use a password without them"),
        ("esdb://admin:pa/ss@db:2113", "use a password without them"),
        (" esdb://admin:changeit@db:2113", "remove it"),
        ("esdb:/admin:changeit@db:2113", "must start with esdb://"),
        ("KurrentDB://admin:changeit@db:2113", "write it as kurrentdb://"),
        ("kurrentdb://admin:pa/ss@db:2113", "use a password without them"),
    ],
)
def test_a_malformed_uri_is_refused_with_the_fix(uri: str, fix: str) -> None:
    with pytest.raises(ConfigError, match=fix) as info:
        check_esdb_uri(uri)
    assert "changeit" not in str(info.value) and "ss@" not in str(info.value)


@pytest.mark.parametrize(
    ("uri", "described"),
    [
        ("kurrentdb://admin:changeit@db:2113?tls=false", "kurrentdb://admin:***@db:2113"),
        ("kurrentdb+discover://admin:changeit@db", "kurrentdb+discover://admin:***@db"),
    ],
)
def test_kurrentdb_schemes_are_accepted_and_masked(uri: str, described: str) -> None:
    assert check_esdb_uri(uri) == uri
    source = EsdbSource(uri)
    assert described in source.describe() and "changeit" not in source.describe()
    # The same server under either name syncs into the same checkpoint.
    assert source.key == EsdbSource(uri.replace("kurrentdb", "esdb", 1)).key
    assert "changeit" not in source.key and "changeit" not in repr(source)


def test_a_password_with_a_space_is_still_a_valid_uri() -> None:
    source = EsdbSource("esdb://admin:pass word@db:2113?tls=false")
    assert source.describe() == "EventStoreDB esdb://admin:***@db:2113?tls=false (fast reader)"
