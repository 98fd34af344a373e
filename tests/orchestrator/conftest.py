"""Fixtures for orchestrator tests: an app on the test's clock and backend, and a worker runner."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from legato.kernel.clock import Clock
from legato.orchestrator import Orchestrator, Resources, Worker, WorkerConfig

FAST = WorkerConfig(lease_seconds=6.0, poll_interval=0.5, grace=2.0, reaper_interval=1.0)
"""Short timings so lease expiries and retries take a few virtual seconds."""


@pytest.fixture
def app(store_url: str, clock: Clock) -> Orchestrator:
    """An orchestrator on the test's backend and clock, with seeded randomness."""
    return Orchestrator(store_url, clock=clock, rng=random.Random(7), upgrade=False)


RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]


@pytest.fixture
def worker_config() -> WorkerConfig:
    """The timings `running_worker` uses unless told otherwise."""
    return FAST


@pytest.fixture
def running_worker(app: Orchestrator) -> RunWorker:
    """`async with running_worker(queues=..., concurrency=...) as worker:` runs a worker."""

    @asynccontextmanager
    async def run(
        queues: Sequence[str] = ("default",),
        concurrency: int = 4,
        config: WorkerConfig = FAST,
        resources: Resources | None = None,
    ) -> AsyncIterator[Worker]:
        worker = app.worker(queues, concurrency=concurrency, config=config, resources=resources)
        async with asyncio.TaskGroup() as group:
            group.create_task(worker.run(), name="test-worker")
            try:
                yield worker
            finally:
                worker.stop()

    return run


WaitUntil = Callable[..., Awaitable[Any]]


@pytest.fixture
def wait_until(clock: Clock) -> WaitUntil:
    """`await wait_until(condition, within=s)` polls an async condition on the test's clock."""

    async def wait(
        condition: Callable[[], Awaitable[Any]], *, within: float, step: float = 0.05
    ) -> Any:
        deadline = clock.monotonic() + within
        while True:
            value = await condition()
            if value:
                return value
            if clock.monotonic() >= deadline:
                pytest.fail(f"condition not met within {within}s of clock time")
            await clock.sleep(step)

    return wait
