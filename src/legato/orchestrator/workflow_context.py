"""What a running workflow sees: `WorkflowContext`, its steps, durable sleep and the journal.

A workflow function is replayed from the top every time a task runs it. Each call that
touches the outside world goes through the context and takes the next journal position:

- `await ctx.step(fn, *args)` returns the journaled result if that position is filled,
  and otherwise runs `fn` (with retries) and journals its result (or its failure);
- `await ctx.sleep(seconds)` journals the wake-up time and hands the workflow to a task
  due then; on replay it returns at once once that time has passed;
- `await ctx.now()` and `await ctx.random()` journal a clock reading and a seed, so a
  replay sees the same time and the same random numbers.

A replayed position whose kind or name differs from the call the code makes now raises
`NonDeterminismError`. While a step runs, `current_step()` gives it a `StepContext` with
a key that is the same on every attempt and every replay: guard external effects with it.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from legato.kernel.errors import ErrorKind, ValidationError, classify
from legato.kernel.retry import RetryPolicy
from legato.orchestrator.task import TaskContext
from legato.orchestrator.workflow_errors import NonDeterminismError, StepFailedError
from legato.store.errors import StaleLeaseError
from legato.store.workflow_records import JournalEntry, JournalWrite, StepKind, StepState

if TYPE_CHECKING:
    from legato.orchestrator.workflow import WorkflowEngine

__all__ = ["StepContext", "WorkflowContext", "current_step"]

_current_step: contextvars.ContextVar[StepContext] = contextvars.ContextVar("legato_step")


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a running step (or compensation) knows about itself.

    `effect_key` is the same on every attempt, every replay and every worker: pass it to
    the outside system as an idempotency key (a venue's client order id) so that a step
    run twice after a crash makes its effect once.
    """

    workflow_id: int
    index: int
    name: str
    attempt: int
    compensating: bool = False

    @property
    def effect_key(self) -> str:
        """A stable idempotency key for this step's effect (or for its compensation)."""
        suffix = "-undo" if self.compensating else ""
        return f"wf{self.workflow_id}-s{self.index}{suffix}"


def current_step() -> StepContext:
    """Return the context of the step running in this coroutine or thread.

    Raises LookupError outside a step.
    """
    return _current_step.get()


class Suspended(BaseException):
    """Raised inside a workflow to end this run: the workflow sleeps until a later task.

    A BaseException, so that `except Exception` in workflow code cannot swallow it.
    """


@dataclass(frozen=True, slots=True)
class Compensation:
    """A completed step's undo, registered in step order and run in reverse."""

    index: int
    step: str
    fn: Callable[..., Any]
    result: Any
    retry: RetryPolicy


def qualified_name(fn: Callable[..., Any]) -> str:
    """`module.qualname` of a function: how the journal names what ran at a position."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{qualname}"


async def invoke(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Call a step function: coroutines on the loop, plain functions in a thread.

    A thread keeps a blocking call from stalling the worker's heartbeats; the step's
    context travels with it (asyncio.to_thread copies context variables).
    """
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    value = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(value):
        return await value
    return value


def _encode(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ValidationError("result", value, f"a JSON-serializable value ({error})") from error


class WorkflowContext:
    """The handle a workflow function gets: steps, durable sleep, journaled time and seeds.

    Make every call that reads the outside world (I/O, the clock, randomness) through it;
    see the determinism rules in docs/concepts/workflows.md.
    """

    __slots__ = (
        "_deferred",
        "_engine",
        "_journal",
        "_position",
        "_undo",
        "_violation",
        "input",
        "name",
        "task",
        "workflow_id",
    )

    def __init__(
        self,
        engine: WorkflowEngine,
        *,
        workflow_id: int,
        name: str,
        input: Any,
        task: TaskContext,
        journal: tuple[JournalEntry, ...],
    ) -> None:
        self._engine = engine
        self.workflow_id = workflow_id
        self.name = name
        self.input = input
        self.task = task
        self._journal = {entry.index: entry for entry in journal}
        # A succeeded step's entry, held until the workflow moves on (see `flush_journal`).
        self._deferred: JournalEntry | None = None
        self._position = 0
        self._undo: list[Compensation] = []
        self._violation: NonDeterminismError | None = None

    # ------------------------------------------------------------ introspection

    @property
    def replaying(self) -> bool:
        """True while the next call will be answered from the journal."""
        return self._position in self._journal

    @property
    def position(self) -> int:
        """The journal position the next call will take."""
        return self._position

    @property
    def compensations(self) -> tuple[Compensation, ...]:
        """Undo actions of the completed steps, in step order."""
        return tuple(self._undo)

    @property
    def violation(self) -> NonDeterminismError | None:
        """The non-determinism found during this run, even if the workflow caught it."""
        return self._violation

    def journal_entry(self, index: int) -> JournalEntry | None:
        """The journal entry at `index`, as loaded or written by this run."""
        return self._journal.get(index)

    # ------------------------------------------------------------ journal

    def _replayed(self, kind: StepKind, name: str, function: str | None) -> JournalEntry | None:
        """Take the next position; return its journal entry, checking it matches the call."""
        index = self._position
        self._position += 1
        entry = self._journal.get(index)
        if entry is None:
            return None
        mismatch = entry.kind is not kind or entry.name != name
        if function is not None and entry.function is not None and entry.function != function:
            mismatch = True
        if mismatch:
            journaled = f"{entry.kind.value} {entry.name!r}"
            if entry.function and entry.kind is StepKind.STEP:
                journaled += f" ({entry.function})"
            requested = f"{kind.value} {name!r}" + (f" ({function})" if function else "")
            self._violation = NonDeterminismError(self.workflow_id, index, journaled, requested)
            raise self._violation
        return entry

    async def _write(self, entry: JournalEntry) -> None:
        await self.flush_journal()
        await self._journal_now(entry)

    async def _journal_now(self, entry: JournalEntry) -> None:
        written = await self._engine.journal(self._journal_write(entry))
        if not written:
            raise StaleLeaseError(
                self.task.task_id,
                self.task.fencing_token,
                workflow_id=self.workflow_id,
                step_index=entry.index,
            )
        self._journal[entry.index] = entry

    def _journal_write(self, entry: JournalEntry) -> JournalWrite:
        return JournalWrite(self.workflow_id, self.task.task_id, self.task.fencing_token, entry)

    async def flush_journal(self) -> None:
        """Journal the succeeded step held back, if any (durably, before going on).

        A step's entry is written when the workflow moves on: before the next step runs,
        before a sleep or any other journal write, before compensations, and at the latest
        with the workflow's end, in the end's own transaction (`take_deferred`). Until then
        only deterministic workflow code has run since the step, so a crash in between
        replays to the same point and runs the step again, as a crash just before its
        journal commit always did.
        """
        entry, self._deferred = self._deferred, None
        if entry is not None:
            await self._journal_now(entry)

    def take_deferred(self) -> JournalWrite | None:
        """Hand over the entry held back, for the engine to write with the workflow's end."""
        entry, self._deferred = self._deferred, None
        return None if entry is None else self._journal_write(entry)

    def _entry(
        self,
        index: int,
        name: str,
        kind: StepKind,
        state: StepState,
        result: str | None,
        *,
        started_at: float,
        error: str | None = None,
        function: str | None = None,
        compensation: str | None = None,
        attempts: int = 0,
    ) -> JournalEntry:
        return JournalEntry(
            index=index,
            name=name,
            kind=kind,
            state=state,
            result=result,
            error=error,
            function=function,
            compensation=compensation,
            compensation_state=None,
            compensation_error=None,
            attempts=attempts,
            started_at=started_at,
            finished_at=self._engine.app.clock.timestamp(),
        )

    # ------------------------------------------------------------ steps

    async def step(
        self,
        fn: Callable[..., Awaitable[Any]] | Callable[..., Any],
        *args: Any,
        name: str | None = None,
        compensate: Callable[[Any], Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Run `fn(*args)` once for this workflow and return its (JSON) result.

        On replay the journaled result comes back without calling `fn`. A failing attempt
        is retried under `retry` (the engine's step policy by default; permanent errors
        and unknown outcomes are never retried); after the last attempt the failure is
        journaled and `StepFailedError` raised. `compensate(result)` is the step's undo: it
        runs, in reverse step order, if the workflow later fails. `name` defaults to the
        function's qualified name and must be stable across deployments.
        """
        if not callable(fn):
            raise ValidationError("fn", fn, "a function (sync or async) to run as the step")
        if compensate is not None and not callable(compensate):
            raise ValidationError("compensate", compensate, "a function taking the step result")
        function = qualified_name(fn)
        step_name = name if name is not None else function
        if not isinstance(step_name, str) or not step_name or len(step_name) > 200:
            raise ValidationError("name", step_name, "a non-empty str of at most 200 chars")
        policy = retry if retry is not None else self._engine.step_retry
        index = self._position
        entry = self._replayed(StepKind.STEP, step_name, function)
        if entry is None:
            entry = await self._run_step(index, step_name, function, fn, args, compensate, policy)
        if entry.state is StepState.FAILED:
            raise StepFailedError(
                self.workflow_id,
                step_name,
                index,
                entry.error or "failed",
                _journaled_kind(entry.error),
                entry.attempts,
            )
        result = json.loads(entry.result) if entry.result is not None else None
        if compensate is not None:
            self._undo.append(Compensation(index, step_name, compensate, result, policy))
        return result

    async def _run_step(
        self,
        index: int,
        step_name: str,
        function: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        compensate: Callable[[Any], Any] | None,
        policy: RetryPolicy,
    ) -> JournalEntry:
        clock = self._engine.app.clock
        # The previous step's entry is durable before this step can act on the world.
        await self.flush_journal()
        started = clock.timestamp()
        undo_name = qualified_name(compensate) if compensate is not None else None
        attempt = 0
        while True:
            attempt += 1
            token = _current_step.set(StepContext(self.workflow_id, index, step_name, attempt))
            try:
                value = await invoke(fn, args)
                encoded = _encode(value)
            except Exception as error:
                kind = classify(error)
                if policy.should_retry(attempt, kind):
                    await clock.sleep(self._engine.retry_delay(policy, attempt, error))
                    continue
                entry = self._entry(
                    index,
                    step_name,
                    StepKind.STEP,
                    StepState.FAILED,
                    None,
                    started_at=started,
                    error=f"{kind.value}: {type(error).__name__}: {error}",
                    function=function,
                    compensation=undo_name,
                    attempts=attempt,
                )
                await self._write(entry)
                return entry
            finally:
                _current_step.reset(token)
            entry = self._entry(
                index,
                step_name,
                StepKind.STEP,
                StepState.SUCCEEDED,
                encoded,
                started_at=started,
                function=function,
                compensation=undo_name,
                attempts=attempt,
            )
            self._deferred = entry
            self._journal[index] = entry
            return entry

    # ------------------------------------------------------------ time and randomness

    async def sleep(self, seconds: float) -> None:
        """Sleep durably: the wake-up time is journaled and survives restarts.

        The run ends here and a task due at the wake-up time resumes the workflow (no
        worker slot is held meanwhile). On replay, a sleep whose time has passed returns
        at once.
        """
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not seconds >= 0
            or seconds == float("inf")
        ):
            raise ValidationError("seconds", seconds, "a finite number of seconds >= 0")
        await self._sleep_until(self._engine.app.clock.timestamp() + float(seconds))

    async def sleep_until(self, when: datetime) -> None:
        """Sleep durably until the aware datetime `when` (see `sleep`)."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise ValidationError("when", when, "an aware datetime (with a timezone)")
        await self._sleep_until(when.timestamp())

    async def _sleep_until(self, wake_at: float) -> None:
        clock = self._engine.app.clock
        index = self._position
        entry = self._replayed(StepKind.SLEEP, "sleep", None)
        if entry is not None:
            left = float(json.loads(entry.result or "0")) - clock.timestamp()
            if left > 0:
                # Woken early (clocks of two machines disagree): wait out the difference here.
                await clock.sleep(left)
            return
        now = clock.timestamp()
        entry = self._entry(
            index, "sleep", StepKind.SLEEP, StepState.SUCCEEDED, json.dumps(wake_at), started_at=now
        )
        if wake_at <= now:
            await self._write(entry)
            return
        await self.flush_journal()
        await self._engine.suspend(self, entry, wake_at)
        raise Suspended

    async def now(self) -> datetime:
        """The current time, journaled: a replay returns the same instant (aware UTC)."""
        index = self._position
        entry = self._replayed(StepKind.NOW, "now", None)
        if entry is None:
            clock = self._engine.app.clock
            stamp = clock.timestamp()
            entry = self._entry(
                index, "now", StepKind.NOW, StepState.SUCCEEDED, json.dumps(stamp), started_at=stamp
            )
            await self._write(entry)
        return datetime.fromtimestamp(float(json.loads(entry.result or "0")), tz=UTC)

    async def random(self) -> random.Random:
        """A `random.Random` seeded from a journaled seed: a replay draws the same numbers."""
        index = self._position
        entry = self._replayed(StepKind.RANDOM, "random", None)
        if entry is None:
            seed = self._engine.app.rng.getrandbits(64)
            entry = self._entry(
                index,
                "random",
                StepKind.RANDOM,
                StepState.SUCCEEDED,
                json.dumps(seed),
                started_at=self._engine.app.clock.timestamp(),
            )
            await self._write(entry)
        return random.Random(int(json.loads(entry.result or "0")))

    def __repr__(self) -> str:
        return f"WorkflowContext(workflow_id={self.workflow_id}, name={self.name!r})"


def _journaled_kind(error: str | None) -> ErrorKind:
    # Failed entries are written as "<kind>: <type>: <message>".
    head = (error or "").split(":", 1)[0]
    try:
        return ErrorKind(head)
    except ValueError:
        return ErrorKind.PERMANENT


def step_scope(workflow_id: int, index: int, name: str, attempt: int) -> contextvars.Token[Any]:
    """Make `current_step()` describe a compensation of step `index` while it runs."""
    return _current_step.set(StepContext(workflow_id, index, name, attempt, compensating=True))


def leave_step_scope(token: contextvars.Token[Any]) -> None:
    """Undo `step_scope`."""
    _current_step.reset(token)
