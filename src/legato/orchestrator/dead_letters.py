"""The dead-letter queue: tasks that will not run again unless an operator replays them."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import TYPE_CHECKING

from legato.store.records import TaskRecord, TaskState

if TYPE_CHECKING:
    from legato.orchestrator.app import Orchestrator

__all__ = ["DeadLetterQueue"]


class DeadLetterQueue:
    """List, inspect, replay and purge dead tasks (reached through `app.dead_letters`)."""

    __slots__ = ("_app",)

    def __init__(self, app: Orchestrator) -> None:
        self._app = app

    async def list(
        self, *, queue: str | None = None, limit: int = 100
    ) -> builtins.list[TaskRecord]:
        """Return dead tasks, oldest first (without history; `inspect` one for that)."""
        return await self._app.store.list_tasks(states=[TaskState.DEAD], queue=queue, limit=limit)

    async def inspect(self, task_id: int) -> TaskRecord | None:
        """Return a task with its error, traceback, attempts and full history."""
        return await self._app.store.get_task(task_id)

    async def replay(self, task_ids: Sequence[int]) -> builtins.list[int]:
        """Send dead (or cancelled) tasks back to pending with a fresh attempt budget.

        Each keeps its id, arguments, idempotency key and history (a `replayed` event marks
        the restart). Returns the ids replayed; others are left as they were.
        """
        replayed = await self._app.store.replay(list(task_ids), self._app.clock.timestamp())
        self._app.wake_local_workers()
        return replayed

    async def purge(
        self, task_ids: Sequence[int] | None = None, *, older_than: float | None = None
    ) -> int:
        """Delete dead tasks for good: these ids, or those dead for more than `older_than` s."""
        if task_ids is not None:
            return await self._app.store.purge(list(task_ids))
        before = None if older_than is None else self._app.clock.timestamp() - older_than
        return await self._app.store.purge(before=before)
