"""Circuit breakers: stop calling a dependency that keeps failing, then probe it carefully.

A `CircuitBreaker` is CLOSED while calls go through. After `failure_threshold` consecutive
failures it OPENS: calls are refused at once with `CircuitOpenError` (carrying how long until
the next probe) for `recovery_timeout` seconds. Then it is HALF_OPEN: up to
`half_open_max_calls` probe calls may run at the same time, the rest are refused. The first
probe that succeeds closes the circuit; a probe that fails opens it again for another
`recovery_timeout`.

Only errors that say something about the dependency's health count as failures: by default
transient errors, timeouts and unknown outcomes (`ErrorKind`). A validation or permanent
error means the dependency answered, so it counts as a success.

All timing comes from the `Clock`, so every transition is testable on simulated time.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import ParamSpec, TypeVar

import structlog

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import CircuitOpenError, ErrorKind, ValidationError, classify

__all__ = [
    "BreakerSnapshot",
    "BreakerTransition",
    "CircuitBreaker",
    "CircuitState",
    "counts_as_failure",
]

T = TypeVar("T")
P = ParamSpec("P")

_log = structlog.get_logger(__name__)

_FAILURE_KINDS = frozenset({ErrorKind.TRANSIENT, ErrorKind.TIMEOUT, ErrorKind.UNKNOWN_OUTCOME})


def counts_as_failure(error: BaseException) -> bool:
    """Return True when `error` says the dependency is unhealthy (the default breaker rule).

    Transient errors, timeouts and unknown outcomes count. Validation, permanent and
    rate-limited errors do not: the dependency answered, and rate limits belong to the limiter.
    """
    return isinstance(error, Exception) and classify(error) in _FAILURE_KINDS


class CircuitState(enum.Enum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """A change of state, passed to the `on_state_change` callback."""

    breaker: str
    previous: CircuitState
    current: CircuitState
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's state at one instant, for metrics and health pages."""

    name: str
    state: CircuitState
    consecutive_failures: int
    probes_in_flight: int
    retry_after: float
    last_failure: str | None
    opened_count: int


@dataclass(slots=True)
class _Admission:
    # The generation a call was admitted in: its outcome only counts if the breaker has not
    # changed state since, so a slow call from before an opening cannot close or re-open it.
    generation: int
    probe: bool


class CircuitBreaker:
    """A circuit breaker on a `Clock`; use `await breaker.call(fn, ...)` or `async with breaker:`.

    `counts_as_failure` decides which errors count against the dependency (default: the
    module-level `counts_as_failure`). `on_state_change` is called synchronously on every
    transition; an exception it raises is logged and otherwise ignored.
    """

    __slots__ = (
        "_active",
        "_clock",
        "_consecutive_failures",
        "_counts_as_failure",
        "_failure_threshold",
        "_generation",
        "_half_open_max_calls",
        "_last_failure",
        "_on_state_change",
        "_opened_at",
        "_opened_count",
        "_probes_in_flight",
        "_recovery_timeout",
        "_state",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        counts_as_failure: Callable[[BaseException], bool] = counts_as_failure,
        on_state_change: Callable[[BreakerTransition], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not name:
            raise ValidationError("name", name, "a non-empty string")
        if failure_threshold < 1:
            raise ValidationError("failure_threshold", failure_threshold, "an integer >= 1")
        if recovery_timeout <= 0:
            raise ValidationError("recovery_timeout", recovery_timeout, "seconds > 0")
        if half_open_max_calls < 1:
            raise ValidationError("half_open_max_calls", half_open_max_calls, "an integer >= 1")
        self.name = name
        self._failure_threshold = failure_threshold
        self._recovery_timeout = recovery_timeout
        self._half_open_max_calls = half_open_max_calls
        self._counts_as_failure = counts_as_failure
        self._on_state_change = on_state_change
        self._clock: Clock = clock if clock is not None else RealClock()
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._consecutive_failures = 0
        self._probes_in_flight = 0
        self._opened_at = 0.0
        self._opened_count = 0
        self._last_failure: str | None = None
        # Admissions of `async with breaker:` blocks, per task (each task has its own context).
        self._active: ContextVar[tuple[_Admission, ...]] = ContextVar(
            f"legato.breaker.{name}", default=()
        )

    @property
    def state(self) -> CircuitState:
        """Return the current state (an open circuit whose timeout ran out reads HALF_OPEN)."""
        self._refresh()
        return self._state

    def snapshot(self) -> BreakerSnapshot:
        """Return the breaker's state as a frozen value."""
        self._refresh()
        return BreakerSnapshot(
            name=self.name,
            state=self._state,
            consecutive_failures=self._consecutive_failures,
            probes_in_flight=self._probes_in_flight,
            retry_after=self._retry_after(),
            last_failure=self._last_failure,
            opened_count=self._opened_count,
        )

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call `fn(*args, **kwargs)` through the breaker; raise `CircuitOpenError` if refused."""
        admission = self._admit()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            self._record(admission, error)
            raise
        self._record(admission, None)
        return result

    async def __aenter__(self) -> CircuitBreaker:
        admission = self._admit()
        self._active.set((*self._active.get(), admission))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack = self._active.get()
        if not stack:  # pragma: no cover - only reachable by calling __aexit__ by hand
            raise RuntimeError(f"breaker {self.name!r} exited without entering")
        self._active.set(stack[:-1])
        self._record(stack[-1], exc)

    def _admit(self) -> _Admission:
        self._refresh()
        if self._state is CircuitState.OPEN:
            raise CircuitOpenError(self.name, self._retry_after())
        if self._state is CircuitState.HALF_OPEN:
            if self._probes_in_flight >= self._half_open_max_calls:
                # Probes are already testing the dependency; their verdict comes soon.
                raise CircuitOpenError(self.name, 0.0, probes_in_flight=self._probes_in_flight)
            self._probes_in_flight += 1
            return _Admission(self._generation, probe=True)
        return _Admission(self._generation, probe=False)

    def _record(self, admission: _Admission, error: BaseException | None) -> None:
        if admission.probe and admission.generation == self._generation:
            self._probes_in_flight -= 1
        if admission.generation != self._generation:
            return  # the breaker moved on while this call ran; its outcome is stale
        if error is not None and not isinstance(error, Exception):
            return  # cancellation says nothing about the dependency
        failed = error is not None and self._counts_as_failure(error)
        if failed:
            self._last_failure = f"{type(error).__name__}: {error}"
            if self._state is CircuitState.HALF_OPEN:
                self._open("a probe failed")
                return
            self._consecutive_failures += 1
            if self._consecutive_failures >= self._failure_threshold:
                self._open(f"{self._consecutive_failures} consecutive failures")
            return
        self._consecutive_failures = 0
        if self._state is CircuitState.HALF_OPEN:
            self._transition(CircuitState.CLOSED, "a probe succeeded")

    def _refresh(self) -> None:
        if (
            self._state is CircuitState.OPEN
            and self._clock.monotonic() - self._opened_at >= self._recovery_timeout
        ):
            self._transition(CircuitState.HALF_OPEN, "recovery timeout elapsed")

    def _retry_after(self) -> float:
        if self._state is not CircuitState.OPEN:
            return 0.0
        elapsed = self._clock.monotonic() - self._opened_at
        return max(0.0, self._recovery_timeout - elapsed)

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock.monotonic()
        self._opened_count += 1
        self._transition(CircuitState.OPEN, reason)

    def _transition(self, current: CircuitState, reason: str) -> None:
        previous = self._state
        self._state = current
        self._generation += 1
        self._probes_in_flight = 0
        if current is CircuitState.CLOSED:
            self._consecutive_failures = 0
        transition = BreakerTransition(self.name, previous, current, self._clock.now(), reason)
        _log.info(
            "circuit_state_changed",
            breaker=self.name,
            previous=previous.value,
            current=current.value,
            reason=reason,
        )
        if self._on_state_change is None:
            return
        try:
            self._on_state_change(transition)
        except Exception:
            # A broken metrics hook must not turn a healthy call into a failed one.
            _log.exception("circuit_state_callback_failed", breaker=self.name)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.value})"
