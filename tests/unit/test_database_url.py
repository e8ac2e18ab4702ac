"""Every DSN form outbox accepts names the same database, on psycopg 3; anything else is
refused with a reason that never shows the password."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import psycopg.conninfo
import pytest

from outbox import ConfigurationError
from outbox.database import libpq_dsn, sqlalchemy_url

SECRET = "s3cr3t-pw"


def _params(dsn: str) -> dict[str, object]:
    """What libpq itself reads from a DSN."""
    return dict(psycopg.conninfo.conninfo_to_dict(dsn))


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://u:{SECRET}@h:5432/db",
        f"postgres://u:{SECRET}@h:5432/db",
        f"postgresql+psycopg://u:{SECRET}@h:5432/db",
    ],
)
def test_url_forms_become_one_psycopg_url(dsn: str) -> None:
    url = sqlalchemy_url(dsn)
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "u",
        SECRET,
        "h",
        5432,
        "db",
    )


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://u:{SECRET}@h:5432/db",
        f"postgres://u:{SECRET}@h:5432/db",
        f"postgresql+psycopg://u:{SECRET}@h:5432/db",
        f"host=h port=5432 dbname=db user=u password={SECRET}",
    ],
)
def test_libpq_dsn_is_a_postgresql_url_libpq_reads_as_the_same_database(dsn: str) -> None:
    text = libpq_dsn(dsn)
    assert text.startswith("postgresql://")
    assert _params(text) == {
        "host": "h",
        "port": "5432",
        "dbname": "db",
        "user": "u",
        "password": SECRET,
    }


def test_libpq_dsn_keeps_the_password_for_connecting() -> None:
    assert SECRET in libpq_dsn(f"postgresql://u:{SECRET}@h/db")


def test_url_without_port_has_no_port() -> None:
    assert sqlalchemy_url("postgresql://u@h/db").port is None


def test_percent_encoded_password_survives() -> None:
    assert sqlalchemy_url("postgresql://u:p%40ss@h/db").password == "p@ss"
    assert _params(libpq_dsn("postgresql://u:p%40ss@h/db"))["password"] == "p@ss"


def test_keyword_dsn_becomes_a_psycopg_url() -> None:
    url = sqlalchemy_url(f"host=h port=6543 dbname=app user=u password={SECRET} sslmode=require")
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "u",
        SECRET,
        "h",
        6543,
        "app",
    )
    assert dict(url.query) == {"sslmode": "require"}


def test_keyword_dsn_with_a_socket_folder_carries_it_as_the_host_query() -> None:
    """As libpq URLs do: in the host part, '/tmp' would be read as part of the path."""
    url = sqlalchemy_url("host=/tmp dbname=x user=u")
    assert (url.host, url.query["host"], url.database, url.username) == (None, "/tmp", "x", "u")


def test_libpq_dsn_of_a_keyword_dsn_with_a_socket_folder_names_the_same_database() -> None:
    assert _params(libpq_dsn("host=/tmp dbname=x user=u")) == {
        "host": "/tmp",
        "dbname": "x",
        "user": "u",
    }


def test_socket_url_keeps_its_host_folder() -> None:
    dsn = "postgresql://u@/db?host=/var/run/postgresql"
    url = sqlalchemy_url(dsn)
    assert url.query["host"] == "/var/run/postgresql"
    assert url.database == "db"
    assert _params(libpq_dsn(dsn)) == {"user": "u", "dbname": "db", "host": "/var/run/postgresql"}


def test_query_options_are_kept() -> None:
    dsn = "postgresql://u@h/db?sslmode=require&application_name=shop"
    assert _params(libpq_dsn(dsn)) == {
        "user": "u",
        "host": "h",
        "dbname": "db",
        "sslmode": "require",
        "application_name": "shop",
    }


def test_surrounding_whitespace_is_ignored() -> None:
    assert sqlalchemy_url("  postgresql://u@h/db\n").database == "db"


@pytest.mark.parametrize("dsn", ["", "   ", "\n"])
def test_empty_dsn_is_refused_saying_where_to_set_one(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="the DSN is empty; set OUTBOX_DSN or pass --dsn"):
        sqlalchemy_url(dsn)


@pytest.mark.parametrize(
    ("dsn", "scheme"),
    [
        (f"mysql://u:{SECRET}@h/db", "mysql"),
        (f"postgresql+asyncpg://u:{SECRET}@h/db", r"postgresql\+asyncpg"),
        (f"postgresql+psycopg2://u:{SECRET}@h/db", r"postgresql\+psycopg2"),
        (f"sqlite:///{SECRET}.db", "sqlite"),
    ],
)
def test_other_scheme_is_refused_naming_the_supported_ones(dsn: str, scheme: str) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"^DSN scheme '{scheme}' is not supported: use postgresql:// or "
        r"postgresql\+psycopg:// \(outbox runs on psycopg 3\)$",
    ) as refused:
        sqlalchemy_url(dsn)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        ("garbage", 'cannot read DSN \'garbage\': missing "=" after "garbage"'),
        (
            f"host=h password={SECRET} garbage",
            "cannot read DSN 'host=h password=\\*\\*\\* garbage'",
        ),
        (f"host=h password='{SECRET}", "unterminated quoted string"),
        ("://", "cannot read DSN '://' as a URL"),
    ],
)
def test_unreadable_dsn_is_refused_without_showing_the_password(dsn: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as refused:
        sqlalchemy_url(dsn)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize("convert", [sqlalchemy_url, libpq_dsn])
@pytest.mark.parametrize("dsn", ["", f"mysql://u:{SECRET}@h/db", "garbage", "://"])
def test_both_forms_refuse_the_same_dsns(convert: Callable[[str], object], dsn: str) -> None:
    with pytest.raises(ConfigurationError):
        convert(dsn)


@pytest.mark.parametrize(
    "dsn",
    [f"postgresql://u:{SECRET}@h:notaport/db", f"host=h port=abc password={SECRET}"],
    ids=["url", "keywords"],
)
def test_dsn_with_a_port_that_is_not_a_number_is_refused_with_reason(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="port") as refused:
        sqlalchemy_url(dsn)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    "dsn",
    ["host=a,b port=5432,5433 dbname=x", "postgresql://u@h1:5432,h2:5433/db"],
    ids=["keywords", "url"],
)
def test_multi_host_dsn_is_accepted_or_refused_clearly(dsn: str) -> None:
    with contextlib.suppress(ConfigurationError):
        sqlalchemy_url(dsn)
