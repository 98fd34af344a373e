"""The orchestrator application: register tasks, submit them, inspect them, run workers.

app = Orchestrator("sqlite:///legato.db")

@app.task(queue="emails", retry=RetryPolicy(max_attempts=3))
async def send_email(to: str, ctx: TaskContext) -> None: ...

async with app:
    task_id = await app.submit(send_email, "ops@example.com", idempotency_key="welcome-42")
    await app.run_worker(queues=["emails"], concurrency=8)
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError
from legato.kernel.retry import RetryPolicy
from legato.orchestrator.dead_letters import DeadLetterQueue
from legato.orchestrator.resources import Resources
from legato.orchestrator.schedules import Scheduler
from legato.orchestrator.task import DEFAULT_RETRY, TaskDefinition
from legato.orchestrator.worker import Worker, WorkerConfig
from legato.orchestrator.workflow import WORKFLOW_RUN_RETRY, WorkflowEngine
from legato.store.records import NewTask, QueueLimits, TaskRecord, TaskState
from legato.store.task_store import ClaimRider, TaskStore
from legato.store.url import DEFAULT_STORE_URL, StoreUrl
from legato.store.workflow_records import WorkflowRecord, WorkflowState

__all__ = ["Orchestrator", "TaskCall"]

F = TypeVar("F", bound=Callable[..., Any])

_MAX_KEY_LENGTH = 400
_MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class TaskCall:
    """A validated submission, ready to insert: what `Orchestrator.call` builds."""

    task: NewTask


class Orchestrator:
    """Registry of tasks plus the entry points to submit, inspect, cancel and run them.

    `store` is a URL (SQLite by default, in the working directory) or an open `TaskStore`.
    The store is opened (and migrated, see docs/concepts/store.md) by `open()` or
    `async with app:`. `rng` drives retry jitter and worker ids: seed it for reproducible runs.
    """

    def __init__(
        self,
        store: str | StoreUrl | TaskStore = DEFAULT_STORE_URL,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        upgrade: bool = True,
    ) -> None:
        self.clock: Clock = clock if clock is not None else RealClock()
        self.rng = rng if rng is not None else random.Random()
        self._store_source = store
        self._store: TaskStore | None = store if isinstance(store, TaskStore) else None
        self._owns_store = not isinstance(store, TaskStore)
        self._upgrade = upgrade
        self._tasks: dict[str, TaskDefinition] = {}
        # Workers of this process, woken on submit without a database round trip.
        self._local_wakeups: set[asyncio.Event] = set()
        self.dead_letters = DeadLetterQueue(self)
        # What this app's workers send with each claim (PostgreSQL): the first workflow
        # engine sets it, so that claiming a workflow's run task also wakes the workflow.
        self.claim_rider: ClaimRider | None = None
        self.workflows = WorkflowEngine(self)
        """Durable workflows (sagas) on this app; see docs/concepts/workflows.md."""
        self.schedules = Scheduler(self)
        """Interval and cron schedules; run `schedules.tick` as a Supervisor loop."""

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> Orchestrator:
        """Open (and by default migrate) the store; idempotent."""
        if self._store is None:
            source = self._store_source
            assert not isinstance(source, TaskStore)
            self._store = await TaskStore.open(source, upgrade=self._upgrade, clock=self.clock)
        return self

    async def close(self) -> None:
        """Close the store if this object opened it (after the submits and starts in flight)."""
        if self._store is not None and self._owns_store:
            await self.workflows.drain()
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> Orchestrator:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def store(self) -> TaskStore:
        """The open task store (raises ValidationError before `open()`)."""
        if self._store is None:
            raise ValidationError("orchestrator", "closed", "an opened Orchestrator (await open())")
        return self._store

    # ------------------------------------------------------------ registry

    def task(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float | None = None,
        priority: int = 0,
        resources: Resources | None = None,
        protected: bool = False,
    ) -> Callable[[F], F]:
        """Decorator: register a sync or async function as a task (`@app.task()`).

        `name` defaults to `module.qualname`. The options are defaults every submission can
        override. The function is returned unchanged, so it stays directly callable.
        """

        def register(function: F) -> F:
            task_name = (
                name if name is not None else f"{function.__module__}.{function.__qualname__}"
            )
            _check_name("name", task_name)
            _check_name("queue", queue)
            _check_timeout(timeout)
            _check_priority(priority)
            if task_name in self._tasks and self._tasks[task_name].fn is not function:
                raise ValidationError("name", task_name, "a task name not already registered")
            self._tasks[task_name] = TaskDefinition(
                name=task_name,
                fn=function,
                queue=queue,
                retry=retry,
                timeout=timeout,
                priority=priority,
                resources=resources if resources is not None else Resources(),
                protected=protected,
            )
            return function

        return register

    def definition(self, task: str | Callable[..., Any]) -> TaskDefinition:
        """Return the registered definition of `task` (a name or the function itself)."""
        if isinstance(task, str):
            found = self._tasks.get(task)
        else:
            found = next((d for d in self._tasks.values() if d.fn is task), None)
        if found is None:
            label = task if isinstance(task, str) else getattr(task, "__qualname__", repr(task))
            known = ", ".join(sorted(self._tasks)) or "none registered yet"
            raise ValidationError("task", label, f"a registered task ({known})")
        return found

    def lookup(self, name: str) -> TaskDefinition | None:
        """Return the definition registered under `name`, or None."""
        return self._tasks.get(name)

    @property
    def task_names(self) -> tuple[str, ...]:
        """Names of every registered task."""
        return tuple(sorted(self._tasks))

    # ------------------------------------------------------------ submit

    def call(
        self,
        task: str | Callable[..., Any],
        *args: Any,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | float | None = None,
        delay: float | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        resources: Resources | None = None,
        protected: bool | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **task_kwargs: Any,
    ) -> TaskCall:
        """Validate one submission without writing it (for `submit_many`).

        Task keyword arguments go in `**task_kwargs`; one whose name clashes with an option
        here (say a task parameter called `queue`) goes in `kwargs=` instead.
        Raises ValidationError naming the field, the value and what is accepted.
        """
        definition = self.definition(task)
        all_kwargs = {**(dict(kwargs) if kwargs else {}), **task_kwargs}
        definition.check_arguments(args, all_kwargs)
        try:
            payload = json.dumps(
                {"args": list(args), "kwargs": all_kwargs}, allow_nan=False, separators=(",", ":")
            )
        except (TypeError, ValueError) as error:
            raise ValidationError(
                "args", {"args": args, "kwargs": all_kwargs}, f"JSON-serializable values ({error})"
            ) from error
        queue = definition.queue if queue is None else queue
        _check_name("queue", queue)
        priority = definition.priority if priority is None else priority
        _check_priority(priority)
        timeout = definition.timeout if timeout is None else timeout
        _check_timeout(timeout)
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str)
            or not idempotency_key
            or len(idempotency_key) > _MAX_KEY_LENGTH
        ):
            raise ValidationError(
                "idempotency_key",
                idempotency_key,
                f"a non-empty str of at most {_MAX_KEY_LENGTH} chars",
            )
        if resources is not None and not isinstance(resources, Resources):
            raise ValidationError("resources", resources, "a legato.orchestrator.Resources")
        return TaskCall(
            NewTask(
                name=definition.name,
                queue=queue,
                payload=payload,
                priority=priority,
                run_at=self._run_at(run_at, delay),
                retry=definition.retry_json,
                timeout=timeout,
                resources=definition.resources_json if resources is None else resources.to_json(),
                protected=definition.protected if protected is None else bool(protected),
                idempotency_key=idempotency_key,
            )
        )

    def _run_at(self, run_at: datetime | float | None, delay: float | None) -> float:
        if run_at is not None and delay is not None:
            raise ValidationError("delay", delay, "None when run_at is given (give one of them)")
        if delay is not None:
            if not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
                raise ValidationError("delay", delay, "a finite number of seconds >= 0")
            return self.clock.timestamp() + float(delay)
        if isinstance(run_at, datetime):
            if run_at.tzinfo is None:
                raise ValidationError("run_at", run_at, "an aware datetime (with a timezone)")
            return run_at.timestamp()
        if run_at is not None:
            if not isinstance(run_at, int | float) or not math.isfinite(run_at):
                raise ValidationError("run_at", run_at, "an aware datetime or POSIX seconds")
            return float(run_at)
        return self.clock.timestamp()

    async def submit(self, task: str | Callable[..., Any], *args: Any, **options: Any) -> int:
        """Validate and store one task; return its id.

        Takes the same arguments as `call`. With an `idempotency_key` that already exists,
        nothing is written and the existing task's id is returned, whatever its state.
        Concurrent submits of this process share transactions (group commit, see
        `TaskStore.submit`); validation happens first, so a bad call fails alone and
        writes nothing.
        """
        return (await self.submit_many([self.call(task, *args, **options)]))[0]

    async def submit_many(self, calls: Iterable[TaskCall]) -> list[int]:
        """Store many validated calls in one transaction; return their ids in order."""
        batch = list(calls)
        for index, item in enumerate(batch):
            if not isinstance(item, TaskCall):
                raise ValidationError(f"calls[{index}]", item, "a TaskCall from Orchestrator.call")
        submitted = await self.store.submit([item.task for item in batch], self.clock.timestamp())
        self.wake_local_workers()
        return [s.task_id for s in submitted]

    def wake_local_workers(self) -> None:
        """Tell this process's workers that new work may be due."""
        for event in self._local_wakeups:
            event.set()

    # ------------------------------------------------------------ inspect and operate

    async def get_task(self, task_id: int) -> TaskRecord | None:
        """Return a task with its full history, or None if there is no such task."""
        return await self.store.get_task(task_id)

    async def list_tasks(
        self, *, states: Sequence[TaskState] = (), queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """Return tasks (without history), oldest first."""
        return await self.store.list_tasks(states=states, queue=queue, limit=limit)

    async def cancel(self, task_id: int) -> TaskState:
        """Cancel a task: pending or retrying ones at once; a running one is told to stop.

        A running task's worker sees the request at its next heartbeat, asks the task to stop
        (cancellation for async tasks, `ctx.stop_requested` for sync ones) and gives it the
        worker's grace period. Returns the state after the call.
        """
        return await self.store.cancel(task_id, self.clock.timestamp())

    async def configure_queue(
        self,
        name: str,
        *,
        concurrency_limit: int | None = None,
        rate_limit: float | None = None,
        burst: float | None = None,
        paused: bool = False,
    ) -> None:
        """Set a queue's limits, which hold across every worker of every process."""
        _check_name("queue", name)
        if concurrency_limit is not None and (
            not isinstance(concurrency_limit, int) or concurrency_limit < 1
        ):
            raise ValidationError("concurrency_limit", concurrency_limit, "an int >= 1, or None")
        if rate_limit is not None and not (isinstance(rate_limit, int | float) and rate_limit > 0):
            raise ValidationError("rate_limit", rate_limit, "tasks per second > 0, or None")
        if burst is not None and not (isinstance(burst, int | float) and burst >= 1):
            raise ValidationError("burst", burst, "a bucket capacity >= 1, or None")
        await self.store.set_queue(QueueLimits(name, concurrency_limit, rate_limit, burst, paused))

    # ------------------------------------------------------------ workflows

    def workflow(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retry: RetryPolicy = WORKFLOW_RUN_RETRY,
    ) -> Callable[[F], F]:
        """Decorator: register `async def fn(ctx: WorkflowContext, input)` as a workflow.

        Delegates to `self.workflows` (a `WorkflowEngine`); see its `workflow` method.
        """
        return self.workflows.workflow(name=name, queue=queue, priority=priority, retry=retry)

    async def start_workflow(
        self,
        workflow: str | Callable[..., Any],
        input: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> int:
        """Start a registered workflow with JSON `input`; return its id (see WorkflowEngine)."""
        return await self.workflows.start(workflow, input, idempotency_key=idempotency_key)

    async def get_workflow(self, workflow_id: int) -> WorkflowRecord | None:
        """Return a workflow with its journal and history, or None."""
        return await self.workflows.get_workflow(workflow_id)

    async def list_workflows(
        self,
        *,
        states: Sequence[WorkflowState] = (),
        name: str | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[WorkflowRecord]:
        """Return workflows (without journal), oldest first, optionally filtered."""
        return await self.workflows.list_workflows(
            states=states, name=name, limit=limit, after_id=after_id
        )

    # ------------------------------------------------------------ workers

    def worker(
        self,
        queues: Sequence[str] = ("default",),
        *,
        concurrency: int = 10,
        config: WorkerConfig | None = None,
        resources: Resources | None = None,
    ) -> Worker:
        """Build a worker for `queues` (start it with `await worker.run()`)."""
        return Worker(
            self,
            queues=queues,
            concurrency=concurrency,
            config=config if config is not None else WorkerConfig(),
            resources=resources if resources is not None else Resources(),
        )

    async def run_worker(
        self,
        queues: Sequence[str] = ("default",),
        *,
        concurrency: int = 10,
        config: WorkerConfig | None = None,
        resources: Resources | None = None,
    ) -> None:
        """Run a worker until it is stopped (cancel the call, or `worker.stop()`)."""
        await self.worker(queues, concurrency=concurrency, config=config, resources=resources).run()

    def worker_main(
        self,
        queues: Sequence[str] = ("default",),
        *,
        concurrency: int = 10,
        config: WorkerConfig | None = None,
        resources: Resources | None = None,
    ) -> None:
        """Process entry point: open the store, run a worker, stop cleanly on SIGTERM/SIGINT."""

        async def main() -> None:
            async with self:
                worker = self.worker(
                    queues, concurrency=concurrency, config=config, resources=resources
                )
                worker.install_signal_handlers()
                await worker.run()

        asyncio.run(main())

    def _register_wakeup(self, event: asyncio.Event) -> None:
        self._local_wakeups.add(event)

    def _unregister_wakeup(self, event: asyncio.Event) -> None:
        self._local_wakeups.discard(event)


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME_LENGTH:
        raise ValidationError(field, value, f"a non-empty str of at most {_MAX_NAME_LENGTH} chars")


def _check_priority(priority: object) -> None:
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > 2**31 - 1:
        raise ValidationError("priority", priority, "an int (higher runs first)")


def _check_timeout(timeout: object) -> None:
    if timeout is not None and not (
        isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0
    ):
        raise ValidationError("timeout", timeout, "seconds > 0, or None for no time limit")
