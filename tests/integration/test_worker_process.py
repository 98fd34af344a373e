"""A worker process stopped with SIGTERM releases unfinished work and deregisters."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from legato.store import upgrade

pytestmark = pytest.mark.integration

WORKER_SCRIPT = Path(__file__).with_name("crash_worker.py")
GRACE = 1.0  # crash_worker.CONFIG.grace


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path, timeout=30) as connection:
        return connection.execute(sql).fetchall()


def wait_for(path: Path, sql: str, expected: object, within: float) -> None:
    """Poll the store until `sql` returns `expected` (the worker process works meanwhile)."""
    deadline = time.monotonic() + within
    while query(path, sql) != expected:
        assert time.monotonic() < deadline, f"{sql!r} never returned {expected!r}"
        time.sleep(0.05)


def test_sigterm_releases_running_tasks_within_the_grace_period_and_deregisters(
    tmp_path: Path,
) -> None:
    database = tmp_path / "legato.db"
    url = f"sqlite:///{database}"
    upgrade(url)
    effects = f"sqlite:///{tmp_path / 'effects.db'}"
    submitter = subprocess.run(
        [sys.executable, str(WORKER_SCRIPT), "linger", url, effects, "600"], check=True
    )
    assert submitter.returncode == 0
    worker = subprocess.Popen([sys.executable, str(WORKER_SCRIPT), "worker", url, effects])
    try:
        wait_for(database, "SELECT state FROM legato_tasks", [("running",)], within=30)
        stopped_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        # Drained for the grace period, then released: well before the task's 600 s.
        assert time.monotonic() - stopped_at < GRACE + 5
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert query(database, "SELECT state, attempts, lease_owner FROM legato_tasks") == [
        ("pending", 0, None)
    ]
    reasons = [
        row[0] for row in query(database, "SELECT reason FROM legato_task_events ORDER BY id")
    ]
    assert reasons == ["claimed", "released"]
    assert query(database, "SELECT state FROM legato_workers") == [("stopped",)]
