"""Prefect for the test session: ONE temporary API (``prefect_test_harness``) shared by every flow test.

Registered in ``tests/conftest.py`` (``pytest_plugins``). ``PREFECT_HOME`` points at a private temporary
folder before Prefect is first imported, so tests never touch ``~/.prefect`` or a user's profile/server.
Flow tests request the ``prefect_harness`` fixture; starting the API costs ~10 s, once per session.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

_HOME = tempfile.mkdtemp(prefix="prefect-home-")
os.environ["PREFECT_HOME"] = _HOME
os.environ.pop("PREFECT_API_URL", None)         # never talk to a real server from tests
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect API and database for the whole session (STACK-NOTES: per test is too slow)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)
