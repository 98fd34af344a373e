"""Task queue throughput and latency, SQLite or PostgreSQL.

Run: ``python -m benchmarks.queue --backend sqlite|postgres --tasks 10000 --workers 1|2``.
Prints one JSON object:

- ``enqueue_one_per_s``: one client submitting the tasks one at a time (one transaction
  each) while the worker processes run; ``e2e_one_per_s``: tasks completed per second over
  that same run, first submit to last completion (how the peers in issue 3 were measured);
- ``enqueue_batch_per_s`` / ``e2e_batch_per_s``: the same with ``submit_many`` in batches
  of 1,000;
- ``enqueue_concurrent_per_s`` / ``e2e_concurrent_per_s``: ``PRODUCERS`` tasks of the
  client process each submitting its share one at a time, concurrently (a web server's
  request handlers, say): their submits share commits (group commit), and
  ``concurrent_submit_transactions`` says how many transactions carried them;
- ``paced_*``: 1,000 tasks submitted at 200/s; latency is the task's ``finished_at`` minus
  its ``created_at`` (enqueue to completion, both stamped by the store's callers). For
  SQLite the paced worker runs in the submitting process, woken by the in-process
  notification; for PostgreSQL it is a separate process woken by LISTEN/NOTIFY.

Tasks are ``async`` no-ops. Each figure is one run on a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from legato.kernel.logs import configure_logging
from legato.orchestrator import Orchestrator, TaskState, WorkerConfig
from legato.store import upgrade

POSTGRES_DSN = os.environ.get(
    "LEGATO_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
CONCURRENCY = 64
PRODUCERS = 64
CONFIG = WorkerConfig(lease_seconds=30.0, poll_interval=0.02, batch_size=256)
PACED_TASKS = 1_000
PACED_RATE = 200.0


def build_app(store_url: str) -> Orchestrator:
    """The benchmark's app: one no-op task."""
    app = Orchestrator(store_url, upgrade=False)

    @app.task(name="noop")
    async def noop() -> None:
        """Do nothing: the benchmark measures the engine, not the work."""
        return None

    return app


def run_worker(store_url: str) -> None:
    """Worker process body."""
    build_app(store_url).worker_main(["default"], concurrency=CONCURRENCY, config=CONFIG)


async def wait_all_done(app: Orchestrator, last_id: int, total: int) -> None:
    """Wait until the last submitted task and then `total` tasks have succeeded.

    Polls the last task by primary key (microseconds for the server), and counts only once
    it is done: a count every few milliseconds would cost the server a scan of the whole
    table each time, load that would be charged to the engine being measured.
    """
    while True:
        record = await app.store.get_task(last_id, history=False)
        if record is not None and record.state is TaskState.SUCCEEDED:
            counts = await app.store.count_by_state()
            if counts.get(TaskState.SUCCEEDED, 0) >= total:
                return
        await asyncio.sleep(0.005)


async def wait_workers(app: Orchestrator, count: int, within: float = 60.0) -> None:
    """Wait until `count` worker processes have registered (they poll nothing until then)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if len(await app.store.list_workers()) >= count:
            return
        await asyncio.sleep(0.01)
    raise SystemExit(f"workers did not register within {within}s")


async def throughput(store_url: str, tasks: int, mode: str) -> dict[str, float]:
    """Submit `tasks` while workers run: enqueue/s and e2e/s for `mode`.

    Modes: "one" (one client, one submit at a time), "batch" (`submit_many` of 1,000),
    "concurrent" (PRODUCERS tasks, each submitting its share one at a time).
    """
    app = build_app(store_url)
    async with app:
        done_before = (await app.store.count_by_state()).get(TaskState.SUCCEEDED, 0)
        group = getattr(app.store, "submit_group", None)
        transactions_before = group.stats.transactions if group is not None else 0
        started = time.perf_counter()
        last_id = 0
        if mode == "batch":
            for offset in range(0, tasks, 1000):
                count = min(1000, tasks - offset)
                last_id = (await app.submit_many([app.call("noop") for _ in range(count)]))[-1]
        elif mode == "one":
            for _ in range(tasks):
                last_id = await app.submit("noop")
        else:

            async def producer(count: int) -> int:
                last = 0
                for _ in range(count):
                    last = await app.submit("noop")
                return last

            shares = [tasks // PRODUCERS + (n < tasks % PRODUCERS) for n in range(PRODUCERS)]
            last_id = max(await asyncio.gather(*(producer(share) for share in shares)))
        enqueued = time.perf_counter()
        await wait_all_done(app, last_id, done_before + tasks)
        finished = time.perf_counter()
        transactions = (group.stats.transactions if group is not None else tasks) - (
            transactions_before
        )
    figures = {
        f"enqueue_{mode}_per_s": round(tasks / (enqueued - started)),
        f"e2e_{mode}_per_s": round(tasks / (finished - started)),
    }
    if mode == "concurrent":
        figures |= {"producers": PRODUCERS, "concurrent_submit_transactions": transactions}
    return figures


async def paced(store_url: str, in_process_worker: bool) -> dict[str, float]:
    """Submit PACED_TASKS at PACED_RATE; return p50/p99 enqueue-to-completion in ms."""
    app = build_app(store_url)
    async with app:
        worker = app.worker(["default"], concurrency=CONCURRENCY, config=CONFIG)
        ids: list[int] = []
        async with asyncio.TaskGroup() as group:
            if in_process_worker:
                group.create_task(worker.run())
                await worker.ready.wait()
            start = time.perf_counter()
            for index in range(PACED_TASKS):
                delay = start + index / PACED_RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                ids.append(await app.submit("noop"))
            while True:
                records = await app.store.list_tasks(
                    states=[TaskState.SUCCEEDED], limit=10 * PACED_TASKS, after_id=ids[0] - 1
                )
                mine = [r for r in records if r.task_id in set(ids)]
                if len(mine) == PACED_TASKS:
                    break
                await asyncio.sleep(0.01)
            worker.stop()
    latencies = sorted((r.finished_at or 0.0) - r.created_at for r in mine)
    return {
        "paced_tasks": PACED_TASKS,
        "paced_rate_per_s": PACED_RATE,
        "paced_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "paced_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "paced_max_ms": round(latencies[-1] * 1000, 3),
    }


def durability(store_url: str, backend: str) -> dict[str, str]:
    """What a commit promises in this run (the server's settings and the engine's choices),
    and whether the server vacuums its tables as they churn (autovacuum)."""
    if backend == "sqlite":
        return {
            "journal_mode": "wal",
            "synchronous": "normal (every commit survives a process crash; an OS crash or "
            "power loss may drop the last ones)",
            "submits": "committed before submit returns",
            "claims_and_completions": "committed in the same file, same settings",
        }
    with psycopg.connect(store_url, autocommit=True) as connection:
        settings: dict[str, str] = dict(
            connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method', "
                "'autovacuum')"
            ).fetchall()
        )
    return {
        **{f"server_{name}": value for name, value in sorted(settings.items())},
        "submits": "durable commit (waits for the WAL flush) before submit returns",
        "claims_and_completions": "synchronous_commit=off for that transaction only (a server "
        "crash may forget the last ones: the task runs again)",
    }


def spawn_workers(store_url: str, count: int) -> list[subprocess.Popen[bytes]]:
    """Start `count` worker processes on the store."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.queue", "--role", "worker", "--store", store_url]
        )
        for _ in range(count)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM the workers (a clean, draining stop) and wait for them."""
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=30)


async def measure(store_url: str, tasks: int, workers: int, backend: str) -> dict[str, object]:
    """Run every phase on a migrated, empty store and return the figures."""
    result: dict[str, object] = {
        "benchmark": "queue",
        "backend": backend,
        "tasks": tasks,
        "worker_processes": workers,
        "worker_concurrency": CONCURRENCY,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "durability": durability(store_url, backend),
    }
    processes = spawn_workers(store_url, workers)
    try:
        app = build_app(store_url)
        async with app:
            await wait_workers(app, workers)
        for mode in ("one", "batch", "concurrent"):
            result |= await throughput(store_url, tasks, mode)
        if backend == "postgres":
            result |= await paced(store_url, in_process_worker=False)
    finally:
        stop_workers(processes)
    if backend == "sqlite":
        result |= await paced(store_url, in_process_worker=True)
        result["paced_worker"] = "in the submitting process (in-process wake-up)"
    else:
        result["paced_worker"] = "separate process (LISTEN/NOTIFY wake-up)"
    return result


def main() -> None:
    """Parse the command line, set up a fresh database, print the JSON result."""
    # Logs go to stderr, in this process and its workers: stdout carries only the JSON.
    configure_logging("warning", "console")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, choices=[1, 2], default=1)
    parser.add_argument("--workflow", action="store_true")
    parser.add_argument("--role", choices=["bench", "worker"], default="bench")
    parser.add_argument("--store", default="")
    options = parser.parse_args()
    if options.role == "worker":
        run_worker(options.store)
        return
    if options.workflow:
        # One-step durable workflows are measured by benchmarks/workflows.py (same backends,
        # one JSON object); --tasks is the number of workflows.
        command = [sys.executable, "-m", "benchmarks.workflows", "--backend", options.backend]
        sys.exit(subprocess.call([*command, "--workflows", str(options.tasks)]))
    if options.backend == "sqlite":
        directory = tempfile.mkdtemp(prefix="legato-bench-")
        store_url = f"sqlite:///{Path(directory) / 'legato.db'}"
        upgrade(store_url)
        print(json.dumps(asyncio.run(measure(store_url, options.tasks, options.workers, "sqlite"))))
        return
    name = f"legato_bench_{os.getpid()}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    store_url = POSTGRES_DSN.rpartition("/")[0] + "/" + name
    try:
        upgrade(store_url)
        print(
            json.dumps(asyncio.run(measure(store_url, options.tasks, options.workers, "postgres")))
        )
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
