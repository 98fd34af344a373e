"""Workers: claim leased tasks, run them, report outcomes, heartbeat, reap, shut down cleanly.

One `Worker` is one process incarnation's consumer (its id is new every start). Its pieces:

- the pump: one loop that, in a single transaction, reports finished attempts and claims
  as many due tasks as there are free slots (group commit), then waits until a task ends,
  a submit wakes it (in-process event; LISTEN/NOTIFY on PostgreSQL) or the poll interval
  passes (how SQLite workers in other processes see new work);
- attempts: async functions run on the loop; sync ones in the worker's thread pool. An
  async function without a time limit (the common case) runs as its own asyncio task,
  reported by a done callback; the others, and any attempt the worker interrupts (cancel,
  lost lease, shutdown), are watched by a coroutine in the worker's TaskGroup that applies
  time limits and the grace period. The thread pool means a CPU-bound or blocking function
  cannot delay heartbeats (threads, not processes: arguments and results need no pickling,
  the task context is shared, and the GIL is released by the I/O most tasks do; put
  CPU-heavy work in a process pool inside the task);
- heartbeat and reaper loops under a kernel `Supervisor`.

Shutdown (`stop()`, SIGTERM): stop claiming, let running attempts finish for `grace`
seconds, then release what is left back to pending (the attempt does not count), report,
deregister. Drain (`drain()`, or an operator's "draining" flag in the store, seen at the
next heartbeat): the same without the grace limit, so running attempts finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

import legato
from legato.kernel.errors import ValidationError
from legato.kernel.retry import Jitter, RetryPolicy
from legato.kernel.supervisor import Supervisor
from legato.orchestrator import outcome
from legato.orchestrator.resources import Capacity, Resources
from legato.orchestrator.task import TaskContext, TaskDefinition, bind_context
from legato.store.errors import StoreUnavailableError
from legato.store.records import EndReason, Lease, Outcome, WorkerRecord
from legato.store.task_store import NOTIFY_CHANNEL

if TYPE_CHECKING:
    from legato.orchestrator.app import Orchestrator

__all__ = ["STORE_BACKOFF", "Worker", "WorkerConfig"]

_NO_ARGUMENTS = '{"args":[],"kwargs":{}}'

_log = structlog.get_logger(__name__)


STORE_BACKOFF = RetryPolicy(
    max_attempts=1_000_000, initial_delay=0.05, max_delay=2.0, jitter=Jitter.FULL
)
"""How long a worker waits before trying an unreachable store again: 50 ms doubling to 2 s."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """A worker's timings. Leases must outlive several heartbeats and any store stall.

    `lease_seconds`: how long a claim holds without a heartbeat (and so how long a crashed
    worker's tasks wait before the reaper returns them). `heartbeat_interval`: default a
    third of the lease. `poll_interval`: the longest a worker waits without a wake-up.
    `grace`: how long a stopped (cancelled, timed-out, shutting-down) attempt gets to end
    before it is abandoned or released. `reaper_interval`: how often this worker reaps.
    `batch_size`: the most tasks claimed in one transaction.
    """

    lease_seconds: float = 30.0
    heartbeat_interval: float | None = None
    poll_interval: float = 0.05
    grace: float = 10.0
    reaper_interval: float = 1.0
    batch_size: int = 256
    store_backoff: RetryPolicy = STORE_BACKOFF

    def __post_init__(self) -> None:
        for name in ("lease_seconds", "poll_interval", "reaper_interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValidationError(name, value, "seconds > 0")
        if self.grace < 0:
            raise ValidationError("grace", self.grace, "seconds >= 0")
        if self.heartbeat_interval is not None and not (
            0 < self.heartbeat_interval < self.lease_seconds
        ):
            raise ValidationError(
                "heartbeat_interval", self.heartbeat_interval, "seconds > 0 and < lease_seconds"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValidationError("batch_size", self.batch_size, "an int >= 1")

    @property
    def heartbeat_every(self) -> float:
        """The heartbeat period actually used."""
        return self.heartbeat_interval or self.lease_seconds / 3


class _Attempt:
    """Bookkeeping for one running attempt."""

    __slots__ = (
        "context",
        "definition",
        "direct",
        "future",
        "gate",
        "lease",
        "releasing",
        "request",
        "settled",
        "stop_reason",
    )

    def __init__(self, lease: Lease, definition: TaskDefinition | None, context: TaskContext):
        self.lease = lease
        self.definition = definition
        self.context = context
        self.request = Resources.from_json(lease.resources)
        self.future: asyncio.Future[Any] | None = None
        self.stop_reason: EndReason | None = None
        self.releasing = False
        # The gate (see _attempt_outcome) exists only for attempts watched by a coroutine;
        # a direct attempt (an async function without a time limit) is settled by a done
        # callback on its future and gets a watcher only if it is interrupted.
        self.gate: asyncio.Future[None] | None = None
        self.direct = False
        self.settled = False

    def open_gate(self) -> None:
        """Wake whoever waits for this attempt to end or to be interrupted."""
        if self.gate is not None and not self.gate.done():
            self.gate.set_result(None)

    @property
    def interrupted(self) -> bool:
        """True once the worker asked the attempt to stop (any reason)."""
        return self.releasing or self.stop_reason is not None or self.context.stop_requested


class Worker:
    """Consumes tasks from some queues of one `Orchestrator`; see the module docstring."""

    def __init__(
        self,
        app: Orchestrator,
        *,
        queues: Sequence[str],
        concurrency: int,
        config: WorkerConfig,
        resources: Resources,
    ) -> None:
        if (
            isinstance(queues, str)
            or not queues
            or not all(isinstance(q, str) and q for q in queues)
        ):
            raise ValidationError("queues", queues, "a non-empty list of queue names")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError("concurrency", concurrency, "an int >= 1")
        self.app = app
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.config = config
        self.resources = resources
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{app.rng.getrandbits(40):010x}"
        self._capacity = Capacity(resources)
        self._task_names: tuple[str, ...] = ()
        self._attempts: dict[int, _Attempt] = {}
        self._outcomes: list[Outcome] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._unbounded_drain = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._failures = 0
        self._group: asyncio.TaskGroup | None = None
        self.supervisor = Supervisor(clock=app.clock, rng=app.rng)
        self.ready = asyncio.Event()
        """Set once the worker is registered and about to claim."""

    # ------------------------------------------------------------ control

    def stop(self) -> None:
        """Begin a graceful shutdown: stop claiming, finish or release running attempts."""
        self._unbounded_drain = False
        self._stopping.set()
        self._wake.set()

    def drain(self) -> None:
        """Stop claiming and let running attempts finish (no grace limit), then deregister.

        What an operator's drain does (`TaskStore.set_worker_state(id, "draining")`, seen at
        the next heartbeat). Attempts still end by their own time limits; a later `stop()`
        puts the grace period back.
        """
        if not self._stopping.is_set():
            self._unbounded_drain = True
            self._stopping.set()
            self._wake.set()

    @property
    def draining(self) -> bool:
        """True once the worker stopped claiming (drain or shutdown)."""
        return self._stopping.is_set()

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT call `stop()` (for process entry points)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    @property
    def running_tasks(self) -> tuple[int, ...]:
        """Ids of the tasks this worker is running now."""
        return tuple(self._attempts)

    # ------------------------------------------------------------ main

    async def run(self) -> None:
        """Register, run until `stop()` (or cancellation), then shut down and deregister.

        A worker object runs once; start a new one (a new incarnation id) to run again.
        """
        store = self.app.store
        clock = self.app.clock
        # Claim only what this process can run: a worker of another app may share the queue.
        self._task_names = self.app.task_names
        await self._register()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix=f"legato-worker-{self.worker_id}"
        )
        self.app._register_wakeup(self._wake)
        self.ready.set()
        self.supervisor.add_loop(
            "heartbeat",
            self.heartbeat,
            interval=self.config.heartbeat_every,
            timeout=self.config.lease_seconds / 2,
            backoff=self.config.store_backoff,
        )
        self.supervisor.add_loop(
            "reaper",
            self.reap,
            interval=self.config.reaper_interval,
            jitter=self.config.reaper_interval / 4,
            backoff=self.config.store_backoff,
        )
        try:
            async with self.supervisor, asyncio.TaskGroup() as group:
                self._group = group
                if store.database.dialect == "postgresql":
                    listener = group.create_task(self._listen(), name=f"{self.worker_id}:listen")
                else:
                    listener = None
                try:
                    await self._pump(group)
                finally:
                    if listener is not None:
                        listener.cancel()
        finally:
            self.app._unregister_wakeup(self._wake)
            for future in self._abandoned:
                future.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(StoreUnavailableError):
                await store.deregister_worker(self.worker_id, clock.timestamp())

    async def _register(self) -> None:
        # A worker started while the store is down waits for it instead of dying.
        failures = 0
        while True:
            now = self.app.clock.timestamp()
            try:
                await self.app.store.register_worker(
                    WorkerRecord(
                        worker_id=self.worker_id,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        queues=self.queues,
                        resources=self.resources.to_json(),
                        concurrency=self.concurrency,
                        version=legato.__version__,
                        state="active",
                        started_at=now,
                        heartbeat_at=now,
                    )
                )
                return
            except StoreUnavailableError as error:
                failures += 1
                delay = self.config.store_backoff.delay(min(failures, 30), self.app.rng)
                _log.warning("cannot register yet", error=str(error), retry_in=delay)
                await self.app.clock.sleep(delay)

    async def _pump(self, group: asyncio.TaskGroup) -> None:
        store = self.app.store
        clock = self.app.clock
        drain_deadline: float | None = None
        while True:
            self._wake.clear()
            wait_limit: float | None = None
            if self._stopping.is_set():
                if drain_deadline is None:
                    drain_deadline = clock.monotonic() + self.config.grace
                    _log.info("draining", worker=self.worker_id, running=len(self._attempts))
                if not self._attempts and not self._outcomes:
                    return
                if self._unbounded_drain:
                    # Operator drain: attempts finish in their own time; the grace period
                    # starts only if a stop() follows.
                    drain_deadline = clock.monotonic() + self.config.grace
                left = drain_deadline - clock.monotonic()
                if left <= 0:
                    for attempt in list(self._attempts.values()):
                        self._interrupt(attempt, None, release=True)
                wait_limit = max(left, 0.0) if left > 0 else self.config.poll_interval
                free = 0
            else:
                # Report and claim in one batch what ends while the store is busy: waiting
                # in line for the connection with a batch taken now would leave behind
                # what ends meanwhile, and the runs would split into cohorts, each paying
                # its own round trips (traced on the workflow benchmark).
                await self._gather_settled()
                await store.database.idle()
                await self._gather_settled()
                if self._stopping.is_set():
                    continue  # told to stop meanwhile: claim nothing more
                free = min(self.config.batch_size, self.concurrency - len(self._attempts))
            outcomes, self._outcomes = self._outcomes, []
            if not outcomes and free <= 0:
                await self._wait(wait_limit)
                continue
            try:
                accepted, leases = await store.complete_and_claim(
                    outcomes,
                    self.worker_id,
                    self.queues,
                    free,
                    clock.timestamp(),
                    self.config.lease_seconds,
                    self._accept,
                    self._task_names,
                    self.app.claim_rider,
                )
            except StoreUnavailableError as error:
                # Nothing was applied: keep the outcomes and try again after a backoff.
                self._outcomes = outcomes + self._outcomes
                self._failures += 1
                delay = self.config.store_backoff.delay(min(self._failures, 30), self.app.rng)
                _log.warning(
                    "store unavailable", worker=self.worker_id, error=str(error), retry_in=delay
                )
                await self._wait(delay)
                continue
            self._failures = 0
            for item, ok in zip(outcomes, accepted, strict=True):
                if not ok:
                    _log.warning(
                        "stale report discarded", task_id=item.task_id, token=item.fencing_token
                    )
            for lease in leases:
                self._start(group, lease)
            if free > 0 and len(leases) == free:
                continue  # more work may be waiting
            if self._stopping.is_set() and not self._attempts:
                continue  # drained and reported: the loop's top returns (or reports the rest)
            if not self._outcomes:
                await self._wait(self.config.poll_interval if wait_limit is None else wait_limit)

    async def _gather_settled(self) -> None:
        """Yield to the loop while each pass ends more attempts, before a batch is taken.

        Attempts that a store reply releases together (say, a batch of workflow ends) end
        over a few loop passes; the first one's report would otherwise go alone, its
        completion and claim splitting the worker's runs into cohorts that each pay their
        own round trips from then on.
        """
        while True:
            running = len(self._attempts)
            await asyncio.sleep(0)
            if len(self._attempts) == running:
                return

    async def _wait(self, limit: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self._wake.wait()

    def _accept(self, resources_json: str) -> bool:
        request = Resources.from_json(resources_json)
        if self._capacity.unlimited:
            # A worker that declared nothing runs only tasks that ask for nothing.
            return request.empty
        if not self._capacity.fits(request):
            return False
        self._capacity.take(request)
        return True

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async for payload in self.app.store.database.notifications(NOTIFY_CHANNEL):
                    failures = 0
                    if any(queue in self.queues for queue in payload.split(",")):
                        self._wake.set()
            except StoreUnavailableError as error:
                failures += 1
                _log.warning("listener reconnecting", worker=self.worker_id, error=str(error))
                await self.app.clock.sleep(
                    self.config.store_backoff.delay(min(failures, 30), self.app.rng)
                )

    # ------------------------------------------------------------ attempts

    def _start(self, group: asyncio.TaskGroup, lease: Lease) -> None:
        definition = self.app.lookup(lease.name)
        context = TaskContext(
            task_id=lease.task_id,
            name=lease.name,
            queue=lease.queue,
            attempt=lease.attempt,
            fencing_token=lease.fencing_token,
            idempotency_key=lease.idempotency_key,
        )
        attempt = _Attempt(lease, definition, context)
        self._attempts[lease.task_id] = attempt
        if definition is not None and definition.is_async and lease.timeout is None:
            # The common case, made cheap: the function's own task is the attempt, and a
            # done callback reports it (no watcher coroutine, gate or shield). Nothing can
            # end such an attempt but itself or an interrupt, which adds a watcher then.
            try:
                future = self._call_arguments(attempt)
            except Exception as error:  # undecodable arguments: the attempt fails
                self._settle(
                    attempt, outcome.failed(lease, error, self.app.clock.timestamp(), self.app.rng)
                )
                return
            attempt.direct = True
            attempt.future = future
            future.add_done_callback(functools.partial(self._direct_done, attempt))
            return
        group.create_task(self._run_attempt(attempt), name=f"legato-task-{lease.task_id}")

    def _direct_done(self, attempt: _Attempt, future: asyncio.Future[Any]) -> None:
        if attempt.interrupted or attempt.settled:
            return  # the watcher started by _interrupt reports it
        try:
            report = self._finished_outcome(attempt, future)
        except Exception as error:  # a bug in the worker itself must not kill the worker
            _log.exception("attempt crashed", task_id=attempt.lease.task_id)
            report = outcome.failed(attempt.lease, error, self.app.clock.timestamp(), self.app.rng)
        self._settle(attempt, report)

    async def _watch_interrupted(self, attempt: _Attempt) -> None:
        """Finish a direct attempt that was interrupted: its grace period, then report."""
        lease = attempt.lease
        try:
            assert attempt.future is not None
            report = await self._after_gate(attempt, attempt.future)
        except Exception as error:  # a bug in the worker itself must not kill the worker
            _log.exception("attempt crashed", task_id=lease.task_id)
            report = outcome.failed(lease, error, self.app.clock.timestamp(), self.app.rng)
        self._settle(attempt, report)

    def _settle(self, attempt: _Attempt, report: Outcome | None) -> None:
        """The attempt is over: free its slot and resources, queue its report, wake the pump."""
        if attempt.settled:
            return
        attempt.settled = True
        self._attempts.pop(attempt.lease.task_id, None)
        self._capacity.give_back(attempt.request)
        if report is not None:
            self._outcomes.append(report)
        self._wake.set()

    async def _run_attempt(self, attempt: _Attempt) -> None:
        lease = attempt.lease
        clock = self.app.clock
        report: Outcome | None = None
        try:
            report = await self._attempt_outcome(attempt)
        except Exception as error:  # a bug in the worker itself must not kill the worker
            _log.exception("attempt crashed", task_id=lease.task_id)
            report = outcome.failed(lease, error, clock.timestamp(), self.app.rng)
        finally:
            self._settle(attempt, report)

    async def _attempt_outcome(self, attempt: _Attempt) -> Outcome | None:
        lease = attempt.lease
        definition = attempt.definition
        clock = self.app.clock
        if definition is None:
            unknown = ValidationError("task", lease.name, "a task registered in this worker's app")
            return outcome.failed(lease, unknown, clock.timestamp(), self.app.rng)
        future = self._call_arguments(attempt)
        attempt.future = future
        # The gate opens when the attempt ends or is interrupted; shield keeps a time limit
        # from cancelling the gate itself.
        gate = attempt.gate = asyncio.get_running_loop().create_future()
        if attempt.interrupted:
            gate.set_result(None)
        future.add_done_callback(lambda _: attempt.open_gate())
        soft = lease.timeout
        if soft is None:
            await asyncio.shield(gate)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(soft):
                    await asyncio.shield(gate)
            if not gate.done():
                if lease.protected:
                    # Protected work is never killed by a time limit: report and let it run.
                    await self._note(lease, "time_limit_exceeded", f"soft limit {soft}s passed")
                    await asyncio.shield(gate)
                else:
                    self._interrupt(attempt, EndReason.TIMEOUT)
        return await self._after_gate(attempt, future)

    def _call_arguments(self, attempt: _Attempt) -> asyncio.Future[Any]:
        """Decode the attempt's arguments and start its function."""
        definition = attempt.definition
        assert definition is not None
        payload = attempt.lease.payload
        if payload == _NO_ARGUMENTS:
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
        else:
            arguments = json.loads(payload)
            args, kwargs = arguments.get("args", []), arguments.get("kwargs", {})
        if definition.wants_context:
            kwargs = {**kwargs, "ctx": attempt.context}
        return self._call(definition, attempt.context, args, kwargs)

    async def _after_gate(self, attempt: _Attempt, future: asyncio.Future[Any]) -> Outcome | None:
        """The attempt ended or was interrupted: give a stopped one its grace, then decide."""
        lease = attempt.lease
        if not future.done():
            # Stopped (time limit, cancel, lost lease): the grace period, then abandon. A
            # release at shutdown already had its grace while the worker drained.
            grace = 0.0 if attempt.releasing else self.config.grace
            await asyncio.wait({future}, timeout=grace)
        reason = attempt.stop_reason
        if not future.done():
            self._abandon(future)
            _log.warning("attempt abandoned", task_id=lease.task_id, reason=str(reason))
            return self._stopped_outcome(attempt, reason)
        return self._finished_outcome(attempt, future)

    def _finished_outcome(self, attempt: _Attempt, future: asyncio.Future[Any]) -> Outcome | None:
        """The report of an attempt whose future is done."""
        lease = attempt.lease
        clock = self.app.clock
        reason = attempt.stop_reason
        stopped = attempt.releasing or reason is not None
        if stopped and (future.cancelled() or reason is EndReason.LEASE_LOST):
            return self._stopped_outcome(attempt, reason)
        if future.cancelled():
            return outcome.failed(lease, asyncio.CancelledError(), clock.timestamp(), self.app.rng)
        error = future.exception()
        if error is not None:
            if reason is EndReason.CANCELLED:
                return outcome.cancelled(lease)
            end = EndReason.TIMEOUT if reason is EndReason.TIMEOUT else EndReason.ERROR
            return outcome.failed(lease, error, clock.timestamp(), self.app.rng, end)
        return outcome.succeeded(lease, future.result())

    def _stopped_outcome(self, attempt: _Attempt, reason: EndReason | None) -> Outcome | None:
        lease = attempt.lease
        if reason is EndReason.LEASE_LOST:
            return None  # someone else owns the task now; any report would be stale
        if reason is EndReason.CANCELLED:
            return outcome.cancelled(lease)
        if attempt.releasing or reason is None:
            # Shutdown: hand the task back without spending an attempt.
            return outcome.released(lease)
        error = TimeoutError(f"time limit of {lease.timeout}s exceeded")
        return outcome.failed(lease, error, self.app.clock.timestamp(), self.app.rng, reason)

    def _call(
        self,
        definition: TaskDefinition,
        context: TaskContext,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if definition.is_async:

            async def invoke() -> Any:
                bind_context(context)
                return await definition.fn(*args, **kwargs)

            # Owned by _attempt_outcome, which always awaits or abandons it.
            return loop.create_task(invoke(), name=f"legato-attempt-{context.task_id}")

        def invoke_sync() -> Any:
            bind_context(context)
            return definition.fn(*args, **kwargs)

        return loop.run_in_executor(self._executor, invoke_sync)

    def _interrupt(
        self, attempt: _Attempt, reason: EndReason | None, release: bool = False
    ) -> None:
        """Ask a running attempt to stop: cancellation for async, the context flag for both."""
        if attempt.settled:
            return
        if attempt.stop_reason is None and not attempt.releasing:
            attempt.stop_reason = reason
            attempt.releasing = release
        watch = attempt.direct and not attempt.context.stop_requested
        attempt.context.request_stop()
        if (
            attempt.future is not None
            and attempt.definition is not None
            and attempt.definition.is_async
        ):
            attempt.future.cancel()
        attempt.open_gate()
        if watch and self._group is not None:
            # A direct attempt has no watcher yet: one now gives it its grace and reports.
            self._group.create_task(
                self._watch_interrupted(attempt), name=f"legato-task-{attempt.lease.task_id}"
            )

    def _abandon(self, future: asyncio.Future[Any]) -> None:
        # A thread cannot be killed and a coroutine may refuse cancellation: keep a reference
        # so its eventual result is collected instead of reported as never retrieved.
        self._abandoned.add(future)
        future.add_done_callback(self._collect_abandoned)

    def _collect_abandoned(self, future: asyncio.Future[Any]) -> None:
        self._abandoned.discard(future)
        if not future.cancelled() and future.exception() is not None:
            _log.warning("abandoned attempt failed later", error=str(future.exception()))

    async def _note(self, lease: Lease, reason: str, detail: str) -> None:
        with contextlib.suppress(StoreUnavailableError):
            await self.app.store.record_event(
                lease.task_id, reason, self.app.clock.timestamp(), self.worker_id, detail
            )
        _log.warning("protected task over its time limit", task_id=lease.task_id, detail=detail)

    # ------------------------------------------------------------ loops

    async def heartbeat(self) -> None:
        """One heartbeat: extend held leases; stop attempts whose lease is gone or cancelled.

        Also where a drain requested through the store (another process) takes effect.
        """
        held = {task_id: a.lease.fencing_token for task_id, a in self._attempts.items()}
        reply = await self.app.store.heartbeat(
            self.worker_id, held, self.app.clock.timestamp(), self.config.lease_seconds
        )
        if reply.draining and not self._stopping.is_set():
            _log.info("drain requested", worker=self.worker_id)
            self.drain()
        still = reply.leases
        for task_id in held:
            attempt = self._attempts.get(task_id)
            if attempt is None:
                continue
            if task_id not in still:
                _log.warning("lease lost", task_id=task_id, worker=self.worker_id)
                self._interrupt(attempt, EndReason.LEASE_LOST)
            elif still[task_id]:
                self._interrupt(attempt, EndReason.CANCELLED)

    async def reap(self) -> int:
        """One reaper pass: settle every expired lease (any worker's); return how many."""
        clock = self.app.clock
        rng = self.app.rng
        now = clock.timestamp()
        reaped = await self.app.store.reap_expired(
            now, lambda expired: outcome.expired(expired, now, rng), self.worker_id
        )
        if reaped:
            _log.info("reaped expired leases", count=len(reaped), worker=self.worker_id)
            self.app.wake_local_workers()
        return len(reaped)
