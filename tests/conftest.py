"""Shared fixtures: the store backends every behavioural test runs against.

`store_url` is parametrized over SQLite (a fresh file per test, copied from a migrated
template) and PostgreSQL (a database created per test module on the server named by
LEGATO_TEST_POSTGRES_DSN, emptied before each test and dropped after the module).
When the PostgreSQL server cannot be reached its tests are skipped with the reason, unless
CI=true, where an unreachable server fails them: CI must never pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import psycopg
import pytest

from legato.kernel.clock import Clock
from legato.store import TaskStore, upgrade

POSTGRES_DSN = os.environ.get(
    "LEGATO_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)

_TABLES = (
    "legato_task_events, legato_tasks, legato_workers, legato_queues, legato_schedules, "
    "legato_workflow_steps, legato_workflow_events, legato_workflows, legato_trading_intents, "
    "legato_trading_orders, legato_trading_fills, legato_trading_positions, "
    "legato_trading_balances, legato_trading_alerts, legato_trading_equity"
)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The DSN of a reachable PostgreSQL server: skip if there is none, fail if CI=true."""
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.Error as error:
        reason = f"PostgreSQL unreachable at {POSTGRES_DSN}: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a missing server fails instead of skipping)")
        pytest.skip(reason)
    return POSTGRES_DSN


def _database_url(server: str, name: str) -> str:
    base, _, _ = server.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="module")
def postgres_database(postgres_server: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A freshly created and migrated database for one test module, dropped afterwards."""
    module = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.lower())[-40:]
    name = f"legato_t_{module}_{os.getpid()}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _database_url(postgres_server, name)
    upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite file; tests copy it instead of migrating each time."""
    path = tmp_path_factory.mktemp("template") / "legato.db"
    upgrade(f"sqlite:///{path}")
    return path


def empty_postgres(url: str) -> None:
    """Delete every row of every Legato table in the database at `url`."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """An empty, migrated store on each backend in turn."""
    if request.param == "sqlite":
        path = tmp_path / "legato.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    empty_postgres(url)
    return url


@pytest.fixture
def open_store(store_url: str) -> Callable[[Clock], AbstractAsyncContextManager[TaskStore]]:
    """`async with open_store(clock) as store:` opens the test's store (already migrated)."""

    @asynccontextmanager
    async def opened(clock: Clock) -> AsyncIterator[TaskStore]:
        store = await TaskStore.open(store_url, upgrade=False, clock=clock)
        try:
            yield store
        finally:
            await store.close()

    return opened


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skip is a failure: CI has every server, browser and data file."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        os.environ.get("CI", "").lower() == "true"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where everything must run: {reason}"


@pytest.fixture
def until() -> Callable[[Callable[[], bool]], Awaitable[None]]:
    """`await until(condition)`: let the loop's other tasks run until `condition` holds.

    No clock time passes: for tests that pile calls up at a known moment (a held connection)
    and need them all queued before going on.
    """

    async def wait(condition: Callable[[], bool]) -> None:
        for _ in range(1_000):
            if condition():
                return
            await asyncio.sleep(0)
        pytest.fail("the condition never held")

    return wait


@pytest.fixture
def connection_held() -> Callable[[TaskStore], AbstractAsyncContextManager[None]]:
    """`async with connection_held(store):` keeps the store's connection in a transaction.

    Calls made meanwhile queue up behind it, so a test knows exactly what a batch will hold.
    """

    @asynccontextmanager
    async def held(store: TaskStore) -> AsyncIterator[None]:
        async with store.database.transaction() as tx:
            await tx.fetch("SELECT 1")
            yield

    return held
