"""Retry policies, and calling an async function under one.

A `RetryPolicy` is a frozen value shared by everything that retries: kernel calls, the task
engine's failed attempts, the execution manager's stop-loss placement. It only computes
delays; it never sleeps. Randomness comes from a `random.Random` the caller passes in, so a
seeded run produces the same delays every time.

A `Retrier` (or the one-shot `retry_call`) runs an async function under a policy, on a
`Clock`, deciding from the error taxonomy (`legato.kernel.errors`) what earns another attempt:
transient errors and timeouts are retried with backoff, rate-limited errors wait at least the
server's `retry_after`, and permanent, validation and unknown-outcome errors reach the caller
at once. The attempt loop is a small loop of our own: a first attempt that succeeds costs one
await, which matters on hot paths such as every venue and ledger call of a backtest.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import (
    CircuitOpenError,
    DeadlineExceeded,
    ErrorKind,
    LegatoError,
    RateLimitedError,
    ValidationError,
    classify,
)

__all__ = [
    "Jitter",
    "Retrier",
    "RetryEvent",
    "RetryExhausted",
    "RetryPolicy",
    "RetryResult",
    "retry_call",
]

T = TypeVar("T")
P = ParamSpec("P")


class Jitter(enum.Enum):
    """How randomness spreads retries out so that many clients do not retry in lockstep.

    NONE: exactly the exponential delay. FULL: uniform in [0, delay] (the AWS "full jitter",
    the best spread). EQUAL: delay/2 plus uniform in [0, delay/2] (never less than half).
    """

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, and which error kinds are worth another attempt.

    `max_attempts` counts every attempt, the first included (1 means never retry).
    The delay before attempt n+1 is `initial_delay * multiplier**(n-1)`, capped at
    `max_delay`, then jittered.
    """

    max_attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: Jitter = Jitter.FULL

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValidationError("max_attempts", self.max_attempts, "an integer >= 1")
        if self.initial_delay < 0:
            raise ValidationError("initial_delay", self.initial_delay, "seconds >= 0")
        if self.max_delay < self.initial_delay:
            raise ValidationError(
                "max_delay", self.max_delay, f"seconds >= initial_delay ({self.initial_delay})"
            )
        if self.multiplier < 1:
            raise ValidationError("multiplier", self.multiplier, "a number >= 1")

    def backoff(self, attempt: int) -> float:
        """Return the delay after failed attempt `attempt` (1-based) before jitter."""
        if attempt < 1:
            raise ValidationError("attempt", attempt, "an integer >= 1")
        # Cap the exponent so huge attempt numbers cannot overflow a float.
        exponent = min(attempt - 1, 64)
        return min(self.max_delay, self.initial_delay * self.multiplier**exponent)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Return the jittered delay after failed attempt `attempt` (1-based)."""
        base = self.backoff(attempt)
        if self.jitter is Jitter.FULL:
            return rng.uniform(0.0, base)
        if self.jitter is Jitter.EQUAL:
            return base / 2 + rng.uniform(0.0, base / 2)
        return base

    def should_retry(self, attempt: int, kind: ErrorKind) -> bool:
        """Return True when failed attempt `attempt` with an error of `kind` earns another try."""
        return kind.retryable and attempt < self.max_attempts


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """A failed attempt that is about to be retried: what failed, and how long we will wait."""

    attempt: int
    error: BaseException
    kind: ErrorKind
    delay: float


@dataclass(frozen=True, slots=True)
class RetryResult(Generic[T]):
    """The value a retried call returned and how many attempts it took."""

    value: T
    attempts: int

    @property
    def retry_count(self) -> int:
        """Return the number of attempts after the first (0 when the first attempt succeeded)."""
        return self.attempts - 1


class RetryExhausted(LegatoError):
    """Every attempt the policy allowed failed with a retryable error.

    `last_error` is the final attempt's error (also the `__cause__`); `attempts` is how many
    were made. Its `kind` is the last error's kind, so `classify()` still says whether a later,
    higher-level retry (the task engine re-queueing the task) makes sense.
    """

    def __init__(self, last_error: BaseException, attempts: int, **context: Any) -> None:
        super().__init__(
            f"gave up after {attempts} attempt(s); last error: {last_error}",
            attempts=attempts,
            **context,
        )
        self.last_error = last_error
        self.attempts = attempts
        self.kind = classify(last_error)


def _require_rng(rng: random.Random | None, policy: RetryPolicy) -> random.Random | None:
    # A jittered policy without a generator would have to reach for the global `random`,
    # which breaks replayable runs; refuse it up front instead of failing at the first retry.
    if rng is None and policy.jitter is not Jitter.NONE:
        raise ValidationError(
            "rng", rng, f"a random.Random when the policy's jitter is {policy.jitter.value}"
        )
    return rng


class Retrier:
    """Calls async functions under a `RetryPolicy`, sleeping on a `Clock`.

    Retried: TRANSIENT, TIMEOUT and RATE_LIMITED errors; rate-limited errors and open circuits
    wait `max(retry_after, backoff)`. Raised at once, unchanged: PERMANENT, VALIDATION and
    UNKNOWN_OUTCOME errors, and cancellation. When the policy's attempts run out the call
    raises `RetryExhausted` wrapping the last error.

    `attempt_timeout` bounds each attempt (a timeout there is a `DeadlineExceeded`, which is
    retried: only use it on calls that are safe to repeat). `deadline` bounds the whole call,
    sleeps included, and raises `DeadlineExceeded` when it runs out. Both run on the event
    loop's clock, which is virtual time under `SimulatedClock`.
    """

    __slots__ = ("_attempt_timeout", "_clock", "_deadline", "_on_retry", "_policy", "_rng")

    def __init__(
        self,
        policy: RetryPolicy,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        *,
        on_retry: Callable[[RetryEvent], None] | None = None,
        attempt_timeout: float | None = None,
        deadline: float | None = None,
    ) -> None:
        if attempt_timeout is not None and attempt_timeout <= 0:
            raise ValidationError("attempt_timeout", attempt_timeout, "seconds > 0, or None")
        if deadline is not None and deadline <= 0:
            raise ValidationError("deadline", deadline, "seconds > 0, or None")
        self._policy = policy
        self._clock: Clock = clock if clock is not None else RealClock()
        self._rng = _require_rng(rng, policy)
        self._on_retry = on_retry
        self._attempt_timeout = attempt_timeout
        self._deadline = deadline

    @property
    def policy(self) -> RetryPolicy:
        """Return the policy this retrier follows."""
        return self._policy

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call `fn(*args, **kwargs)` until success or the policy gives up; return its value."""
        result = await self.run(fn, *args, **kwargs)
        return result.value

    async def run(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> RetryResult[T]:
        """Like `call`, but return the value together with the number of attempts made."""
        if self._deadline is None:
            return await self._attempts(fn, args, kwargs, [0])
        counter = [0]
        deadline = asyncio.timeout(self._deadline)
        try:
            async with deadline:
                return await self._attempts(fn, args, kwargs, counter)
        except TimeoutError as error:
            if not deadline.expired():
                raise
            raise DeadlineExceeded(
                f"retry deadline ran out during attempt {counter[0]} or the wait after it",
                timeout=self._deadline,
                attempts=counter[0],
            ) from error

    async def _attempts(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        counter: list[int],
    ) -> RetryResult[T]:
        # The attempt loop. `counter[0]` is the number of attempts started, kept where `run`
        # can read it when the overall deadline cancels us mid-attempt or mid-sleep.
        # A first attempt that succeeds costs one await and one RetryResult.
        attempt_timeout = self._attempt_timeout
        attempt = 0
        while True:
            attempt += 1
            counter[0] = attempt
            try:
                if attempt_timeout is None:
                    value = await fn(*args, **kwargs)
                else:
                    value = await self._timed_attempt(fn, args, kwargs, attempt)
            except Exception as error:  # BaseExceptions (cancellation) are never retried
                kind = classify(error)
                if not kind.retryable:
                    raise
                if attempt >= self._policy.max_attempts:
                    raise RetryExhausted(error, attempt) from error
                delay = self._wait(attempt, error)
                if self._on_retry is not None:
                    self._on_retry(RetryEvent(attempt=attempt, error=error, kind=kind, delay=delay))
                await self._clock.sleep(delay)
                continue
            return RetryResult(value, attempt)

    async def _timed_attempt(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        attempt: int,
    ) -> T:
        limit = asyncio.timeout(self._attempt_timeout)
        try:
            async with limit:
                return await fn(*args, **kwargs)
        except TimeoutError as error:
            if not limit.expired():
                raise  # fn's own timeout: classified (and retried) like any other
            raise DeadlineExceeded(
                f"attempt {attempt} timed out", timeout=self._attempt_timeout
            ) from error

    def _wait(self, attempt: int, error: BaseException) -> float:
        if self._rng is None:  # only allowed when the policy has no jitter
            delay = self._policy.backoff(attempt)
        else:
            delay = self._policy.delay(attempt, self._rng)
        if isinstance(error, RateLimitedError | CircuitOpenError) and error.retry_after:
            # The hint is a floor, not a replacement: many clients told "1s" would otherwise
            # all come back in the same instant. An attempt before an open circuit's
            # retry_after would only be refused again.
            delay = max(delay, error.retry_after)
        return delay


async def retry_call(
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    policy: RetryPolicy,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    on_retry: Callable[[RetryEvent], None] | None = None,
    attempt_timeout: float | None = None,
    deadline: float | None = None,
) -> T:
    """Call `fn(*args)` under `policy` once, as a `Retrier` built with the same arguments would.

    Keyword arguments for `fn` go through `functools.partial`; this function's own keywords
    configure the retrying.
    """
    retrier = Retrier(
        policy,
        clock,
        rng,
        on_retry=on_retry,
        attempt_timeout=attempt_timeout,
        deadline=deadline,
    )
    return await retrier.call(fn, *args)
