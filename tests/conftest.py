"""Shared fixtures. Integration tests find the services `make test` started through
PM_TEST_KAFKA_BROKERS, PM_TEST_DATABASE_URL, PM_TEST_REDIS_URL and PM_TEST_TIMESCALE_URL; with
PM_REQUIRE_SERVICES=1 (as `make test` sets) a missing address is an error instead of a skip."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SERVICE_ENV = (
    "PM_TEST_KAFKA_BROKERS",
    "PM_TEST_DATABASE_URL",
    "PM_TEST_REDIS_URL",
    "PM_TEST_TIMESCALE_URL",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PM_REQUIRE_SERVICES") != "1":
        return
    missing = [name for name in SERVICE_ENV if not os.environ.get(name)]
    if missing and any(item.get_closest_marker("integration") for item in items):
        raise pytest.UsageError(f"PM_REQUIRE_SERVICES=1 but {missing} unset: run `make test`")


@pytest.fixture(autouse=True)
def _no_pm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built in tests start from the defaults, whatever the shell exports."""
    for name in list(os.environ):
        if name.startswith("PM_") and not name.startswith(("PM_TEST_", "PM_REQUIRE", "PM_BENCH")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def admin_url() -> str:
    """The PostgreSQL the services script started (a role that may CREATE DATABASE)."""
    url = os.environ.get("PM_TEST_DATABASE_URL")
    if not url:
        pytest.skip("PM_TEST_DATABASE_URL is not set: no PostgreSQL server to test against")
    return url


@pytest.fixture
def fresh_db(admin_url: str) -> Iterator[str]:
    """DSN of a new, empty database (dropped after the test)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"pm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        drop_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE ... WITH (FORCE), retried while an autovacuum worker (which the pm role
    may not terminate) is still in it."""
    import time

    import psycopg
    from psycopg import sql

    for attempt in range(20):
        try:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            return
        except psycopg.errors.InsufficientPrivilege:
            if attempt == 19:
                raise
            time.sleep(0.5)


@pytest.fixture
def fresh_tsdb() -> Iterator[str]:
    """DSN of the TimescaleDB test server (PM_TEST_TIMESCALE_URL), emptied, for this test only.

    The server (infra/scripts/timescaledb.sh) has one in-memory database and no COPY: use it
    for the schema and queries, not for the COPY writer. It serves one session at a time:
    a second connection opened while one is open waits (up to 60 s) for the first to close.
    """
    from tests.timescale import exclusive, reset

    url = os.environ.get("PM_TEST_TIMESCALE_URL")
    if not url:
        pytest.skip("PM_TEST_TIMESCALE_URL is not set: no TimescaleDB server to test against")
    with exclusive(url):
        reset(url)
        yield url


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small but real model bundle (turbofan + pump), trained once per test session
    (``PM_TEST_MODEL_DIR`` names one trained before by this fixture, to iterate faster)."""
    from models.train import main

    reuse = os.environ.get("PM_TEST_MODEL_DIR")
    if reuse and Path(reuse).is_dir():
        return Path(reuse)
    out = tmp_path_factory.mktemp("model") / "bundle"
    args = ["--units", "40", "--folds", "0", "--max-iter", "120", "--no-mlflow"]
    assert main([*args, "--seed", "11", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def private_pg() -> Iterator[Any]:
    """A PostgreSQL of the module's own (infra/scripts/postgres.sh on a free port, fresh),
    for tests that stop it; stopped and removed afterwards, whatever happened."""
    from tests.private_services import PrivateServices

    svc = PrivateServices()
    try:
        svc.start("postgres", fresh=True)
        yield svc
    finally:
        svc.close()
