"""Where an operating command acts: directly on the store, or through the service API.

`Backend` is what `legato submit`, `tasks`, `task`, `cancel`, `retry`, `workers`, `drain`,
`dlq` and `workflows` call. Both implementations answer with the same JSON documents (the
service's response models), so `--json` output does not depend on the mode:

- `StoreBackend` opens an `Orchestrator` on the store URL (migrating it if needed);
- `ServiceBackend` uses the `ServiceClient`, with its retries, cache and disk snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from legato.cli.client import (
    CLIENT_RETRY,
    ConflictError,
    JsonObject,
    NotFoundError,
    ServiceClient,
    Snapshot,
    SnapshotSource,
)
from legato.cli.options import CliOptions
from legato.cli.task_imports import import_tasks
from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError
from legato.kernel.retry import RetryPolicy
from legato.orchestrator.app import Orchestrator
from legato.orchestrator.health import (
    HealthObservation,
    WorkerStatus,
    classify_observation,
    request_drain,
)
from legato.service.models import TaskView, WorkerView
from legato.store.records import TaskRecord, TaskState, WorkerState

__all__ = [
    "Backend",
    "ServiceBackend",
    "StoreBackend",
    "build_orchestrator",
    "open_backend",
    "parse_states",
]


def parse_states(values: Sequence[str]) -> tuple[str, ...]:
    """Check `--state` values against the task states; return them lower-cased."""
    known = [state.value for state in TaskState]
    states = []
    for value in values:
        if value.lower() not in known:
            raise ValidationError("--state", value, f"one of {', '.join(known)}")
        states.append(value.lower())
    return tuple(states)


class Backend(Protocol):
    """The operations behind the operating commands (tasks, workers, dead letters)."""

    @property
    def clock(self) -> Clock:
        """The clock `--wait` polls on."""
        ...

    async def submit(
        self,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        queue: str | None,
        priority: int | None,
        delay: float | None,
        idempotency_key: str | None,
    ) -> JsonObject:
        """Submit a registered task; return it."""
        ...

    async def tasks(
        self, *, states: Sequence[str], queue: str | None, name: str | None, limit: int
    ) -> list[JsonObject]:
        """Tasks oldest first, filtered."""
        ...

    async def task(self, task_id: int) -> JsonObject:
        """One task with its history (NotFoundError if unknown)."""
        ...

    async def cancel(self, task_id: int) -> JsonObject:
        """Cancel a task (ConflictError if it already finished)."""
        ...

    async def retry(self, task_id: int) -> JsonObject:
        """Run a dead or cancelled task again (ConflictError otherwise)."""
        ...

    async def workers(self) -> Snapshot[list[JsonObject]]:
        """The worker registry with each worker's health."""
        ...

    async def drain(self, worker_id: str) -> JsonObject:
        """Drain a worker."""
        ...

    async def dead_letters(self, *, queue: str | None, limit: int) -> list[JsonObject]:
        """Dead tasks, oldest first."""
        ...

    async def replay(self, task_ids: Sequence[int]) -> JsonObject:
        """Replay dead tasks: {"replayed": [...], "skipped": [...]}."""
        ...

    async def purge(self, task_ids: Sequence[int], *, older_than: float | None) -> JsonObject:
        """Delete dead tasks for good: {"purged": count}."""
        ...

    async def workflows(self) -> list[JsonObject]:
        """Durable workflows."""
        ...


def _view(record: TaskRecord, *, history: bool = False) -> JsonObject:
    return TaskView.of(record, history=history).model_dump(mode="json")


class StoreBackend:
    """Operations run directly on the store through an open `Orchestrator`."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._app = orchestrator

    @property
    def clock(self) -> Clock:
        """The orchestrator's clock."""
        return self._app.clock

    async def submit(
        self,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        queue: str | None,
        priority: int | None,
        delay: float | None,
        idempotency_key: str | None,
    ) -> JsonObject:
        """Validate against the imported task's signature, store it, return it."""
        if name not in self._app.task_names:
            known = ", ".join(self._app.task_names) or "none: pass --import MODULE"
            raise ValidationError(
                "NAME",
                name,
                f"a task registered by an --import module ({known}), or submit through a "
                "service that has it (--url)",
            )
        task_id = await self._app.submit(
            name,
            *args,
            queue=queue,
            priority=priority,
            delay=delay,
            idempotency_key=idempotency_key,
            kwargs=kwargs,
        )
        return await self.task(task_id)

    async def tasks(
        self, *, states: Sequence[str], queue: str | None, name: str | None, limit: int
    ) -> list[JsonObject]:
        """Read tasks from the store, every filter applied in SQL."""
        wanted = [TaskState(state) for state in states]
        records = await self._app.store.list_tasks(
            states=wanted, queue=queue, name=name, limit=limit
        )
        return [_view(record) for record in records]

    async def _record(self, task_id: int) -> TaskRecord:
        record = await self._app.get_task(task_id)
        if record is None:
            raise NotFoundError(
                f"no task with id {task_id}", status=404, code="not_found", details={"id": task_id}
            )
        return record

    async def task(self, task_id: int) -> JsonObject:
        """One task with its history."""
        return _view(await self._record(task_id), history=True)

    async def cancel(self, task_id: int) -> JsonObject:
        """Cancel a waiting or running task; a finished one is a conflict."""
        record = await self._record(task_id)
        if record.state.terminal:
            raise ConflictError(
                f"task {task_id} is already {record.state.value}; only waiting or running "
                "tasks can be cancelled",
                status=409,
                code="conflict",
            )
        await self._app.cancel(task_id)
        return await self.task(task_id)

    async def retry(self, task_id: int) -> JsonObject:
        """Replay a dead or cancelled task; any other state is a conflict."""
        record = await self._record(task_id)
        if not await self._app.dead_letters.replay([task_id]):
            raise ConflictError(
                f"task {task_id} is {record.state.value}; only dead or cancelled tasks can be "
                "retried",
                status=409,
                code="conflict",
            )
        return await self.task(task_id)

    async def workers(self) -> Snapshot[list[JsonObject]]:
        """Registered workers, each judged by the health policy from its heartbeat age."""
        now = self._app.clock.timestamp()
        views = []
        for record in await self._app.store.list_workers():
            # One observation, no history: the service's registry adds hysteresis over time.
            observation = HealthObservation(heartbeat_age=max(0.0, now - record.heartbeat_at))
            health, reason = classify_observation(observation)
            status = WorkerStatus(health=health, changed_at=now, reason=reason)
            if record.state == WorkerState.DRAINING:
                status = request_drain(status, now)
            views.append(WorkerView.of(record, status, now).model_dump(mode="json"))
        return Snapshot(views, now, SnapshotSource.LIVE)

    async def drain(self, worker_id: str) -> JsonObject:
        """Write the drain to the store; the worker sees it at its next heartbeat."""
        if not await self._app.store.set_worker_state(worker_id, WorkerState.DRAINING):
            raise NotFoundError(
                f"no live worker with id {worker_id}",
                status=404,
                code="not_found",
                details={"id": worker_id},
            )
        now = self._app.clock.timestamp()
        for record in await self._app.store.list_workers():
            if record.worker_id == worker_id:
                observation = HealthObservation(heartbeat_age=max(0.0, now - record.heartbeat_at))
                health, _ = classify_observation(observation)
                status = request_drain(WorkerStatus(health=health, changed_at=now), now)
                return WorkerView.of(record, status, now).model_dump(mode="json")
        # Deregistered between the two reads: it stopped, which is where a drain ends anyway.
        return {"id": worker_id, "state": "stopped", "reason": "stopped"}

    async def dead_letters(self, *, queue: str | None, limit: int) -> list[JsonObject]:
        """Dead tasks from the store."""
        return [_view(r) for r in await self._app.dead_letters.list(queue=queue, limit=limit)]

    async def replay(self, task_ids: Sequence[int]) -> JsonObject:
        """Replay dead or cancelled tasks; report the others as skipped."""
        wanted = sorted(set(task_ids))
        replayed = await self._app.dead_letters.replay(wanted)
        done = set(replayed)
        return {"replayed": replayed, "skipped": [i for i in wanted if i not in done]}

    async def purge(self, task_ids: Sequence[int], *, older_than: float | None) -> JsonObject:
        """Delete dead tasks: these ids, or those dead for longer than `older_than` seconds."""
        if task_ids:
            count = await self._app.dead_letters.purge(list(task_ids))
        else:
            count = await self._app.dead_letters.purge(older_than=older_than)
        return {"purged": count}

    async def workflows(self) -> list[JsonObject]:
        """Always empty: the durable workflow engine is not built yet."""
        return []


class ServiceBackend:
    """Operations sent to the operator service through the `ServiceClient`."""

    def __init__(self, client: ServiceClient, clock: Clock) -> None:
        self._client = client
        self._clock = clock

    @property
    def clock(self) -> Clock:
        """The client's clock."""
        return self._clock

    async def submit(
        self,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        queue: str | None,
        priority: int | None,
        delay: float | None,
        idempotency_key: str | None,
    ) -> JsonObject:
        """POST /tasks."""
        return await self._client.submit(
            name,
            args,
            kwargs,
            queue=queue,
            priority=priority,
            delay=delay,
            idempotency_key=idempotency_key,
        )

    async def tasks(
        self, *, states: Sequence[str], queue: str | None, name: str | None, limit: int
    ) -> list[JsonObject]:
        """GET /tasks, following the cursor until `limit` tasks or the end."""
        found: list[JsonObject] = []
        cursor: str | None = None
        while len(found) < limit:
            page = await self._client.tasks(
                states=states, queue=queue, name=name, limit=min(500, limit), cursor=cursor
            )
            found.extend(page["items"][: limit - len(found)])
            cursor = page.get("next_cursor")
            if cursor is None:
                break
        return found

    async def task(self, task_id: int) -> JsonObject:
        """GET /tasks/{id}."""
        return await self._client.task(task_id)

    async def cancel(self, task_id: int) -> JsonObject:
        """POST /tasks/{id}/cancel."""
        return await self._client.cancel(task_id)

    async def retry(self, task_id: int) -> JsonObject:
        """POST /tasks/{id}/retry."""
        return await self._client.retry(task_id)

    async def workers(self) -> Snapshot[list[JsonObject]]:
        """GET /workers (cached; the disk snapshot when the service is unreachable)."""
        return await self._client.workers()

    async def drain(self, worker_id: str) -> JsonObject:
        """POST /workers/{id}/drain."""
        return await self._client.drain(worker_id)

    async def dead_letters(self, *, queue: str | None, limit: int) -> list[JsonObject]:
        """GET /dlq."""
        return await self._client.dead_letters(queue=queue, limit=limit)

    async def replay(self, task_ids: Sequence[int]) -> JsonObject:
        """POST /dlq/replay."""
        return await self._client.replay(task_ids)

    async def purge(self, task_ids: Sequence[int], *, older_than: float | None) -> JsonObject:
        """DELETE /dlq/{id} for each id (the API has no purge by age)."""
        if older_than is not None or not task_ids:
            raise ValidationError(
                "--older-than",
                older_than,
                "task ids in service mode (purging by age works on the store: --store)",
            )
        for task_id in task_ids:
            await self._client.purge(task_id)
        return {"purged": len(task_ids)}

    async def workflows(self) -> list[JsonObject]:
        """GET /workflows."""
        return await self._client.workflows()


def build_orchestrator(
    options: CliOptions, imports: Sequence[str], *, clock: Clock | None = None
) -> Orchestrator:
    """An orchestrator on the selected store with the `--import` modules' tasks registered."""
    orchestrator = Orchestrator(options.settings().store.url, clock=clock)
    import_tasks(orchestrator, imports)
    return orchestrator


@contextlib.asynccontextmanager
async def open_backend(
    options: CliOptions,
    *,
    imports: Sequence[str] = (),
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Backend]:
    """Open the backend `options` select, and close it on exit."""
    clock = clock if clock is not None else RealClock()
    settings = options.settings()
    if options.service_url is not None:
        client = ServiceClient(
            options.service_url,
            token=options.api_token(settings),
            clock=clock,
            rng=rng if rng is not None else random.Random(),
            retry=_with_retries(options.retries),
            snapshot_dir=options.snapshot_dir(settings),
        )
        async with client:
            yield ServiceBackend(client, clock)
        return
    orchestrator = Orchestrator(settings.store.url, clock=clock, rng=rng)
    import_tasks(orchestrator, imports)
    async with orchestrator:
        yield StoreBackend(orchestrator)


def _with_retries(retries: int) -> RetryPolicy:
    return dataclasses.replace(CLIENT_RETRY, max_attempts=retries + 1)
