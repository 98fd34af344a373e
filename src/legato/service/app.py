"""`create_app`: the FastAPI application of the operator service (API, metrics, dashboard)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

import legato
from legato.kernel.bus import MessageBus
from legato.kernel.ratelimit import RateLimiter
from legato.kernel.settings import LegatoSettings
from legato.kernel.supervisor import Supervisor
from legato.orchestrator.app import Orchestrator
from legato.service.errors import install_error_handlers
from legato.service.middleware import BodySizeLimit, RequestId
from legato.service.models import ErrorEnvelope
from legato.service.routes import dashboard, dlq, events, system, tasks, workers, workflows
from legato.service.routes.dependencies import check_access
from legato.service.runtime import OperatorRuntime, ServiceOptions

__all__ = ["create_app"]

_STATIC = Path(__file__).parent / "static"


def create_app(
    settings: LegatoSettings,
    orchestrator: Orchestrator,
    *,
    supervisor: Supervisor | None = None,
    bus: MessageBus | None = None,
    limiters: Mapping[str, RateLimiter] | None = None,
    options: ServiceOptions | None = None,
    rng: random.Random | None = None,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """Build the service app over `orchestrator` (opened on startup if it is not yet).

    The app's lifespan starts its loops (event watcher, reaper, loop-lag probe) on
    `supervisor` if given, else on one it owns; `uvicorn` runs the lifespan, and tests enter
    it with `async with app.router.lifespan_context(app):`. `bus` feeds /bus and the bus
    metrics; `limiters` (named rate limiters of this process) their free tokens on
    /metrics. `environ` (default os.environ) is where LEGATO_API_TOKEN is looked up.
    Raises ConfigError when bound to a non-loopback host without an API token.
    """
    runtime = OperatorRuntime(
        settings,
        orchestrator,
        supervisor=supervisor,
        bus=bus,
        limiters=limiters,
        options=options,
        rng=rng,
        environ=environ,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Legato operator API",
        version=legato.__version__,
        description=(
            "Tasks, workers, dead letters, loops, bus and metrics of a Legato deployment. "
            'Every error is {"error": {code, message, details, request_id}}. Mutating '
            "requests need 'Authorization: Bearer <token>'."
        ),
        lifespan=lifespan,
        dependencies=[Depends(check_access)],
        # Any route can answer these: a body that is not JSON, a missing token, a body too
        # large, bad parameters. Documented once here, all in the error envelope.
        responses={
            400: {"model": ErrorEnvelope, "description": "The body could not be parsed"},
            401: {"model": ErrorEnvelope, "description": "A bearer token is required"},
            413: {"model": ErrorEnvelope, "description": "The body is over the size limit"},
            422: {"model": ErrorEnvelope, "description": "A field or parameter is invalid"},
        },
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=runtime.options.max_body_bytes)
    # Added last so it runs first: even a refused oversized body gets a request id.
    app.add_middleware(RequestId, rng=runtime.rng)
    for module in (system, tasks, workers, dlq, workflows, events, dashboard):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    return app
