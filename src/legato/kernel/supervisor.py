"""Supervised loops: named background work that survives its own errors and stops cleanly.

A `Supervisor` owns one asyncio task per loop. Each loop calls its async function every
`interval` seconds (start to start, plus up to `jitter` seconds of random spread), each
iteration under a `timeout`. An iteration that raises or times out is logged and counted;
the loop then waits an error backoff from its `RetryPolicy` (growing with consecutive
failures, reset by a success) and carries on. One loop's failure never touches another.

`stop(grace=...)` asks every loop to finish: idle loops end at once, a loop in the middle of
an iteration gets `grace` seconds to complete it and is then cancelled. `health()` returns a
frozen `LoopHealth` per loop.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

import structlog

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError
from legato.kernel.retry import Jitter, RetryPolicy

__all__ = ["LoopHealth", "LoopState", "Supervisor"]

_log = structlog.get_logger(__name__)

# Loops never give up, so only the delays matter: 1 s after the first failure, doubling to 60 s.
_DEFAULT_BACKOFF = RetryPolicy(
    initial_delay=1.0, max_delay=60.0, multiplier=2.0, jitter=Jitter.NONE
)


class LoopState(enum.Enum):
    """Where a supervised loop stands."""

    STARTING = "starting"  # added, first iteration not finished yet
    RUNNING = "running"  # last iteration succeeded; running or waiting for the next one
    BACKING_OFF = "backing_off"  # last iteration failed; waiting out the error backoff
    STOPPED = "stopped"  # stopped by the supervisor or removed
    CRASHED = "crashed"  # the loop's task died of something it could not contain


@dataclass(frozen=True, slots=True)
class LoopHealth:
    """A supervised loop's health at one instant."""

    name: str
    state: LoopState
    iterations: int
    failures: int
    consecutive_failures: int
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    in_iteration: bool


@dataclass(slots=True)
class _Loop:
    # Mutable bookkeeping for one loop; only `LoopHealth` copies ever leave the supervisor.
    name: str
    fn: Callable[[], Awaitable[object]]
    interval: float
    jitter: float
    timeout: float | None
    backoff: RetryPolicy
    run_immediately: bool
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    in_iteration: bool = False
    state: LoopState = LoopState.STARTING
    iterations: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None

    def health(self) -> LoopHealth:
        return LoopHealth(
            name=self.name,
            state=self.state,
            iterations=self.iterations,
            failures=self.failures,
            consecutive_failures=self.consecutive_failures,
            last_success_at=self.last_success_at,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            in_iteration=self.in_iteration,
        )


class Supervisor:
    """Owns named background loops: starts, triggers, reports on and stops them.

    Use `async with Supervisor(clock=..., rng=...) as supervisor:` or `start()` / `stop()`.
    Loops added before `start()` begin when it is called; loops added while running begin at
    once. `rng` is required as soon as any loop uses jitter or a jittered backoff policy.
    """

    __slots__ = ("_clock", "_loops", "_rng", "_running")

    def __init__(self, *, clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self._clock: Clock = clock if clock is not None else RealClock()
        self._rng = rng
        self._loops: dict[str, _Loop] = {}
        self._running = False

    @property
    def running(self) -> bool:
        """Return True between `start()` and `stop()`."""
        return self._running

    def add_loop(
        self,
        name: str,
        fn: Callable[[], Awaitable[object]],
        *,
        interval: float,
        jitter: float = 0.0,
        timeout: float | None = None,
        backoff: RetryPolicy = _DEFAULT_BACKOFF,
        run_immediately: bool = True,
    ) -> None:
        """Register loop `name` calling `fn()` every `interval` seconds.

        `timeout` bounds each iteration (None: no bound). `backoff` gives the wait after the
        n-th consecutive failure (`backoff.delay(n)`; its `max_attempts` is ignored, loops never
        give up). With `run_immediately=False` the first iteration waits one interval.
        """
        if not name:
            raise ValidationError("name", name, "a non-empty string")
        if name in self._loops:
            raise ValidationError("name", name, f"a name not already used by a loop ({name!r} is)")
        if interval <= 0:
            raise ValidationError("interval", interval, "seconds > 0")
        if jitter < 0:
            raise ValidationError("jitter", jitter, "seconds >= 0")
        if timeout is not None and timeout <= 0:
            raise ValidationError("timeout", timeout, "seconds > 0, or None")
        if self._rng is None and jitter > 0:
            raise ValidationError(
                "rng", None, "a random.Random passed to Supervisor when jitter > 0"
            )
        if self._rng is None and backoff.jitter is not Jitter.NONE:
            raise ValidationError(
                "rng", None, "a random.Random passed to Supervisor when the backoff is jittered"
            )
        loop = _Loop(name, fn, interval, jitter, timeout, backoff, run_immediately)
        self._loops[name] = loop
        if self._running:
            self._launch(loop)

    async def remove_loop(self, name: str, *, grace: float = 5.0) -> LoopHealth:
        """Stop loop `name` (waiting up to `grace` for an iteration in flight) and forget it."""
        loop = self._get(name)
        await self._stop_loops([loop], grace)
        del self._loops[name]
        return loop.health()

    def trigger(self, name: str) -> None:
        """Run loop `name` now instead of at its next scheduled time (or right after the
        iteration in flight). A trigger also cuts an error backoff short."""
        self._get(name).wake.set()

    def health(self) -> dict[str, LoopHealth]:
        """Return every loop's health, by name."""
        return {name: loop.health() for name, loop in self._loops.items()}

    def loop_health(self, name: str) -> LoopHealth:
        """Return one loop's health."""
        return self._get(name).health()

    async def start(self) -> None:
        """Start every registered loop; later `add_loop` calls start theirs at once."""
        if self._running:
            raise ValidationError("state", "running", "a supervisor that is not already running")
        self._running = True
        for loop in self._loops.values():
            self._launch(loop)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop every loop: idle ones at once, iterations in flight after at most `grace` s."""
        if grace < 0:
            raise ValidationError("grace", grace, "seconds >= 0")
        loops = list(self._loops.values())
        _refuse_to_stop_own_task(loops)
        self._running = False
        await self._stop_loops(loops, grace)

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _get(self, name: str) -> _Loop:
        try:
            return self._loops[name]
        except KeyError:
            known = ", ".join(sorted(self._loops)) or "none"
            raise ValidationError("name", name, f"the name of a loop (known: {known})") from None

    def _launch(self, loop: _Loop) -> None:
        loop.stopping = False
        loop.state = LoopState.STARTING
        # Owned: kept in `loop.task`, cancelled and awaited by `_stop_loops`, and its death
        # surfaced in health and the log by `_on_task_done`.
        loop.task = asyncio.create_task(self._run(loop), name=f"legato.loop:{loop.name}")
        loop.task.add_done_callback(lambda task: self._on_task_done(loop, task))

    async def _stop_loops(self, loops: list[_Loop], grace: float) -> None:
        _refuse_to_stop_own_task(loops)
        tasks = []
        for loop in loops:
            loop.stopping = True
            loop.wake.set()
            if loop.task is not None and not loop.task.done():
                tasks.append(loop.task)
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
        finally:
            # Also when the caller of stop() is itself cancelled mid-grace: the loops must
            # not outlive their supervisor either way.
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            for loop in loops:
                if loop.state is not LoopState.CRASHED:
                    loop.state = LoopState.STOPPED
                loop.in_iteration = False
                loop.task = None

    def _on_task_done(self, loop: _Loop, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        loop.state = LoopState.CRASHED
        loop.last_error = _describe(error)
        loop.last_error_at = self._clock.now()
        _log.critical("loop_crashed", loop=loop.name, error=loop.last_error, exc_info=error)

    async def _run(self, loop: _Loop) -> None:
        if not loop.run_immediately:
            await self._wait(loop, self._next_interval(loop))
        while True:
            if _stop_requested(loop):
                return
            started = self._clock.monotonic()
            succeeded = await self._iterate(loop)
            if _stop_requested(loop):
                return
            if succeeded:
                elapsed = self._clock.monotonic() - started
                delay = max(0.0, self._next_interval(loop) - elapsed)
            else:
                delay = self._backoff(loop)
            await self._wait(loop, delay)

    async def _iterate(self, loop: _Loop) -> bool:
        loop.in_iteration = True
        try:
            if loop.timeout is None:
                await loop.fn()
            else:
                async with asyncio.timeout(loop.timeout):
                    await loop.fn()
        except TimeoutError as error:
            self._record_failure(loop, error, timed_out=True)
            return False
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            # A CancelledError nobody asked for is a bug in the loop body, not a shutdown.
            self._record_failure(loop, error, timed_out=False)
            return False
        except Exception as error:
            self._record_failure(loop, error, timed_out=False)
            return False
        finally:
            loop.in_iteration = False
        loop.iterations += 1
        loop.consecutive_failures = 0
        loop.last_success_at = self._clock.now()
        loop.state = LoopState.RUNNING
        return True

    def _record_failure(self, loop: _Loop, error: BaseException, *, timed_out: bool) -> None:
        loop.iterations += 1
        loop.failures += 1
        loop.consecutive_failures += 1
        if timed_out:
            loop.last_error = f"iteration timed out after {loop.timeout}s"
        else:
            loop.last_error = _describe(error)
        loop.last_error_at = self._clock.now()
        loop.state = LoopState.BACKING_OFF
        _log.warning(
            "loop_iteration_failed",
            loop=loop.name,
            error=loop.last_error,
            consecutive_failures=loop.consecutive_failures,
            exc_info=None if timed_out else error,
        )

    def _next_interval(self, loop: _Loop) -> float:
        if loop.jitter == 0 or self._rng is None:
            return loop.interval
        return loop.interval + self._rng.uniform(0.0, loop.jitter)

    def _backoff(self, loop: _Loop) -> float:
        attempt = loop.consecutive_failures
        if self._rng is None:  # add_loop only allows this with an unjittered policy
            return loop.backoff.backoff(attempt)
        return loop.backoff.delay(attempt, self._rng)

    async def _wait(self, loop: _Loop, delay: float) -> None:
        # Sleeps on the loop's timer (virtual under SimulatedClock) but wakes early for a
        # trigger or a stop request. The timer sets the wake event itself rather than
        # cancelling the wait (as `asyncio.timeout` would): the same wake-up at the same
        # time, without raising and catching two exceptions on every turn of every loop.
        if not loop.wake.is_set() and delay > 0:
            timer = asyncio.get_running_loop().call_later(delay, loop.wake.set)
            try:
                await loop.wake.wait()
            finally:
                timer.cancel()
        loop.wake.clear()


def _refuse_to_stop_own_task(loops: list[_Loop]) -> None:
    # Waiting for our own task to finish could only ever end by cancelling ourselves.
    current = asyncio.current_task()
    for loop in loops:
        if loop.task is not None and loop.task is current:
            raise ValidationError(
                "name",
                loop.name,
                "a loop other than the one making this call (a loop cannot stop or remove itself)",
            )


def _stop_requested(loop: _Loop) -> bool:
    # A function, not an attribute read, so the check after an await is not "unreachable"
    # to a type checker that assumes the flag cannot change while we wait.
    return loop.stopping


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
