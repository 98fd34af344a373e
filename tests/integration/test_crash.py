"""Crash tests with real worker processes: kill -9 under load, and dropped PostgreSQL links.

5,000 tasks, each writing an idempotent effect keyed by its task. Two worker processes are
killed with SIGKILL at random moments 20 times and restarted. Afterwards: every task
succeeded, every effect exists exactly once, nothing is left pending or running, and every
lease the kills orphaned was reaped within the lease timeout (plus one reaper period).
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from legato.store import upgrade

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER_SCRIPT = Path(__file__).with_name("crash_worker.py")
TASKS = 5_000
KILLS = 20
LEASE_SECONDS = 2.0
REAPER_INTERVAL = 0.25
DEADLINE = 90.0


def spawn(mode: str, store_url: str, effects_url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), mode, store_url, effects_url, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class Store:
    """Synchronous read access to the store and the effects, for assertions."""

    def __init__(self, store_url: str, effects_url: str) -> None:
        self.store_url = store_url
        self.effects_url = effects_url

    def _query(self, url: str, sql: str) -> list[tuple[Any, ...]]:
        if url.startswith("sqlite:///"):
            with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30) as connection:
                return connection.execute(sql).fetchall()
        with psycopg.connect(url) as connection:
            return connection.execute(sql).fetchall()

    def states(self) -> dict[str, int]:
        return dict(
            self._query(self.store_url, "SELECT state, count(*) FROM legato_tasks GROUP BY state")
        )  # type: ignore[arg-type]

    def all_registered(self, workers: list[subprocess.Popen[bytes]]) -> bool:
        pids = {row[0] for row in self.query("SELECT pid FROM legato_workers")}
        return all(worker.pid in pids for worker in workers)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self._query(self.store_url, sql)

    def effects(self, sql: str) -> list[tuple[Any, ...]]:
        return self._query(self.effects_url, sql)


def reset_postgres(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS crash_effects, crash_executions")
        connection.execute(
            "TRUNCATE legato_task_events, legato_tasks, legato_workers RESTART IDENTITY CASCADE"
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        store_url = f"sqlite:///{tmp_path / 'legato.db'}"
        upgrade(store_url)
        yield store_url, f"sqlite:///{tmp_path / 'effects.db'}"
    else:
        url: str = request.getfixturevalue("postgres_database")
        reset_postgres(url)
        yield url, url


class ConnectionDropper:
    """Terminates every other server connection to the database, `times` times."""

    def __init__(self, url: str, *, times: int, every: float) -> None:
        self.url = url
        self.database = url.rsplit("/", 1)[1]
        self.times = times
        self.every = every
        self.dropped: list[int] = []
        self.next_at = time.monotonic() + every

    def finished(self) -> bool:
        return len(self.dropped) >= self.times

    def step(self) -> None:
        if self.finished() or time.monotonic() < self.next_at:
            return
        with psycopg.connect(self.url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            ).fetchone()
        self.dropped.append(row[0] if row else 0)
        self.next_at = time.monotonic() + self.every


def run_until_done(
    store: Store,
    workers: list[subprocess.Popen[bytes]],
    rng: random.Random,
    kills: int,
    disrupt: ConnectionDropper | None = None,
) -> list[tuple[int, float]]:
    """Run the workers, killing one at random moments `kills` times; return (pid, time) kills."""
    killed: list[tuple[int, float]] = []
    started = time.monotonic()
    next_kill = time.monotonic() + rng.uniform(0.2, 0.6)
    try:
        while True:
            states = store.states()
            done = states.get("succeeded", 0) == TASKS and len(killed) >= kills
            if done and (disrupt is None or disrupt.finished()):
                return killed
            assert time.monotonic() - started < DEADLINE, f"not done in {DEADLINE}s: {states}"
            now = time.monotonic()
            # Kill only while every worker is registered, so one always lives to reap.
            if len(killed) < kills and now >= next_kill and store.all_registered(workers):
                index = rng.randrange(len(workers))
                victim = workers[index]
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed.append((victim.pid, time.time()))
                workers[index] = spawn("worker", store.store_url, store.effects_url)
                next_kill = now + rng.uniform(0.05, 0.3)
            if disrupt is not None:
                disrupt.step()
            # Wait for the next kill or progress check; the workers do the work meanwhile.
            time.sleep(0.05)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def submit_all(store: Store) -> None:
    submitter = spawn("submit", store.store_url, store.effects_url, str(TASKS))
    assert submitter.wait(timeout=60) == 0
    assert store.states() == {"pending": TASKS}


def assert_every_effect_exactly_once(store: Store) -> None:
    assert store.states() == {"succeeded": TASKS}  # nothing pending, running, dead or lost
    effects = store.effects("SELECT count(*), count(DISTINCT key), sum(n) FROM crash_effects")
    assert effects == [(TASKS, TASKS, TASKS * (TASKS - 1) // 2)]
    doubles = store.query(
        "SELECT task_id FROM legato_task_events WHERE reason = 'succeeded' "
        "GROUP BY task_id HAVING count(*) > 1"
    )
    assert doubles == []


def test_killed_workers_lose_no_task_and_duplicate_no_effect(urls: tuple[str, str]) -> None:
    store = Store(*urls)
    submit_all(store)
    rng = random.Random(20)
    workers = [spawn("worker", *urls) for _ in range(2)]
    kills = run_until_done(store, workers, rng, KILLS)
    assert len(kills) == KILLS
    assert_every_effect_exactly_once(store)
    executions = store.effects("SELECT count(*) FROM crash_executions")[0][0]
    assert executions > TASKS, "no kill interrupted a task: the test proved nothing"
    # Every lease a kill orphaned was reaped within the lease timeout plus a reaper period
    # (and process start-up slack for the restarted worker).
    worker_ids = dict(store.query("SELECT id, pid FROM legato_workers"))
    kill_time = {pid: at for pid, at in kills}
    reaped = store.query("SELECT at, detail FROM legato_task_events WHERE reason = 'lease_expired'")
    assert reaped, "no lease was ever reaped"
    for at, detail in reaped:
        owner = detail.removeprefix("lease held by ").removesuffix(" expired")
        killed_at = kill_time.get(worker_ids.get(owner, -1))
        if killed_at is not None:
            assert at - killed_at <= LEASE_SECONDS + REAPER_INTERVAL * 1.25 + 1.0


def test_dropped_postgres_connections_lose_no_task(postgres_database: str) -> None:
    reset_postgres(postgres_database)
    store = Store(postgres_database, postgres_database)
    submit_all(store)
    dropper = ConnectionDropper(postgres_database, times=8, every=0.4)
    workers = [spawn("worker", postgres_database, postgres_database) for _ in range(2)]
    run_until_done(store, workers, random.Random(3), 0, disrupt=dropper)
    assert dropper.finished()
    assert sum(dropper.dropped) > 0, "no connection was dropped: the test proved nothing"
    assert_every_effect_exactly_once(store)
