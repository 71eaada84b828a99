"""PostgreSQL for tests: the server's URL, and a fresh database per test that is dropped afterwards.

Registered in ``tests/conftest.py`` (``pytest_plugins``). The server comes from
``SOILMOISTURE_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``, a role allowed
to create databases). Where no server answers the tests that need it are skipped with the reason; with
``SOILMOISTURE_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) that skip is a failure, so CI cannot pass silently
without them.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

URL_ENV = "SOILMOISTURE_TEST_POSTGRES_URL"
REQUIRE_ENV = "SOILMOISTURE_REQUIRE_POSTGRES"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# A user's shared study must never receive test trials (conftest.py drops MLFLOW_TRACKING_URI likewise).
os.environ.pop("SOILMOISTURE_OPTUNA_STORAGE", None)


def with_database(url: str, name: str, user: str | None = None, password: str | None = None) -> str:
    """``url`` pointing at database ``name`` (optionally as another user/password), password kept in clear."""
    from sqlalchemy.engine import make_url

    u = make_url(url).set(database=name)
    if user is not None:
        u = u.set(username=user, password=password)
    return u.render_as_string(hide_password=False)


def admin_execute(url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE cannot run inside one)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conn = psycopg2.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                            dbname=u.database or "postgres", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL (a role that may create databases); skip, or fail under CI, when it does not answer."""
    from soilmoisture.tracking import mask_url

    url = os.environ.get(URL_ENV, DEFAULT_URL)
    try:
        admin_execute(url, "select 1")
    except Exception as e:  # psycopg2.OperationalError and friends: the server is not there
        reason = f"PostgreSQL at {mask_url(url)} ({URL_ENV}) does not answer: {' '.join(str(e).split())}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} and {REQUIRE_ENV}=1")
        pytest.skip(reason)
    return url


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database ``sm_test_<random>``; its URL. Dropped afterwards, also when the test fails."""
    name = f"sm_test_{uuid.uuid4().hex[:12]}"
    admin_execute(postgres_url, f'create database "{name}"')
    try:
        yield with_database(postgres_url, name)
    finally:
        # WITH (FORCE): a killed worker or a server still holding connections must not keep the database alive.
        admin_execute(postgres_url, f'drop database if exists "{name}" with (force)')
