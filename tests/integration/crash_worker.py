"""A worker process for the crash tests: `submit` tasks, or run a `worker` until killed.

    python crash_worker.py submit STORE_URL EFFECTS_URL COUNT
    python crash_worker.py worker STORE_URL EFFECTS_URL
    python crash_worker.py linger STORE_URL EFFECTS_URL SECONDS   (submit one long task)

Each task writes one effect row keyed by its effect key (idempotent: a second write of the
same key changes nothing) and appends one row to an executions log (not idempotent, so the
log shows how often tasks really ran). Then it "works" a little longer, so that kills land
both before and after the effect.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
from typing import Any

import psycopg

from legato.kernel.errors import TransientError
from legato.kernel.retry import Jitter, RetryPolicy
from legato.orchestrator import Orchestrator, TaskContext, WorkerConfig

LEASE_SECONDS = 2.0
CONFIG = WorkerConfig(
    lease_seconds=LEASE_SECONDS, poll_interval=0.05, grace=1.0, reaper_interval=0.25
)
RETRY = RetryPolicy(max_attempts=20, initial_delay=0.05, max_delay=0.2, jitter=Jitter.FULL)

_local = threading.local()


def effects_connection(url: str) -> Any:
    """One connection per worker thread to the effects database."""
    connection = getattr(_local, "connection", None)
    if connection is None:
        if url.startswith("sqlite:///"):
            connection = sqlite3.connect(
                url.removeprefix("sqlite:///"), isolation_level=None, timeout=30
            )
            connection.execute("PRAGMA journal_mode=WAL")
        else:
            connection = psycopg.connect(url, autocommit=True)
        _local.connection = connection
    return connection


def prepare_effects(url: str) -> None:
    """Create the effects and executions tables."""
    connection = effects_connection(url)
    connection.execute("CREATE TABLE IF NOT EXISTS crash_effects (key TEXT PRIMARY KEY, n INTEGER)")
    connection.execute("CREATE TABLE IF NOT EXISTS crash_executions (key TEXT, pid INTEGER)")


def build_app(store_url: str, effects_url: str) -> Orchestrator:
    app = Orchestrator(store_url, upgrade=False)

    @app.task(name="write_effect", retry=RETRY)
    def write_effect(n: int, ctx: TaskContext) -> int:
        placeholder = "?" if effects_url.startswith("sqlite") else "%s"
        try:
            connection = effects_connection(effects_url)
            connection.execute(
                f"INSERT INTO crash_executions (key, pid) VALUES ({placeholder}, {placeholder})",
                (ctx.effect_key, os.getpid()),
            )
            connection.execute(
                f"INSERT INTO crash_effects (key, n) VALUES ({placeholder}, {placeholder}) "
                "ON CONFLICT (key) DO NOTHING",
                (ctx.effect_key, n),
            )
        except (psycopg.OperationalError, sqlite3.OperationalError) as error:
            # The effects database dropped us too: reconnect on the next attempt.
            _local.connection = None
            raise TransientError(f"effects database: {error}") from error
        # The rest of the task's work: kills during it force a redelivery after the effect.
        time.sleep(0.005)
        return n

    @app.task(name="linger")
    async def linger(seconds: float) -> None:
        await asyncio.sleep(seconds)

    return app


def main(argv: list[str]) -> None:
    mode, store_url, effects_url = argv[:3]
    app = build_app(store_url, effects_url)
    if mode == "submit":
        prepare_effects(effects_url)
        count = int(argv[3])

        async def submit() -> None:
            async with app:
                calls = [app.call("write_effect", n) for n in range(count)]
                for start in range(0, count, 1000):
                    await app.submit_many(calls[start : start + 1000])

        asyncio.run(submit())
    elif mode == "linger":

        async def submit_one() -> None:
            async with app:
                await app.submit("linger", float(argv[3]))

        asyncio.run(submit_one())
    else:
        app.worker_main(["default"], concurrency=8, config=CONFIG)


if __name__ == "__main__":
    main(sys.argv[1:])
