"""Simulated time: a virtual clock and the event loop that jumps it to the next timer.

A `SimulatedClock` is a `Clock` whose time only moves when its event loop has nothing to do.
`run_simulated` runs a coroutine on a fresh `SimulatedEventLoop`: `asyncio.sleep`,
`asyncio.timeout`, `asyncio.wait_for` and `loop.call_later` all count virtual seconds, and
whenever no callback is ready the loop moves virtual time straight to the next timer. An hour
of timers runs in milliseconds, and the same program produces the same history every run.

The rule that makes this safe: virtual time never moves while real work is in flight.

- Work sent to a thread with `loop.run_in_executor` (and so `asyncio.to_thread`) is tracked
  exactly, from submission until its result is back on the loop; meanwhile the loop waits for
  it in real time with virtual time frozen, so a 5-second timeout cannot fire because the clock
  leapt over a 20-millisecond disk write.
  Threads started any other way are invisible: anyio's `to_thread.run_sync` (which FastAPI
  uses for plain `def` routes and dependencies) hands its result back with
  `call_soon_threadsafe`, and time may leap while such a thread runs. Code meant to run on
  simulated time offloads with `run_in_executor` or `asyncio.to_thread`, or stays `async`.
- Socket I/O cannot be tracked that way: a connection registered with the selector looks the
  same whether a reply is due in a millisecond or never. Mark a real round trip explicitly with
  `async with clock.real_io():` or `await clock.wait_real(awaitable)`. As a safety net, when
  sockets other than the loop's own are registered, the loop polls them for `settle` real
  seconds before every jump, so replies that are already arriving are serviced first.
- When nothing is ready, no timer is pending and no real work is in flight, the program can
  never progress: the loop raises `SimulationDeadlock` naming the tasks still waiting, instead
  of hanging.

Reliance on asyncio internals is kept to two documented seams, the same on Python 3.11, 3.12
and 3.13 and exercised by tests/kernel/test_simulation.py:

- The loop is a public `asyncio.SelectorEventLoop` given our own selector (a public
  constructor argument). asyncio's `_run_once` asks the selector to wait for `timeout`
  seconds: 0 when callbacks are ready, None when no timer is scheduled, otherwise the
  distance to the earliest timer in loop time. Jumps and deadlock checks happen there.
- The loop shadows asyncio's private `_clock_resolution`, so that timers due now still fire
  when virtual time is far enough from zero that one float step exceeds the OS resolution.

Everything else is public: `time`, `run_in_executor`, `shutdown_default_executor`, `close`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import selectors
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import PermanentError, ValidationError

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = [
    "DEFAULT_START",
    "SimulatedClock",
    "SimulatedEventLoop",
    "SimulationDeadlock",
    "current_clock",
    "real_io",
    "run_simulated",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)
"""Where a `SimulatedClock` starts when no start is given: 2024-01-01T00:00:00Z."""

_DEFAULT_SETTLE = 0.001


def _is_finite_number(value: object) -> bool:
    """True for a finite int or float; bools are not durations."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class SimulationDeadlock(PermanentError):
    """The simulated program can never progress: nothing is ready, no timer, no real I/O.

    `tasks` names every task still waiting, with the coroutine it is running, so the operator
    can see which await nothing will ever wake.
    """

    def __init__(self, tasks: tuple[str, ...], virtual_time: float) -> None:
        waiting = "; ".join(tasks) if tasks else "no tasks"
        super().__init__(
            "simulated event loop deadlocked: no callback is ready, no timer is scheduled and "
            f"no real I/O is in flight, so nothing can ever wake the waiting tasks ({waiting}). "
            "Look for an event, queue or future that nobody sets, or mark real I/O with "
            "clock.real_io()",
            virtual_time=virtual_time,
        )
        self.tasks = tasks
        self.virtual_time = virtual_time


class SimulatedClock:
    """A `Clock` on virtual time that its `SimulatedEventLoop` jumps to the next timer.

    `now()` is `start` plus the virtual seconds elapsed; `monotonic()` is the elapsed virtual
    seconds (the loop's `time()`); `sleep()` is `asyncio.sleep` on the clock's loop. Outside a
    loop the clock stands still unless `advance()` moves it, which makes it usable in sync
    tests too. A clock belongs to at most one open loop at a time; its time carries on from
    one loop to the next.

    `settle` is how many real seconds the loop polls registered sockets before each jump (only
    when sockets other than the loop's own are registered); see the module docstring.
    """

    __slots__ = (
        "_elapsed",
        "_loop",
        "_now",
        "_now_elapsed",
        "_settle",
        "_start",
        "_start_timestamp",
    )

    def __init__(self, start: datetime | None = None, *, settle: float = _DEFAULT_SETTLE) -> None:
        if start is None:
            start = DEFAULT_START
        if not isinstance(start, datetime):
            raise ValidationError("start", start, "an aware datetime or None")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValidationError("start", start, "an aware datetime (with a tzinfo), not naive")
        if not (_is_finite_number(settle) and 0 <= settle <= 1):
            raise ValidationError("settle", settle, "real seconds between 0 and 1")
        self._start = start.astimezone(UTC)
        self._start_timestamp = self._start.timestamp()
        self._elapsed = 0.0
        # `now()` at `_now_elapsed`: code stamping one event asks for it several times.
        self._now = self._start
        self._now_elapsed = 0.0
        self._loop: SimulatedEventLoop | None = None
        self._settle = float(settle)

    @property
    def start(self) -> datetime:
        """The wall time at virtual time zero, as an aware UTC datetime."""
        return self._start

    @property
    def settle(self) -> float:
        """Real seconds the loop polls registered sockets before each jump of virtual time."""
        return self._settle

    @property
    def loop(self) -> SimulatedEventLoop | None:
        """The open loop this clock drives, or None when it is not bound to one."""
        return self._loop

    def now(self) -> datetime:
        """Return `start` plus the virtual seconds elapsed, as an aware UTC datetime."""
        elapsed = self._elapsed
        if elapsed != self._now_elapsed:
            self._now = self._start + timedelta(seconds=elapsed)
            self._now_elapsed = elapsed
        return self._now

    def timestamp(self) -> float:
        """Return `now()` as POSIX seconds."""
        return self._start_timestamp + self._elapsed

    def monotonic(self) -> float:
        """Return the virtual seconds elapsed since the clock was created (the loop's time)."""
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` of virtual time (negative means zero)."""
        finite = math.isfinite(seconds) if type(seconds) is float else _is_finite_number(seconds)
        if not finite:
            # An infinite timer would jump virtual time to infinity and break now().
            raise ValidationError("seconds", seconds, "a finite number of seconds")
        self._require_running_loop("sleep")
        await asyncio.sleep(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by `seconds` at once; timers now due fire next iteration.

        For sync tests that need time to pass without a loop, and for async tests that model a
        pause no timer stands for (a process frozen, a laptop lid closed).
        """
        # A plain float in range, the backtest runner's every bar, skips the general check.
        if type(seconds) is not float or not 0.0 <= seconds < math.inf:
            if not (_is_finite_number(seconds) and seconds >= 0):
                raise ValidationError("seconds", seconds, "a finite number of seconds >= 0")
            seconds = float(seconds)
        self._elapsed += seconds

    @contextlib.asynccontextmanager
    async def real_io(self) -> AsyncIterator[None]:
        """Freeze virtual time while the body waits on real I/O (a socket round trip).

        Inside the block the loop never jumps: it waits in real time for the reply, so a
        virtual timeout around a database query cannot fire because time leapt ahead. Keep the
        block to the real wait itself: a virtual sleep inside it would never end.
        """
        loop = self._require_running_loop("real_io")
        loop._real_work.begin()
        try:
            yield
        finally:
            loop._real_work.end()

    async def wait_real(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` with virtual time frozen: `real_io()` around one await."""
        async with self.real_io():
            return await awaitable

    def _require_running_loop(self, operation: str) -> SimulatedEventLoop:
        loop = self._loop
        if loop is None or asyncio.get_running_loop() is not loop:
            raise RuntimeError(
                f"SimulatedClock.{operation}() must be awaited on the clock's own simulated "
                "event loop (run it with run_simulated(..., clock=clock) or the pytest plugin)"
            )
        return loop

    def _bind(self, loop: SimulatedEventLoop) -> None:
        if self._loop is not None and self._loop is not loop:
            raise ValidationError(
                "clock", self, "a SimulatedClock not bound to another open event loop"
            )
        self._loop = loop

    def _unbind(self, loop: SimulatedEventLoop) -> None:
        if self._loop is loop:
            self._loop = None

    def _jump(self, seconds: float) -> None:
        # `seconds` is the earliest deadline minus now. If rounding or asyncio's one-day cap on
        # a single wait leaves us short of the deadline, the next turn jumps the rest; a
        # positive jump always moves time forward, so the loop cannot stall.
        self._elapsed += seconds

    def __repr__(self) -> str:
        return f"SimulatedClock(now={self.now().isoformat()}, elapsed={self._elapsed!r})"


@dataclass(slots=True, eq=False)
class _RealWork:
    """How many pieces of real work are in flight; shared with executor threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0

    def begin(self) -> None:
        """Count one more piece of real work."""
        with self.lock:
            self.in_flight += 1

    def end(self) -> None:
        """Count one piece of real work as finished."""
        with self.lock:
            self.in_flight -= 1

    @property
    def busy(self) -> bool:
        """True while any real work is in flight."""
        return self.in_flight > 0


class _ExecutorJob:
    """Holds virtual time still for one `run_in_executor` call, exactly as long as needed.

    The job counts as real work from submission until its result is back on the loop. If the
    caller cancels the future while the thread is still running, the job keeps counting until
    the thread really ends; if it is cancelled before it starts, it stops counting at once (and
    counts again should the pool start it anyway). State is shared with the worker thread and
    guarded by the `_RealWork` lock.
    """

    __slots__ = ("_abandoned", "_counted", "_loop", "_running", "_work")

    def __init__(self, work: _RealWork, loop: asyncio.AbstractEventLoop) -> None:
        self._work = work
        self._loop = loop
        self._counted = True  # the submitter has already called work.begin()
        self._running = False
        self._abandoned = False

    def run(self, func: Callable[[*Ts], T], args: tuple[*Ts]) -> T:
        """Call `func(*args)` in the worker thread, keeping the count honest around it."""
        work = self._work
        with work.lock:
            self._running = True
            if not self._counted:
                self._counted = True
                work.in_flight += 1
        try:
            return func(*args)
        finally:
            with work.lock:
                self._running = False
                release = self._abandoned and self._counted
                if release:
                    self._counted = False
                    work.in_flight -= 1
            if release:
                # Nobody awaits this result, so nothing else would wake the loop to re-check.
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(_nothing)

    def on_done(self, future: asyncio.Future[Any]) -> None:
        """On the loop, once the future is done: stop counting unless the thread still runs."""
        # Runs after the result is delivered, so no jump can fall between the thread
        # finishing and the awaiting task seeing the result.
        work = self._work
        with work.lock:
            if future.cancelled():
                self._abandoned = True
                if self._running:
                    return
            if self._counted:
                self._counted = False
                work.in_flight -= 1


class _SimulatedSelector(selectors.DefaultSelector):
    """The loop's selector: the one place where virtual time jumps.

    asyncio calls `select(timeout)` once per loop iteration with `timeout` in loop time (see
    the module docstring); this decides between servicing ready work, waiting for real work
    in real time, jumping virtual time, and reporting a deadlock.
    """

    def __init__(self, loop: SimulatedEventLoop) -> None:
        super().__init__()
        self._owner = loop
        self._internal_fds: frozenset[int] = frozenset()
        # Registered descriptors that are not the loop's own, kept as they are registered:
        # every jump asks whether there are any.
        self._foreign_fds: set[int] = set()

    def mark_internal(self) -> None:
        """Remember the file descriptors the loop registered itself (its self-pipe)."""
        self._internal_fds = frozenset(key.fd for key in self.get_map().values())
        self._foreign_fds = set()

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        if key.fd not in self._internal_fds:
            self._foreign_fds.add(key.fd)
        return key

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self._foreign_fds.discard(key.fd)
        return key

    def _has_foreign_fds(self) -> bool:
        return bool(self._foreign_fds)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self._owner
        if timeout is not None and timeout <= 0:
            return super().select(0)
        if loop._real_work.busy:
            # Real work in flight: wait for it in real time, virtual time frozen. Its
            # completion reaches us through the self-pipe or its own socket.
            return super().select(None)
        foreign = self._has_foreign_fds()
        events: list[tuple[selectors.SelectorKey, int]] = super().select(
            loop.clock.settle if foreign else 0
        )
        if events:
            return events
        if timeout is None:
            if foreign:
                # Only a real socket can wake us now; that is real time, not a deadlock.
                return super().select(None)
            raise SimulationDeadlock(_describe_tasks(loop), loop.time())
        loop.clock._jump(timeout)
        return []


def _describe_tasks(loop: asyncio.AbstractEventLoop) -> tuple[str, ...]:
    descriptions = []
    for task in asyncio.all_tasks(loop):
        coroutine = task.get_coro()
        what = getattr(coroutine, "__qualname__", repr(coroutine))
        # The line a task is suspended on is usually the await nobody will ever wake.
        frames = task.get_stack(limit=1)
        if frames:
            code = frames[0].f_code
            what += f" at {os.path.basename(code.co_filename)}:{frames[0].f_lineno}"
        descriptions.append(f"{task.get_name()} running {what}")
    return tuple(sorted(descriptions))


class SimulatedEventLoop(asyncio.SelectorEventLoop):
    """An asyncio selector event loop whose `time()` is its `SimulatedClock`'s virtual time.

    Use `run_simulated` rather than creating one by hand; create one directly only to pass
    as a `loop_factory` (for example to `asyncio.Runner`).
    """

    def __init__(self, clock: SimulatedClock | None = None) -> None:
        given: object = SimulatedClock() if clock is None else clock
        self._clock = given if isinstance(given, SimulatedClock) else SimulatedClock()
        self._real_work = _RealWork()
        selector = _SimulatedSelector(self)
        # Initialise the base loop before any check can fail: a half-built loop cannot be
        # closed, and asyncio's finaliser complains about it.
        super().__init__(selector)
        selector.mark_internal()
        try:
            if not isinstance(given, SimulatedClock):
                raise ValidationError("clock", given, "a SimulatedClock or None")
            self._clock._bind(self)
        except BaseException:
            super().close()
            raise

    @property
    def clock(self) -> SimulatedClock:
        """The virtual clock this loop runs on."""
        return self._clock

    # asyncio treats a timer as due when its deadline is before time() + _clock_resolution.
    # Past 2**24 virtual seconds (about 194 days) half a float step of time() exceeds the OS
    # clock's resolution, so time() + resolution == time() and a timer due right now would
    # never fire: the loop would spin at timeout 0 for ever. A year-long backtest gets there,
    # so widen the resolution to two float steps of the current time.
    # This shadows a private attribute; tests/kernel/test_simulation.py guards it.
    @property
    def _clock_resolution(self) -> float:
        return max(self._os_clock_resolution, 2 * math.ulp(self._clock._elapsed))

    @_clock_resolution.setter
    def _clock_resolution(self, value: float) -> None:
        self._os_clock_resolution = value

    @property
    def real_work_in_flight(self) -> int:
        """How many executor jobs and `real_io()` blocks are holding virtual time still."""
        return self._real_work.in_flight

    def time(self) -> float:
        """Return the clock's virtual seconds elapsed: what every asyncio timer counts."""
        return self._clock._elapsed  # the hottest call in the loop: skip the method

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[*Ts], T],
        *args: *Ts,
    ) -> asyncio.Future[T]:
        """Run `func(*args)` in `executor`, freezing virtual time until its result is back."""
        if executor is not None and not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            # A process pool cannot run our tracking wrapper (it does not pickle): count the
            # job until its future is done. A job cancelled while running is released early.
            self._real_work.begin()
            try:
                future = super().run_in_executor(executor, func, *args)
            except BaseException:
                self._real_work.end()
                raise
            future.add_done_callback(lambda _: self._real_work.end())
            return future
        job = _ExecutorJob(self._real_work, self)
        self._real_work.begin()
        try:
            future = super().run_in_executor(executor, job.run, func, args)
        except BaseException:
            self._real_work.end()
            raise
        future.add_done_callback(job.on_done)
        return future

    async def shutdown_default_executor(self, *args: Any, **kwargs: Any) -> None:
        """Shut down the default executor; joining its threads is real work (time frozen)."""
        self._real_work.begin()
        try:
            await super().shutdown_default_executor(*args, **kwargs)
        finally:
            self._real_work.end()

    def close(self) -> None:
        """Close the loop and release its clock for another loop."""
        try:
            super().close()
        finally:
            self._clock._unbind(self)


def _nothing() -> None:
    """A callback that only wakes the loop."""


def run_simulated(main: Coroutine[Any, Any, T], *, clock: SimulatedClock | None = None) -> T:
    """Run `main` on a fresh simulated event loop and return its result.

    Like `asyncio.run`: leftover tasks are cancelled, async generators and the default
    executor are shut down and the loop is closed. `clock` defaults to a new `SimulatedClock`
    starting at `DEFAULT_START`; pass one to choose the start or read the time afterwards.
    Raises `SimulationDeadlock` if `main` waits on something nothing can ever set.
    """
    if not asyncio.iscoroutine(main):
        raise ValidationError("main", main, "a coroutine object (call the async function)")
    given: object = clock  # checked at run time too: callers may not run mypy
    if given is not None and not isinstance(given, SimulatedClock):
        main.close()
        raise ValidationError("clock", clock, "a SimulatedClock or None")
    chosen = clock if clock is not None else SimulatedClock()
    if chosen.loop is not None:
        main.close()
        raise ValidationError("clock", chosen, "a SimulatedClock not bound to another loop")
    with asyncio.Runner(loop_factory=lambda: SimulatedEventLoop(chosen)) as runner:
        return runner.run(main)


def current_clock() -> Clock:
    """Return the clock of the running event loop: its `SimulatedClock`, else a `RealClock`.

    Lets a library default to "whatever time the caller runs on" without being handed a clock;
    outside any running loop it returns a `RealClock`.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return RealClock()
    if isinstance(loop, SimulatedEventLoop):
        return loop.clock
    return RealClock()


@contextlib.asynccontextmanager
async def real_io() -> AsyncIterator[None]:
    """Mark real I/O in flight on whatever loop is running; for code that holds any `Clock`.

    On a `SimulatedEventLoop` this is `clock.real_io()`: virtual time stays frozen until the
    block ends. On a real loop it does nothing, so library code can wrap every socket round
    trip (a database query, a broker call) without knowing which clock it runs on.
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, SimulatedEventLoop):
        yield
        return
    async with loop.clock.real_io():
        yield
