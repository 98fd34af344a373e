"""Durable workflow throughput: one-step workflows per second, SQLite or PostgreSQL.

Run: ``python -m benchmarks.workflows --backend sqlite|postgres --workflows 2000``.
Prints one JSON object:

- ``start_one_per_s`` / ``e2e_one_per_s``: one client starting the workflows one at a time
  (one transaction each: workflow row, its run task, a history event) while one worker
  process runs them; e2e is workflows succeeded per second, first start to last success
  (as the issue's peers were measured);
- ``start_concurrent_per_s`` / ``e2e_concurrent_per_s``: the same number of workflows
  started by ``PRODUCERS`` concurrent tasks of the client process, each starting its share
  one at a time: their starts share commits (group commit);
  ``concurrent_start_transactions`` says how many transactions carried them;
- ``start_one_idle_per_s``: starts one at a time with no worker running;
- ``drain_per_s``: those workflows, run by one worker process started afterwards: first
  run to last success, from the store's own timestamps (the worker's capacity alone).

Each workflow is one step, an async no-op, journaled durably (with the workflow's end, in
one committed transaction). One worker process, concurrency 64 (``--concurrency N`` to
change it: an async workflow spends most of its run waiting on the store, so a worker
with more runs in flight keeps both its own CPU and the server's busier). Each figure is
one run on a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks.queue import durability
from legato.kernel.logs import configure_logging
from legato.orchestrator import Orchestrator, WorkerConfig
from legato.orchestrator.workflow import WorkflowEngine
from legato.orchestrator.workflow_context import WorkflowContext
from legato.store import upgrade
from legato.store.workflow_records import WorkflowState

POSTGRES_DSN = os.environ.get(
    "LEGATO_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
CONCURRENCY = 64
PRODUCERS = 64
CONFIG = WorkerConfig(lease_seconds=30.0, poll_interval=0.02, batch_size=256)


async def noop() -> None:
    """The one step: nothing, journaled."""
    return None


def build(store_url: str) -> tuple[Orchestrator, WorkflowEngine]:
    """The benchmark's app and its one workflow."""
    app = Orchestrator(store_url, upgrade=False)
    engine = WorkflowEngine(app)

    @engine.workflow(name="one-step")
    async def one_step(ctx: WorkflowContext, _: None) -> None:
        await ctx.step(noop)

    return app, engine


def run_worker(store_url: str, concurrency: int) -> None:
    """Worker process body."""
    app, _ = build(store_url)
    app.worker_main(["default"], concurrency=concurrency, config=CONFIG)


def spawn_worker(store_url: str, concurrency: int = CONCURRENCY) -> subprocess.Popen[bytes]:
    """Start one worker process on the store."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.workflows",
            "--role",
            "worker",
            "--store",
            store_url,
            "--concurrency",
            str(concurrency),
        ]
    )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker (a clean, draining stop) and wait for it."""
    worker.terminate()
    worker.wait(timeout=30)


async def wait_succeeded(engine: WorkflowEngine, last_id: int, total: int) -> None:
    """Wait until the last started workflow and then `total` workflows have succeeded.

    Polls the last workflow's state by primary key (one statement) and counts only once it
    is done, so the measuring costs the server and this process next to nothing: every
    few milliseconds, a scan of the whole table or a full read of the workflow would be
    load charged to the engine being measured.
    """
    while True:
        rows = await engine.store.database.run(
            "SELECT state FROM legato_workflows WHERE id = ?", (last_id,)
        )
        if rows and rows[0][0] == WorkflowState.SUCCEEDED.value:
            counts = await engine.store.count_by_state()
            if counts.get(WorkflowState.SUCCEEDED, 0) >= total:
                return
        await asyncio.sleep(0.005)


async def wait_registered(app: Orchestrator, within: float = 60.0) -> None:
    """Wait until a worker process has registered."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await app.store.list_workers():
            return
        await asyncio.sleep(0.01)
    raise SystemExit(f"the worker did not register within {within}s")


async def one_at_a_time(store_url: str, workflows: int, concurrency: int) -> dict[str, float]:
    """Start `workflows` one at a time while a worker runs them."""
    worker = spawn_worker(store_url, concurrency)
    try:
        app, engine = build(store_url)
        async with app:
            await wait_registered(app)
            started = time.perf_counter()
            last_id = 0
            for _ in range(workflows):
                last_id = await engine.start("one-step")
            enqueued = time.perf_counter()
            await wait_succeeded(engine, last_id, workflows)
            finished = time.perf_counter()
    finally:
        stop_worker(worker)
    return {
        "start_one_per_s": round(workflows / (enqueued - started)),
        "e2e_one_per_s": round(workflows / (finished - started)),
    }


async def concurrent(
    store_url: str, workflows: int, done_before: int, concurrency: int
) -> dict[str, float]:
    """Start `workflows` from PRODUCERS concurrent tasks while a worker runs them."""
    worker = spawn_worker(store_url, concurrency)
    try:
        app, engine = build(store_url)
        async with app:
            await wait_registered(app)
            group = getattr(engine.store, "start_group", None)
            before = group.stats.transactions if group is not None else 0

            async def producer(count: int) -> int:
                last = 0
                for _ in range(count):
                    last = await engine.start("one-step")
                return last

            shares = [
                workflows // PRODUCERS + (n < workflows % PRODUCERS) for n in range(PRODUCERS)
            ]
            started = time.perf_counter()
            last_id = max(await asyncio.gather(*(producer(share) for share in shares)))
            enqueued = time.perf_counter()
            await wait_succeeded(engine, last_id, done_before + workflows)
            finished = time.perf_counter()
            transactions = (group.stats.transactions if group is not None else workflows) - before
    finally:
        stop_worker(worker)
    return {
        "start_concurrent_per_s": round(workflows / (enqueued - started)),
        "e2e_concurrent_per_s": round(workflows / (finished - started)),
        "producers": PRODUCERS,
        "concurrent_start_transactions": transactions,
    }


async def drain(
    store_url: str, workflows: int, done_before: int, concurrency: int
) -> dict[str, float]:
    """Start `workflows` with no worker, then measure one worker running them all."""
    app, engine = build(store_url)
    async with app:
        started = time.perf_counter()
        last_id = 0
        for _ in range(workflows):
            last_id = await engine.start("one-step")
        start_idle = workflows / (time.perf_counter() - started)
        worker = spawn_worker(store_url, concurrency)
        try:
            await wait_succeeded(engine, last_id, done_before + workflows)
        finally:
            stop_worker(worker)
        rows = await app.store.database.run(
            "SELECT min(e.at), max(w.updated_at) FROM legato_workflows w "
            "JOIN legato_workflow_events e ON e.workflow_id = w.id "
            "WHERE w.id > ? AND e.reason = 'running'",
            (done_before,),
        )
    first_run, last_success = rows[0]
    return {
        "start_one_idle_per_s": round(start_idle),
        "drain_per_s": round(workflows / (last_success - first_run)),
    }


async def measure(
    store_url: str, workflows: int, backend: str, concurrency: int
) -> dict[str, object]:
    """Run both phases on a migrated, empty store and return the figures."""
    result: dict[str, object] = {
        "benchmark": "workflows",
        "backend": backend,
        "workflows": workflows,
        "steps_per_workflow": 1,
        "worker_processes": 1,
        "worker_concurrency": concurrency,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "durability": durability(store_url, backend)
        | {
            "journal": "each step's entry committed durably before the workflow moves on; "
            "the running and succeeded marks without waiting for the flush (replayable)"
        },
    }
    result |= await one_at_a_time(store_url, workflows, concurrency)
    result |= await concurrent(store_url, workflows, workflows, concurrency)
    result |= await drain(store_url, workflows, 2 * workflows, concurrency)
    return result


def main() -> None:
    """Parse the command line, run the benchmark on a fresh database, print JSON."""
    # Logs go to stderr, in this process and its workers: stdout carries only the JSON.
    configure_logging("warning", "console")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workflows", type=int, default=2_000)
    parser.add_argument("--role", choices=["bench", "worker"], default="bench")
    parser.add_argument("--store", default="")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    options = parser.parse_args()
    if options.role == "worker":
        run_worker(options.store, options.concurrency)
        return
    if options.backend == "sqlite":
        directory = tempfile.mkdtemp(prefix="legato-bench-")
        store_url = f"sqlite:///{Path(directory) / 'legato.db'}"
        upgrade(store_url)
        print(
            json.dumps(
                asyncio.run(measure(store_url, options.workflows, "sqlite", options.concurrency))
            )
        )
        return
    name = f"legato_bench_wf_{os.getpid()}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    store_url = POSTGRES_DSN.rpartition("/")[0] + "/" + name
    try:
        upgrade(store_url)
        print(
            json.dumps(
                asyncio.run(measure(store_url, options.workflows, "postgres", options.concurrency))
            )
        )
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
