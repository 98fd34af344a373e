"""Fixtures for service tests: an app over an orchestrator on the test's clock and backend."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from legato.kernel.bus import MessageBus
from legato.kernel.clock import Clock
from legato.kernel.ratelimit import RateLimiter
from legato.kernel.settings import LegatoSettings, ServiceSettings, StoreSettings
from legato.orchestrator import Orchestrator, Resources, Worker, WorkerConfig
from legato.service import ServiceOptions, create_app

from .sample_app import build_orchestrator

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = ServiceOptions(watch_interval=0.2, reaper_interval=0.5, lag_interval=0.1)


@pytest.fixture
def orchestrator(store_url: str, clock: Clock) -> Orchestrator:
    """The test's orchestrator (not opened: the app's lifespan opens it)."""
    return build_orchestrator(store_url, clock)


def settings_for(
    store_url: str, host: str = "127.0.0.1", token: str | None = TOKEN
) -> LegatoSettings:
    """Settings pointing at the test store, with the test token."""
    return LegatoSettings(
        store=StoreSettings(url=store_url),
        service=ServiceSettings(host=host, port=8600, api_token=token),
    )


MakeApp = Callable[..., FastAPI]


@pytest.fixture
def make_app(store_url: str, orchestrator: Orchestrator) -> MakeApp:
    """`make_app(bus=..., host=..., token=..., environ=...)`: an app on the test's store."""

    def make(
        *,
        bus: MessageBus | None = None,
        limiters: dict[str, RateLimiter] | None = None,
        host: str = "127.0.0.1",
        token: str | None = TOKEN,
        environ: dict[str, str] | None = None,
    ) -> FastAPI:
        return create_app(
            settings_for(store_url, host=host, token=token),
            orchestrator,
            bus=bus,
            limiters=limiters,
            options=FAST,
            rng=random.Random(3),
            environ=environ if environ is not None else {},
        )

    return make


@pytest.fixture
def service_app(make_app: MakeApp) -> FastAPI:
    """The service app on the test's store, with the test token and fast loops."""
    return make_app()


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers carrying the test token."""
    return dict(AUTH)


Serving = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def serving() -> Serving:
    """`async with serving(app) as client:` runs the app's lifespan and gives an HTTP client."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://legato") as client:
                yield client

    return run


WORKER = WorkerConfig(lease_seconds=6.0, poll_interval=0.2, grace=1.0, reaper_interval=1.0)


@pytest.fixture
def running_worker(
    orchestrator: Orchestrator,
) -> Callable[..., AbstractAsyncContextManager[Worker]]:
    """`async with running_worker(queues=...) as worker:` runs a worker of the orchestrator."""

    @asynccontextmanager
    async def run(
        queues: tuple[str, ...] = ("default",), resources: Resources | None = None
    ) -> AsyncIterator[Worker]:
        worker = orchestrator.worker(queues, concurrency=4, config=WORKER, resources=resources)
        async with asyncio.TaskGroup() as group:
            group.create_task(worker.run(), name="test-worker")
            await worker.ready.wait()
            try:
                yield worker
            finally:
                worker.stop()

    return run


@pytest.fixture
def wait_for(clock: Clock) -> Callable[..., Awaitable[Any]]:
    """`await wait_for(async_condition, within=s)` polls on the test's clock until truthy."""

    async def wait(condition: Callable[[], Awaitable[Any]], *, within: float = 30.0) -> Any:
        deadline = clock.monotonic() + within
        while True:
            value = await condition()
            if value:
                return value
            if clock.monotonic() >= deadline:
                pytest.fail(f"condition not met within {within}s of clock time")
            await clock.sleep(0.1)

    return wait
