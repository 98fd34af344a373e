"""The operator runtime: everything the HTTP routes read and steer, and its background loops.

One `OperatorRuntime` per app. It owns the event hub, the worker registry view, the change
watcher and the loop-lag probe, and registers three supervised loops: `service.lag` (the
liveness probe), `service.watch` (store polling for events, health and figures) and
`service.reaper` (returns expired leases to their queue, and acts on evictions at once).
The loops run on the supervisor passed in (the `Service` owns one) or on the runtime's own.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

import legato
from legato.kernel.bus import BusStats, MessageBus
from legato.kernel.clock import Clock
from legato.kernel.errors import ConfigError, ValidationError
from legato.kernel.ratelimit import RateLimiter
from legato.kernel.settings import LegatoSettings, redact_url
from legato.kernel.supervisor import LoopHealth, Supervisor
from legato.orchestrator import outcome
from legato.orchestrator.app import Orchestrator
from legato.orchestrator.health import DEFAULT_HEALTH_POLICY, HealthPolicy
from legato.orchestrator.resources import Resources
from legato.orchestrator.worker import Worker
from legato.service.events import EventHub
from legato.service.loop_lag import LoopLagMonitor
from legato.service.models import Placement
from legato.service.placement import check_placement, waiting
from legato.service.registry import WorkerRegistry
from legato.service.security import AccessPolicy, is_loopback
from legato.service.watcher import ChangeWatcher, TaskFigures
from legato.store.records import TaskRecord, TaskState

__all__ = ["MetricsSnapshot", "OperatorRuntime", "ServiceOptions"]

_log = structlog.get_logger(__name__)

TOKEN_ENV = "LEGATO_API_TOKEN"
# Waiting tasks checked for placement per scrape: the check is in memory, the read is not.
_PLACEMENT_SCAN = 10_000


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """Timings of the service's own loops and the health policy it applies."""

    watch_interval: float = 1.0
    reaper_interval: float = 1.0
    lag_interval: float = 0.5
    lag_threshold: float = 2.0
    health_policy: HealthPolicy = DEFAULT_HEALTH_POLICY
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("watch_interval", "reaper_interval", "lag_interval", "lag_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValidationError(name, value, "a finite number of seconds > 0")
        if not isinstance(self.health_policy, HealthPolicy):
            raise ValidationError(
                "health_policy", self.health_policy, "a legato.orchestrator.health.HealthPolicy"
            )
        size = self.max_body_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValidationError("max_body_bytes", size, "an int >= 1")


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything /metrics and /stats report, read in one go at scrape time."""

    tasks: dict[tuple[str, str], int]
    workers: dict[str, int]
    figures: TaskFigures
    loops: dict[str, LoopHealth]
    bus: BusStats | None
    loop_lag: float | None
    unschedulable: int
    limiter_tokens: dict[str, float] = field(default_factory=dict)


class OperatorRuntime:
    """State and loops behind the HTTP routes; see the module docstring."""

    def __init__(
        self,
        settings: LegatoSettings,
        orchestrator: Orchestrator,
        *,
        supervisor: Supervisor | None = None,
        bus: MessageBus | None = None,
        limiters: Mapping[str, RateLimiter] | None = None,
        options: ServiceOptions | None = None,
        rng: random.Random | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.limiters: dict[str, RateLimiter] = dict(limiters or {})
        self.orchestrator = orchestrator
        self.clock: Clock = orchestrator.clock
        self.rng = rng if rng is not None else random.Random()
        self.options = options if options is not None else ServiceOptions()
        self._owns_supervisor = supervisor is None
        self.supervisor = (
            supervisor if supervisor is not None else Supervisor(clock=self.clock, rng=self.rng)
        )
        self.bus = bus
        self.access = _access_policy(settings, os.environ if environ is None else environ)
        self.hub = EventHub()
        self.registry = WorkerRegistry(self.options.health_policy)
        self.lag = LoopLagMonitor(
            self.clock, interval=self.options.lag_interval, threshold=self.options.lag_threshold
        )
        self.watcher = ChangeWatcher(
            lambda: self.orchestrator.store, self.clock, self.hub, self.registry, self.loops
        )
        self.started_at = self.clock.timestamp()
        self._local_workers: list[Worker] = []
        self._started = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the store and register the loops (and start them if the runtime owns them)."""
        if self._started:
            return
        self._started = True
        await self.orchestrator.open()
        self.started_at = self.clock.timestamp()
        options = self.options
        self.supervisor.add_loop("service.lag", self.lag.tick, interval=options.lag_interval)
        self.supervisor.add_loop(
            "service.watch", self.watcher.poll, interval=options.watch_interval, timeout=30.0
        )
        self.supervisor.add_loop(
            "service.reaper", self.reap, interval=options.reaper_interval, timeout=30.0
        )
        if self._owns_supervisor:
            await self.supervisor.start()

    async def stop(self) -> None:
        """End event streams and stop the loops this runtime registered."""
        if not self._started:
            return
        self._started = False
        self.hub.close()
        if self._owns_supervisor:
            await self.supervisor.stop()
        else:
            for name in ("service.lag", "service.watch", "service.reaper"):
                await self.supervisor.remove_loop(name)

    def attach_worker(self, worker: Worker) -> None:
        """Show an in-process worker's loops on /loops and let drain stop it at once."""
        self._local_workers.append(worker)
        self.registry.attach_local(worker)

    def detach_worker(self, worker: Worker) -> None:
        """Forget an in-process worker that ended."""
        if worker in self._local_workers:
            self._local_workers.remove(worker)
        self.registry.detach_local(worker)

    # ------------------------------------------------------------ loops

    async def reap(self) -> int:
        """One reaper pass: expired leases go back to their queue (or the DLQ) by retry policy.

        Evicted workers' heartbeats are older than `evict_after`, itself beyond the lease
        length, so their leases have expired by then: this pass is what releases them.
        """
        store = self.orchestrator.store
        now = self.clock.timestamp()
        rng = self.orchestrator.rng
        reaped = await store.reap_expired(
            now, lambda expired: outcome.expired(expired, now, rng), "legato-service"
        )
        if reaped:
            self.watcher.figures.reaped += len(reaped)
            self.orchestrator.wake_local_workers()
            _log.info("service reaper returned expired leases", count=len(reaped))
        return len(reaped)

    def loops(self) -> dict[str, LoopHealth]:
        """Health of every supervised loop in this process, by qualified name."""
        result = dict(self.supervisor.health())
        for worker in self._local_workers:
            for name, health in worker.supervisor.health().items():
                result[f"worker {worker.worker_id}:{name}"] = health
        return result

    # ------------------------------------------------------------ queries

    def placement(self, record: TaskRecord) -> Placement | None:
        """Whether a waiting task could ever be placed (None for tasks not waiting)."""
        if not waiting(record):
            return None
        workers = [
            (worker, self.registry.status(worker.worker_id)) for worker in self.registry.records()
        ]
        schedulable, reason = check_placement(
            record.queue, Resources.from_json(record.resources), workers
        )
        return Placement(schedulable=schedulable, reason=reason)

    async def snapshot(self) -> MetricsSnapshot:
        """Read the store and the in-memory figures for one scrape."""
        store = self.orchestrator.store
        waiting_tasks = await store.list_tasks(
            states=(TaskState.PENDING, TaskState.RETRYING), limit=_PLACEMENT_SCAN
        )
        # One GROUP BY query for every queue and state, whatever the number of queues.
        counts = await store.count_by_queue_and_state()
        queues = sorted(self.watcher.queues | {queue for queue, _ in counts})
        tasks = {
            (queue, state.value): counts.get((queue, state), 0)
            for queue in queues
            for state in TaskState
        }
        unschedulable = 0
        for record in waiting_tasks:
            placement = self.placement(record)
            if placement is not None and not placement.schedulable:
                unschedulable += 1
        return MetricsSnapshot(
            tasks=tasks,
            workers=self.registry.counts(),
            figures=self.watcher.figures,
            loops=self.loops(),
            bus=self.bus.stats() if self.bus is not None else None,
            loop_lag=self.lag.lag(),
            unschedulable=unschedulable,
            limiter_tokens={
                name: limiter.available_tokens for name, limiter in self.limiters.items()
            },
        )

    def info_config(self) -> dict[str, object]:
        """A summary of the settings with every secret left out or redacted."""
        settings = self.settings
        return {
            "env": settings.env,
            "data_dir": str(settings.data_dir),
            "store_url": redact_url(settings.store.url),
            "service": {
                "host": settings.service.host,
                "port": settings.service.port,
                "api_token_configured": self.access.token is not None,
                "reads_need_token": self.access.protect_reads,
            },
            "log": {"level": settings.log.level, "format": settings.log.format},
            "health_policy": {
                "degraded_after": self.options.health_policy.degraded_after,
                "unhealthy_after": self.options.health_policy.unhealthy_after,
                "evict_after": self.options.health_policy.evict_after,
                "failure_ratio_degraded": self.options.health_policy.failure_ratio_degraded,
                "recovery_observations": self.options.health_policy.recovery_observations,
            },
            "version": legato.__version__,
        }


def _access_policy(settings: LegatoSettings, environ: Mapping[str, str]) -> AccessPolicy:
    configured = settings.service.api_token
    token = configured.get_secret_value() if configured is not None else environ.get(TOKEN_ENV)
    token = token or None
    protect_reads = not is_loopback(settings.service.host)
    if protect_reads and token is None:
        raise ConfigError(
            [
                (
                    "service.api_token",
                    None,
                    f"a token (or {TOKEN_ENV}) when service.host is not loopback "
                    f"({settings.service.host!r}): every request then needs it",
                )
            ]
        )
    return AccessPolicy(token=token, protect_reads=protect_reads)
