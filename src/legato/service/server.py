"""`Service`: the operator service process — HTTP API and dashboard, its loops, an optional
embedded worker — and `serve()`, the one-call entry point behind `legato serve`.

Ownership: `Service.run()` holds a kernel `Supervisor` (the service's loops: event watcher,
reaper, loop-lag probe) and an `asyncio.TaskGroup` (the embedded worker). Uvicorn's server
runs in-process in `run()` itself. `stop()` (or SIGINT/SIGTERM after
`install_signal_handlers()`) makes the server finish its requests and return; then the
worker drains, the loops stop, and the store closes, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
from collections.abc import Iterator, Mapping, Sequence

import structlog
import uvicorn

from legato.kernel.bus import MessageBus
from legato.kernel.clock import Clock, RealClock
from legato.kernel.ratelimit import RateLimiter
from legato.kernel.settings import LegatoSettings
from legato.kernel.supervisor import Supervisor
from legato.orchestrator.app import Orchestrator
from legato.orchestrator.worker import Worker, WorkerConfig
from legato.service.app import create_app
from legato.service.runtime import OperatorRuntime, ServiceOptions

__all__ = ["Service", "serve"]

_log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """Uvicorn's server with signals left to its owner and a readiness event."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The Service owns signal handling: uvicorn's would re-raise SIGINT after shutdown,
        # before the embedded worker and the loops had been stopped.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


class Service:
    """The operator service: see the module docstring. Build it, then `await run()`.

    `port` overrides `settings.service.port` (0: any free port). Without an orchestrator
    one is built on `settings.store.url`; without `clock` and `rng`, real ones.
    """

    def __init__(
        self,
        settings: LegatoSettings,
        orchestrator: Orchestrator | None = None,
        *,
        embedded_worker: bool = False,
        worker_queues: Sequence[str] = ("default",),
        worker_concurrency: int = 10,
        worker_config: WorkerConfig | None = None,
        bus: MessageBus | None = None,
        limiters: Mapping[str, RateLimiter] | None = None,
        options: ServiceOptions | None = None,
        port: int | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.rng = rng if rng is not None else random.Random()
        clock = clock if clock is not None else RealClock()
        self.orchestrator = (
            orchestrator
            if orchestrator is not None
            else Orchestrator(settings.store.url, clock=clock, rng=self.rng)
        )
        self.supervisor = Supervisor(clock=self.orchestrator.clock, rng=self.rng)
        self.app = create_app(
            settings,
            self.orchestrator,
            supervisor=self.supervisor,
            bus=bus,
            limiters=limiters,
            options=options,
            rng=self.rng,
            environ=environ,
        )
        self.runtime: OperatorRuntime = self.app.state.runtime
        self._embedded = embedded_worker
        self._worker_queues = tuple(worker_queues)
        self._worker_concurrency = worker_concurrency
        self._worker_config = worker_config
        self.worker: Worker | None = None
        self._server = _Server(
            uvicorn.Config(
                self.app,
                host=settings.service.host,
                # 0 asks the OS for a free port (tests); `port` shows the one bound.
                port=settings.service.port if port is None else port,
                lifespan="on",
                log_config=None,
                access_log=False,
                server_header=False,
            )
        )

    @property
    def listening(self) -> asyncio.Event:
        """Set once the HTTP server accepts connections."""
        return self._server.listening

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with port 0); valid once `listening`."""
        for server in self._server.servers:
            for sock in server.sockets:
                port: int = sock.getsockname()[1]
                return port
        return self.settings.service.port

    def stop(self) -> None:
        """Begin a clean shutdown (safe to call more than once, and from a signal handler)."""
        self._server.should_exit = True

    def install_signal_handlers(self) -> None:
        """Make SIGINT and SIGTERM call `stop()` (for the `legato serve` process)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)

    async def run(self) -> None:
        """Serve until `stop()`: open the store, start loops and worker, then undo it all."""
        async with self.orchestrator, self.supervisor, asyncio.TaskGroup() as group:
            if self._embedded:
                self.worker = self.orchestrator.worker(
                    self._worker_queues,
                    concurrency=self._worker_concurrency,
                    config=self._worker_config,
                )
                self.runtime.attach_worker(self.worker)
                group.create_task(self.worker.run(), name="legato-service-embedded-worker")
            _log.info(
                "service starting",
                host=self.settings.service.host,
                port=self._server.config.port,
                embedded_worker=self._embedded,
            )
            try:
                await self._server.serve()
            finally:
                if self.worker is not None:
                    self.worker.stop()
        if self.worker is not None:
            self.runtime.detach_worker(self.worker)
        _log.info("service stopped")


async def serve(
    settings: LegatoSettings,
    orchestrator: Orchestrator | None = None,
    *,
    embedded_worker: bool = False,
    worker_queues: Sequence[str] = ("default",),
    bus: MessageBus | None = None,
) -> None:
    """Run the operator service until SIGINT or SIGTERM (what `legato serve` calls)."""
    service = Service(
        settings,
        orchestrator,
        embedded_worker=embedded_worker,
        worker_queues=worker_queues,
        bus=bus,
    )
    service.install_signal_handlers()
    await service.run()
