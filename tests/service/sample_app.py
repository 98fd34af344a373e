"""The orchestrator the service tests run: a few small tasks that succeed, fail and wait."""

from __future__ import annotations

import asyncio
import random

from legato.kernel.clock import Clock
from legato.kernel.errors import PermanentError
from legato.kernel.retry import RetryPolicy
from legato.orchestrator import Orchestrator, Resources


def build_orchestrator(store_url: str, clock: Clock) -> Orchestrator:
    """An orchestrator with the tasks the service tests submit."""
    app = Orchestrator(store_url, clock=clock, rng=random.Random(7), upgrade=False)

    @app.task(name="echo")
    async def echo(value: object = None) -> object:
        return value

    @app.task(name="boom", retry=RetryPolicy(max_attempts=1))
    async def boom() -> None:
        raise PermanentError("boom on purpose")

    @app.task(name="nap")
    async def nap(seconds: float) -> None:
        await asyncio.sleep(seconds)

    @app.task(name="gpu", queue="gpu", resources=Resources(gpus=4))
    async def gpu() -> None:
        return None

    return app
