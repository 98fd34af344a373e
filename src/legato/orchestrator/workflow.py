"""Durable workflows (sagas): registration, start, the run loop, compensation, inspection.

engine = WorkflowEngine(app)

@engine.workflow(name="bracket")
async def bracket(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    entry = await ctx.step(place_entry, order, compensate=close_position)
    stop = await ctx.step(place_stop_loss, entry, retry=STOP_RETRY)
    target = await ctx.step(place_take_profit, entry, compensate=cancel_order)
    return {"entry": entry, "stop": stop, "target": target}

async with app:
    workflow_id = await engine.start("bracket", {"symbol": "BTC-USD"}, idempotency_key="b-1")

Each run of a workflow is a task on the orchestrator (named `legato.workflow:<name>`), so
leases, heartbeats, the reaper and workers apply to it unchanged. The workflow row points at
the task that runs it; a run replays the function from the top against the journal (see
`legato.orchestrator.workflow_context`). See docs/concepts/workflows.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from legato.kernel.errors import ValidationError, classify
from legato.kernel.retry import Jitter, RetryPolicy
from legato.orchestrator.group_commit import GroupCommit
from legato.orchestrator.task import TaskContext
from legato.orchestrator.workflow_context import (
    Compensation,
    Suspended,
    WorkflowContext,
    invoke,
    leave_step_scope,
    step_scope,
)
from legato.orchestrator.workflow_errors import NonDeterminismError, StepFailedError
from legato.store.database import Row
from legato.store.errors import StaleLeaseError, StoreUnavailableError
from legato.store.workflow_records import (
    JournalEntry,
    JournalWrite,
    NewWorkflow,
    Transition,
    WorkflowRecord,
    WorkflowState,
)
from legato.store.workflow_store import WorkflowStore

if TYPE_CHECKING:
    import random

    from legato.orchestrator.app import Orchestrator

__all__ = [
    "DEFAULT_STEP_RETRY",
    "WORKFLOW_RUN_RETRY",
    "WorkflowDefinition",
    "WorkflowEngine",
]

_log = structlog.get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

TASK_PREFIX = "legato.workflow:"
"""Prefix of the task name each registered workflow runs as."""

DEFAULT_STEP_RETRY = RetryPolicy(
    max_attempts=3, initial_delay=0.5, max_delay=30.0, jitter=Jitter.FULL
)
"""A step's default: three attempts, transient errors only, 0.5 s doubling with full jitter."""

WORKFLOW_RUN_RETRY = RetryPolicy(
    max_attempts=1_000, initial_delay=0.1, max_delay=30.0, jitter=Jitter.FULL
)
"""The run task's policy: a run only fails when its worker dies or the store is
unreachable, and the workflow must outlive many of those, so it retries (almost) forever."""


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    """A registered workflow: its function and the task options its runs use."""

    name: str
    fn: Callable[..., Awaitable[Any]]
    queue: str
    priority: int
    task_name: str


class WorkflowEngine:
    """Registry of workflows on one `Orchestrator`, and the entry points to start and inspect.

    `step_retry` is the retry policy of steps (and compensations) that name none.
    """

    def __init__(self, app: Orchestrator, *, step_retry: RetryPolicy = DEFAULT_STEP_RETRY) -> None:
        if not isinstance(step_retry, RetryPolicy):
            raise ValidationError("step_retry", step_retry, "a legato.kernel.retry.RetryPolicy")
        self.app = app
        self.step_retry = step_retry
        self._definitions: dict[str, WorkflowDefinition] = {}
        self._store: WorkflowStore | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        # Group commits: concurrent runs in this process share transactions (and fsyncs).
        self._begins: GroupCommit[int, WorkflowRecord | None] = GroupCommit(self._flush_begins)
        self._journal: GroupCommit[JournalWrite, bool] = GroupCommit(self._flush_journal)
        self._ends: GroupCommit[tuple[Transition, JournalWrite | None], tuple[bool, bool]] = (
            GroupCommit(self._flush_ends)
        )
        # Workers claiming a run task wake its workflow in the claim's transaction
        # (PostgreSQL); every engine of the app shares the one rider.
        if app.claim_rider is None:
            app.claim_rider = WakeOnClaim(app)
        rider = app.claim_rider
        self._wake = rider if isinstance(rider, WakeOnClaim) else None

    @property
    def store(self) -> WorkflowStore:
        """The workflow store on the app's open database."""
        database = self.app.store.database
        if self._store is None or self._store.database is not database:
            self._store = WorkflowStore(database)
        return self._store

    @property
    def rng(self) -> random.Random:
        """The app's seeded randomness (step retry jitter, journaled seeds)."""
        return self.app.rng

    # ------------------------------------------------------------ registry

    def workflow(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        retry: RetryPolicy = WORKFLOW_RUN_RETRY,
    ) -> Callable[[F], F]:
        """Decorator: register `async def fn(ctx: WorkflowContext, input)` as a workflow.

        `name` (default `module.qualname`) is what `start` takes and what the store keeps:
        keep it stable. Runs are tasks on `queue` with `priority`; `retry` is the policy
        of the run task (how often a run killed with its worker is tried again).
        """

        def register(function: F) -> F:
            # Checked through a variable: the TypeGuard would otherwise narrow away F.
            is_async = inspect.iscoroutinefunction(function)
            if not is_async:
                raise ValidationError("workflow", function, "an async function taking (ctx, input)")
            workflow_name = (
                name if name is not None else f"{function.__module__}.{function.__qualname__}"
            )
            if not isinstance(workflow_name, str) or not workflow_name or len(workflow_name) > 180:
                raise ValidationError("name", workflow_name, "a non-empty str of at most 180 chars")
            existing = self._definitions.get(workflow_name)
            if existing is not None and existing.fn is not function:
                raise ValidationError("name", workflow_name, "a workflow name not already used")
            definition = WorkflowDefinition(
                name=workflow_name,
                fn=function,
                queue=queue,
                priority=priority,
                task_name=TASK_PREFIX + workflow_name,
            )

            async def run(ctx: TaskContext) -> Any:
                return await self.run(ctx)

            run.__qualname__ = definition.task_name
            self.app.task(
                name=definition.task_name,
                queue=queue,
                priority=priority,
                retry=retry,
            )(run)
            self._definitions[workflow_name] = definition
            return function

        return register

    def definition(self, workflow: str | Callable[..., Any]) -> WorkflowDefinition:
        """Return the registered definition of `workflow` (a name or the function)."""
        if isinstance(workflow, str):
            found = self._definitions.get(workflow)
        else:
            found = next((d for d in self._definitions.values() if d.fn is workflow), None)
        if found is None:
            label = workflow if isinstance(workflow, str) else repr(workflow)
            known = ", ".join(sorted(self._definitions)) or "none registered yet"
            raise ValidationError("workflow", label, f"a registered workflow ({known})")
        return found

    @property
    def workflow_names(self) -> tuple[str, ...]:
        """Names of every registered workflow."""
        return tuple(sorted(self._definitions))

    # ------------------------------------------------------------ start and operate

    async def start(
        self,
        workflow: str | Callable[..., Any],
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        run_at: datetime | float | None = None,
        delay: float | None = None,
    ) -> int:
        """Start a workflow with JSON `input`; return its id.

        The workflow row and the task that will run it are written in one transaction.
        With an `idempotency_key` that already exists nothing is written and the existing
        workflow's id is returned, whatever its state. Concurrent starts of this process
        share transactions (group commit, see `WorkflowStore.start`); the input is
        validated first, so a bad call fails alone and writes nothing.
        """
        definition = self.definition(workflow)
        try:
            payload = json.dumps(input, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            raise ValidationError("input", input, f"a JSON-serializable value ({error})") from error
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str)
            or not idempotency_key
            or len(idempotency_key) > 400
        ):
            raise ValidationError(
                "idempotency_key", idempotency_key, "a non-empty str of at most 400 chars"
            )
        call = self.app.call(definition.task_name, run_at=run_at, delay=delay)
        workflow_id, _ = await self.store.start(
            NewWorkflow(definition.name, payload, idempotency_key),
            call.task,
            self.app.clock.timestamp(),
        )
        self.app.wake_local_workers()
        return workflow_id

    async def drain(self) -> None:
        """Finish the starts already handed over to the store and refuse new ones."""
        if self._store is not None:
            await self._store.drain()

    async def get_workflow(self, workflow_id: int) -> WorkflowRecord | None:
        """Return a workflow with its journal (steps, sleeps, compensations) and history."""
        if not isinstance(workflow_id, int) or isinstance(workflow_id, bool):
            raise ValidationError("workflow_id", workflow_id, "an int workflow id")
        return await self.store.get(workflow_id)

    async def list_workflows(
        self,
        *,
        states: Sequence[WorkflowState] = (),
        name: str | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[WorkflowRecord]:
        """Return workflows (without journal or history) oldest first, optionally filtered."""
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit", limit, "an int from 1 to 10000")
        for state in states:
            if not isinstance(state, WorkflowState):
                raise ValidationError("states", state, "WorkflowState values")
        return await self.store.list(states=states, name=name, limit=limit, after_id=after_id)

    async def cancel(self, workflow_id: int) -> WorkflowState:
        """Cancel a workflow: a pending or sleeping one at once; a running one is told to stop.

        A running workflow's task is cancelled through the orchestrator: the worker stops
        the run and the run records the cancellation. No compensation runs. Returns the
        state after the call.
        """
        state, task_id = await self.store.cancel(workflow_id, self.app.clock.timestamp())
        if state in (WorkflowState.RUNNING, WorkflowState.COMPENSATING) and task_id is not None:
            await self.app.cancel(task_id)
        return state

    # ------------------------------------------------------------ running

    async def _flush_begins(self, task_ids: Sequence[int]) -> list[WorkflowRecord | None]:
        # Not durable: a lost "running" mark only means the next run marks it again.
        found = await self.store.begin_many(task_ids, self.app.clock.timestamp(), durable=False)
        return [found.get(task_id) for task_id in task_ids]

    async def _flush_journal(self, writes: Sequence[JournalWrite]) -> list[bool]:
        return await self.store.append_many(writes)

    async def _flush_ends(
        self, ends: Sequence[tuple[Transition, JournalWrite | None]]
    ) -> list[tuple[bool, bool]]:
        # Durable only if a step's entry rides along: a lost end alone only means the task
        # runs again and replays to it.
        return await self.store.end_many(ends, self.app.clock.timestamp())

    async def journal(self, write: JournalWrite) -> bool:
        """Journal one entry, grouped with concurrent writes into one durable transaction."""
        return await self._journal.submit(write)

    def retry_delay(self, policy: RetryPolicy, attempt: int, error: BaseException) -> float:
        """The wait before retrying a step after failed `attempt` (a retry-after is a floor)."""
        delay = policy.delay(attempt, self.app.rng)
        hint = getattr(error, "retry_after", None)
        return max(delay, float(hint)) if isinstance(hint, int | float) else delay

    async def suspend(self, ctx: WorkflowContext, entry: JournalEntry, wake_at: float) -> None:
        """Journal a sleep and hand the workflow to a task due at `wake_at` (one transaction)."""
        definition = self.definition(ctx.name)
        call = self.app.call(definition.task_name, run_at=wake_at)
        next_task = await self.store.sleep(
            ctx.workflow_id,
            ctx.task.task_id,
            ctx.task.fencing_token,
            entry,
            call.task,
            self.app.clock.timestamp(),
        )
        if next_task is None:
            raise StaleLeaseError(
                ctx.task.task_id, ctx.task.fencing_token, workflow_id=ctx.workflow_id
            )
        self._wake_at(wake_at)

    def _wake_at(self, wake_at: float) -> None:
        # Wake this process's workers when the continuation falls due, so they need not poll
        # for it; workers of other processes find it at their next poll.
        loop = asyncio.get_running_loop()
        delay = max(0.0, wake_at - self.app.clock.timestamp())
        handle = loop.call_at(loop.time() + delay, self._wake_fired)
        self._timers.add(handle)

    def _wake_fired(self) -> None:
        self._timers = {
            timer
            for timer in self._timers
            if not timer.cancelled() and timer.when() > asyncio.get_running_loop().time()
        }
        self.app.wake_local_workers()

    def close(self) -> None:
        """Cancel pending local wake-up timers (the continuations stay in the store)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def run(self, task: TaskContext) -> dict[str, Any]:
        """Run (or resume) the workflow that task `task` points at; the run task's body.

        Returns a summary for the task's result: the workflow id and where this run left it.
        """
        store = self.store
        # A first run woken by its claim (`WakeOnClaim`) is ready; any other is begun here.
        record = self._wake.woken.pop(task.task_id, None) if self._wake is not None else None
        if record is None:
            record = await self._begins.submit(task.task_id)
        if record is None:
            # A later task runs this workflow now (this one was superseded): nothing to do.
            return {"workflow_id": None, "state": "superseded"}
        summary = {"workflow_id": record.workflow_id, "state": record.state.value}
        if record.state.terminal:
            return summary
        definition = self._definitions.get(record.name)
        if definition is None:
            error = ValidationError("workflow", record.name, "a workflow registered in this app")
            await self._end(record, task, WorkflowState.DEAD, "unknown_workflow", error=str(error))
            return {**summary, "state": WorkflowState.DEAD.value}
        ctx = WorkflowContext(
            self,
            workflow_id=record.workflow_id,
            name=record.name,
            input=json.loads(record.payload),
            task=task,
            journal=record.journal,
        )
        compensating = record.state is WorkflowState.COMPENSATING
        try:
            value = await definition.fn(ctx, ctx.input)
        except Suspended:
            return {**summary, "state": WorkflowState.SLEEPING.value}
        except asyncio.CancelledError:
            # The step that ended last stays journaled, so a later run does not repeat it.
            with contextlib.suppress(StaleLeaseError, StoreUnavailableError):
                await ctx.flush_journal()
            if await store.cancel_requested(task.task_id):
                await self._end(record, task, WorkflowState.CANCELLED, "cancelled")
            raise
        except NonDeterminismError as error:
            return await self._dead(record, task, ctx, error)
        except Exception as error:
            if ctx.violation is not None:
                return await self._dead(record, task, ctx, ctx.violation)
            if _lost_lease(error):
                raise
            return await self._compensate(record, task, ctx, error, compensating)
        if ctx.violation is not None:
            return await self._dead(record, task, ctx, ctx.violation)
        if compensating:
            # The journal says this workflow failed, yet its replay succeeded.
            violation = NonDeterminismError(
                record.workflow_id,
                ctx.position,
                "a failure (the workflow was compensating)",
                "a successful return",
            )
            return await self._dead(record, task, ctx, violation)
        try:
            result = json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            invalid = ValidationError("result", value, f"a JSON-serializable value ({error})")
            return await self._compensate(record, task, ctx, invalid, compensating)
        # The last step's entry and the success commit together (one durable transaction).
        last = ctx.take_deferred()
        journaled, _ = await self._ends.submit(
            (
                Transition(
                    record.workflow_id, task.task_id, WorkflowState.SUCCEEDED, "succeeded", result
                ),
                last,
            )
        )
        if not journaled:
            assert last is not None  # only an entry can fail to be journaled
            raise StaleLeaseError(
                task.task_id,
                task.fencing_token,
                workflow_id=record.workflow_id,
                step_index=last.entry.index,
            )
        return {**summary, "state": WorkflowState.SUCCEEDED.value}

    async def _end(
        self,
        record: WorkflowRecord,
        task: TaskContext,
        state: WorkflowState,
        reason: str,
        *,
        result: str | None = None,
        error: str | None = None,
        durable: bool = True,
    ) -> bool:
        changed = await self.store.transition(
            record.workflow_id,
            task.task_id,
            state,
            reason,
            self.app.clock.timestamp(),
            result=result,
            error=error,
            durable=durable,
        )
        if changed:
            _log.info("workflow ended", workflow_id=record.workflow_id, state=state.value)
        return changed

    async def _dead(
        self,
        record: WorkflowRecord,
        task: TaskContext,
        ctx: WorkflowContext,
        error: NonDeterminismError,
    ) -> dict[str, Any]:
        await ctx.flush_journal()
        _log.error(
            "workflow is not deterministic", workflow_id=record.workflow_id, error=str(error)
        )
        await self._end(record, task, WorkflowState.DEAD, "non_deterministic", error=str(error))
        return {"workflow_id": record.workflow_id, "state": WorkflowState.DEAD.value}

    async def _compensate(
        self,
        record: WorkflowRecord,
        task: TaskContext,
        ctx: WorkflowContext,
        failure: Exception,
        already: bool,
    ) -> dict[str, Any]:
        # Compensations record their outcome on the journal's rows: write them all first.
        await ctx.flush_journal()
        summary: dict[str, Any] = {"workflow_id": record.workflow_id}
        reason = "step_failed" if isinstance(failure, StepFailedError) else "failed"
        if not already:
            text = f"{type(failure).__name__}: {failure}"
            if not await self._end(record, task, WorkflowState.COMPENSATING, reason, error=text):
                return {**summary, "state": "superseded"}
        for undo in reversed(ctx.compensations):
            entry = ctx.journal_entry(undo.index)
            done = entry.compensation_state if entry is not None else None
            if done == "compensated":
                continue
            problem = (
                entry.compensation_error if done == "failed" and entry is not None else None
            ) or await self._run_compensation(record, task, undo)
            if problem is not None:
                detail = f"compensation of step {undo.step!r} (#{undo.index}) failed: {problem}"
                await self._end(
                    record, task, WorkflowState.DEAD, "compensation_failed", error=detail
                )
                return {**summary, "state": WorkflowState.DEAD.value}
        await self._end(record, task, WorkflowState.COMPENSATED, "compensated")
        return {**summary, "state": WorkflowState.COMPENSATED.value}

    async def _run_compensation(
        self, record: WorkflowRecord, task: TaskContext, undo: Compensation
    ) -> str | None:
        """Run one undo under its retry policy and journal how it ended; return the error."""
        clock = self.app.clock
        attempt = 0
        problem: str | None = None
        while True:
            attempt += 1
            token = step_scope(record.workflow_id, undo.index, undo.step, attempt)
            try:
                await invoke(undo.fn, (undo.result,))
            except Exception as error:
                kind = classify(error)
                if undo.retry.should_retry(attempt, kind):
                    await clock.sleep(self.retry_delay(undo.retry, attempt, error))
                    continue
                problem = f"{kind.value}: {type(error).__name__}: {error}"
            finally:
                leave_step_scope(token)
            break
        written = await self.store.record_compensation(
            record.workflow_id,
            task.task_id,
            task.fencing_token,
            undo.index,
            "failed" if problem is not None else "compensated",
            problem,
            clock.timestamp(),
        )
        if not written:
            raise StaleLeaseError(task.task_id, task.fencing_token, workflow_id=record.workflow_id)
        return problem


class WakeOnClaim:
    """A `ClaimRider`: claiming workflow run tasks marks their workflows running.

    The wake-up (`WorkflowStore.wake_statement`) rides in the claim's last round trip and
    commits with it: one transaction and one round trip less per batch of runs, and no
    moment when a run task is leased while its workflow still reads pending. The records
    of first runs wait in `woken` until their run takes them; a workflow woken from a
    sleep, or run again, needs its journal, which its run reads as before.
    """

    __slots__ = ("_app", "_store", "woken")

    def __init__(self, app: Orchestrator) -> None:
        self._app = app
        self._store: WorkflowStore | None = None
        self.woken: dict[int, WorkflowRecord] = {}

    def claim_statements(
        self, tasks: Sequence[tuple[int, str]], now: float
    ) -> Sequence[tuple[str, Sequence[Any]]]:
        """The wake-up of the workflows of the run tasks among `tasks`, if there are any."""
        runs = [task_id for task_id, name in tasks if name.startswith(TASK_PREFIX)]
        if not runs:
            return ()
        database = self._app.store.database
        if self._store is None or self._store.database is not database:
            self._store = WorkflowStore(database)
        return [self._store.wake_statement(runs, now)]

    def claimed(self, results: Sequence[list[Row]], now: float) -> None:
        """Keep the records of the first runs the claim woke, for their runs."""
        if results:
            self.woken.update(WorkflowStore.first_runs(results[0], now))


def _lost_lease(error: BaseException) -> bool:
    # The run cannot go on (someone else owns it, or the store is gone): let the task
    # machinery retry or discard this attempt rather than compensating.
    return isinstance(error, StaleLeaseError | StoreUnavailableError)
