"""Workflows under kill -9, with real worker processes, on SQLite and PostgreSQL.

Four-step workflows whose steps write idempotent effects (keyed by the step's effect key)
and log every execution. A crash plan makes a step stop at a chosen point (before its
effect, after its effect but before the journal, inside a compensation) the first time it
gets there; the test then kills the worker with SIGKILL and starts a new one. Afterwards:
every planned point was reached (the kills happened where intended), every effect exists
exactly once, the workflows ended as they should, and compensations ran in reverse order.

This module is also the worker process: `python test_workflow_crash.py STORE EFFECTS`.
"""

from __future__ import annotations

import asyncio
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

from legato.kernel.errors import PermanentError
from legato.kernel.retry import Jitter, RetryPolicy
from legato.orchestrator import Orchestrator, WorkerConfig
from legato.orchestrator.workflow import WorkflowEngine
from legato.orchestrator.workflow_context import WorkflowContext, current_step
from legato.store import upgrade

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = WorkerConfig(lease_seconds=1.0, poll_interval=0.05, grace=0.5, reaper_interval=0.2)
DEADLINE = 45.0


# ---------------------------------------------------------------- the outside world


def effects_connection(url: str) -> Any:
    if url.startswith("sqlite:///"):
        return sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
    return psycopg.connect(url, autocommit=True)


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        sql = sql.replace("%s", "?")
    connection = effects_connection(url)
    try:
        cursor = connection.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description is not None else []
    finally:
        connection.close()


def prepare_effects(url: str) -> None:
    for statement in (
        "DROP TABLE IF EXISTS wf_effects",
        "DROP TABLE IF EXISTS wf_executions",
        "DROP TABLE IF EXISTS wf_plan",
        "CREATE TABLE wf_effects (key TEXT PRIMARY KEY, workflow_id INTEGER, label TEXT, "
        "seq INTEGER)",
        "CREATE TABLE wf_executions (workflow_id INTEGER, label TEXT)",
        "CREATE TABLE wf_plan (workflow_id INTEGER, point TEXT, state TEXT)",
    ):
        query(url, statement)


def pause_if_planned(url: str, workflow_id: int, point: str) -> None:
    """Stop here for good if the plan says so (the first time only): the test kills us."""
    hit = query(
        url,
        "UPDATE wf_plan SET state = 'paused' WHERE workflow_id = %s AND point = %s "
        "AND state = 'armed' RETURNING point",
        (workflow_id, point),
    )
    if hit:
        time.sleep(3600)


def record_effect(url: str, label: str) -> None:
    step = current_step()
    query(
        url,
        "INSERT INTO wf_executions (workflow_id, label) VALUES (%s, %s)",
        (step.workflow_id, label),
    )
    query(
        url,
        "INSERT INTO wf_effects (key, workflow_id, label, seq) VALUES (%s, %s, %s, "
        "(SELECT count(*) FROM wf_effects)) ON CONFLICT (key) DO NOTHING",
        (step.effect_key, step.workflow_id, label),
    )


def build_engine(store_url: str, effects_url: str) -> tuple[Orchestrator, WorkflowEngine]:
    app = Orchestrator(store_url, upgrade=False)
    engine = WorkflowEngine(
        app, step_retry=RetryPolicy(max_attempts=1, initial_delay=0.0, jitter=Jitter.NONE)
    )

    def do_step(n: int, fail_at: int) -> int:
        workflow_id = current_step().workflow_id
        pause_if_planned(effects_url, workflow_id, f"before:{n}")
        if n == fail_at:
            raise PermanentError(f"step {n} refused")
        record_effect(effects_url, f"step{n}")
        pause_if_planned(effects_url, workflow_id, f"after:{n}")
        return n

    def undo_step(n: int) -> None:
        pause_if_planned(effects_url, current_step().workflow_id, f"undo:{n}")
        record_effect(effects_url, f"undo{n}")

    @engine.workflow(name="four-steps")
    async def four_steps(ctx: WorkflowContext, spec: dict[str, int]) -> int:
        total = 0
        for n in (1, 2, 3, 4):
            total += await ctx.step(
                do_step, n, spec.get("fail_at", 0), name=f"step{n}", compensate=undo_step
            )
        return total

    return app, engine


def worker_main(store_url: str, effects_url: str) -> None:
    app, _ = build_engine(store_url, effects_url)
    app.worker_main(["default"], concurrency=8, config=CONFIG)


# ---------------------------------------------------------------- the test


def spawn(store_url: str, effects_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, store_url, effects_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        store_url = f"sqlite:///{tmp_path / 'legato.db'}"
        upgrade(store_url)
        effects_url = f"sqlite:///{tmp_path / 'effects.db'}"
        query(effects_url, "PRAGMA journal_mode=WAL")
        yield store_url, effects_url
    else:
        url: str = request.getfixturevalue("postgres_database")
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(
                "TRUNCATE legato_task_events, legato_tasks, legato_workers, "
                "legato_workflow_steps, legato_workflow_events, legato_workflows "
                "RESTART IDENTITY CASCADE"
            )
        yield url, url


def start_workflows(store_url: str, effects_url: str, specs: list[dict[str, int]]) -> list[int]:
    app, engine = build_engine(store_url, effects_url)

    async def start() -> list[int]:
        async with app:
            return [await engine.start("four-steps", spec) for spec in specs]

    return asyncio.run(start())


def workflow_states(store_url: str, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    rows = query(store_url, "SELECT id, state, result FROM legato_workflows")
    return {row[0]: (row[1], row[2]) for row in rows if row[0] in ids}


def test_killed_workflows_resume_with_each_effect_exactly_once(urls: tuple[str, str]) -> None:
    store_url, effects_url = urls
    prepare_effects(effects_url)
    between, after_effect, failing = start_workflows(
        store_url, effects_url, [{}, {}, {"fail_at": 3}]
    )
    plan = [
        # Killed between each pair of steps: step n journaled, step n+1 not yet started.
        (between, "before:2"),
        (between, "before:3"),
        (between, "before:4"),
        # Killed after a step's effect, before its journal entry: the step runs again.
        (after_effect, "after:2"),
        # Killed before a step, then (after its failure) in the middle of compensating.
        (failing, "before:2"),
        (failing, "undo:1"),
    ]
    for workflow_id, point in plan:
        query(effects_url, "INSERT INTO wf_plan VALUES (%s, %s, 'armed')", (workflow_id, point))
    ids = [between, after_effect, failing]
    worker = spawn(store_url, effects_url)
    kills = 0
    started = time.monotonic()
    try:
        while True:
            states = workflow_states(store_url, ids)
            if all(state in ("succeeded", "compensated", "dead") for state, _ in states.values()):
                break
            assert time.monotonic() - started < DEADLINE, f"not done in {DEADLINE}s: {states}"
            if query(effects_url, "SELECT point FROM wf_plan WHERE state = 'paused'"):
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                kills += 1
                query(effects_url, "UPDATE wf_plan SET state = 'killed' WHERE state = 'paused'")
                worker = spawn(store_url, effects_url)
            time.sleep(0.05)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert (
        query(effects_url, "SELECT workflow_id, point, state FROM wf_plan WHERE state <> 'killed'")
        == []
    )
    # Workflows paused at the same time share a kill; `between` alone needs three.
    assert 3 <= kills <= len(plan)
    assert states == {
        between: ("succeeded", "10"),
        after_effect: ("succeeded", "10"),
        failing: ("compensated", None),
    }
    effects = query(
        effects_url, "SELECT workflow_id, label FROM wf_effects ORDER BY workflow_id, seq"
    )
    assert effects == [
        (between, "step1"),
        (between, "step2"),
        (between, "step3"),
        (between, "step4"),
        (after_effect, "step1"),
        (after_effect, "step2"),
        (after_effect, "step3"),
        (after_effect, "step4"),
        (failing, "step1"),
        (failing, "step2"),
        (failing, "undo2"),  # reverse order
        (failing, "undo1"),
    ]
    executions = dict(
        query(
            effects_url,
            "SELECT label, count(*) FROM wf_executions WHERE workflow_id = %s GROUP BY label",
            (after_effect,),
        )
    )
    assert executions["step2"] >= 2, "the kill after the effect did not make the step run again"


if __name__ == "__main__":
    worker_main(sys.argv[1], sys.argv[2])
