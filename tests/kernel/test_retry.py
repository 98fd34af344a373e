"""Tests for legato.kernel.retry: policies, and calls retried under them on simulated time."""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
from collections.abc import Awaitable, Callable

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import (
    CircuitOpenError,
    DeadlineExceeded,
    ErrorKind,
    PermanentError,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
)
from legato.kernel.retry import (
    Jitter,
    Retrier,
    RetryEvent,
    RetryExhausted,
    RetryPolicy,
    retry_call,
)


class Flaky:
    """An async callable that raises the given errors in turn, then returns "ok"."""

    def __init__(self, clock: Clock, errors: list[BaseException]) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.attempted_at: list[float] = []

    async def __call__(self) -> str:
        self.attempted_at.append(self.clock.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def no_jitter(max_attempts: int = 5, initial_delay: float = 1.0) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        initial_delay=initial_delay,
        max_delay=100.0,
        multiplier=2.0,
        jitter=Jitter.NONE,
    )


def relative(times: list[float]) -> list[float]:
    return [round(t - times[0], 9) for t in times]


async def collect_delays(
    clock: Clock, policy: RetryPolicy, rng: random.Random, failures: int
) -> tuple[list[float], list[float]]:
    events: list[RetryEvent] = []
    flaky = Flaky(clock, [TransientError("boom") for _ in range(failures)])
    await Retrier(policy, clock, rng, on_retry=events.append).call(flaky)
    return [event.delay for event in events], relative(flaky.attempted_at)


# -- RetryPolicy (pure arithmetic) ---------------------------------------------------------


def test_backoff_grows_by_multiplier_and_is_capped() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=5.0, multiplier=2.0, jitter=Jitter.NONE)
    assert [policy.backoff(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_policy_rejects_bad_fields_by_name() -> None:
    with pytest.raises(ValidationError) as caught:
        RetryPolicy(max_attempts=0)
    assert caught.value.field == "max_attempts"


# -- Retrier on simulated time -------------------------------------------------------------


async def test_transient_errors_are_retried_at_exact_backoff_times(clock: Clock) -> None:
    flaky = Flaky(clock, [TransientError("a"), TransientError("b"), TransientError("c")])

    result = await Retrier(no_jitter(), clock).run(flaky)

    assert result.value == "ok"
    assert result.attempts == 4
    assert result.retry_count == 3
    assert relative(flaky.attempted_at) == [0.0, 1.0, 3.0, 7.0]


async def test_timeouts_are_retried(clock: Clock) -> None:
    flaky = Flaky(clock, [TimeoutError(), DeadlineExceeded("slow", timeout=1.0)])

    result = await Retrier(no_jitter(), clock).run(flaky)

    assert result.attempts == 3


async def test_full_jitter_delays_stay_between_zero_and_backoff(clock: Clock) -> None:
    policy = RetryPolicy(max_attempts=8, initial_delay=1.0, max_delay=100.0, jitter=Jitter.FULL)

    delays, attempted_at = await collect_delays(clock, policy, random.Random(7), failures=7)

    assert len(delays) == 7
    for attempt, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= policy.backoff(attempt)
    assert attempted_at[1:] == pytest.approx(list(itertools.accumulate(delays)))


async def test_equal_jitter_delays_stay_between_half_and_full_backoff(clock: Clock) -> None:
    policy = RetryPolicy(max_attempts=8, initial_delay=1.0, max_delay=100.0, jitter=Jitter.EQUAL)

    delays, _ = await collect_delays(clock, policy, random.Random(7), failures=7)

    for attempt, delay in enumerate(delays, start=1):
        assert policy.backoff(attempt) / 2 <= delay <= policy.backoff(attempt)


async def test_same_seed_gives_same_delays(clock: Clock) -> None:
    policy = RetryPolicy(max_attempts=6, initial_delay=1.0, max_delay=100.0, jitter=Jitter.FULL)

    first, _ = await collect_delays(clock, policy, random.Random(42), failures=5)
    second, _ = await collect_delays(clock, policy, random.Random(42), failures=5)
    other, _ = await collect_delays(clock, policy, random.Random(43), failures=5)

    assert first == second
    assert first != other


async def test_rate_limited_waits_for_retry_after_when_longer_than_backoff(clock: Clock) -> None:
    flaky = Flaky(clock, [RateLimitedError("slow down", retry_after=10.0)])

    await Retrier(no_jitter(), clock).call(flaky)

    assert relative(flaky.attempted_at) == [0.0, 10.0]


async def test_rate_limited_waits_for_backoff_when_longer_than_retry_after(clock: Clock) -> None:
    flaky = Flaky(clock, [RateLimitedError("slow down", retry_after=0.5)])

    await Retrier(no_jitter(initial_delay=3.0), clock).call(flaky)

    assert relative(flaky.attempted_at) == [0.0, 3.0]


async def test_rate_limited_without_hint_uses_backoff(clock: Clock) -> None:
    flaky = Flaky(clock, [RateLimitedError("slow down")])

    await Retrier(no_jitter(initial_delay=2.0), clock).call(flaky)

    assert relative(flaky.attempted_at) == [0.0, 2.0]


async def test_open_circuit_is_retried_no_sooner_than_its_retry_after(clock: Clock) -> None:
    flaky = Flaky(clock, [CircuitOpenError("venue", retry_after=12.5)])

    await Retrier(no_jitter(), clock).call(flaky)

    assert relative(flaky.attempted_at) == [0.0, 12.5]


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("rejected"),
        ValidationError("quantity", -1, "a positive number"),
        ValueError("bad"),
        RuntimeError("a bug"),
    ],
)
async def test_non_retryable_errors_reach_the_caller_after_one_attempt(
    clock: Clock, error: Exception
) -> None:
    flaky = Flaky(clock, [error])

    with pytest.raises(type(error)) as caught:
        await Retrier(no_jitter(), clock).call(flaky)

    assert caught.value is error
    assert len(flaky.attempted_at) == 1


async def test_unknown_outcome_reaches_the_caller_with_its_idempotency_key(clock: Clock) -> None:
    error = UnknownOutcomeError("timed out after sending", idempotency_key="order-17")
    flaky = Flaky(clock, [TransientError("first"), error])

    with pytest.raises(UnknownOutcomeError) as caught:
        await Retrier(no_jitter(), clock).call(flaky)

    assert caught.value is error
    assert caught.value.idempotency_key == "order-17"
    assert len(flaky.attempted_at) == 2


async def test_exhaustion_raises_retry_exhausted_with_attempts_and_last_error(
    clock: Clock,
) -> None:
    last = RateLimitedError("still slow", retry_after=1.0)
    flaky = Flaky(clock, [TransientError("1"), TransientError("2"), last])

    with pytest.raises(RetryExhausted) as caught:
        await Retrier(no_jitter(max_attempts=3), clock).call(flaky)

    assert caught.value.attempts == 3
    assert caught.value.last_error is last
    assert caught.value.__cause__ is last
    assert caught.value.kind is ErrorKind.RATE_LIMITED
    assert len(flaky.attempted_at) == 3


async def test_on_retry_reports_each_failed_attempt_before_its_wait(clock: Clock) -> None:
    events: list[RetryEvent] = []
    errors: list[BaseException] = [TransientError("a"), RateLimitedError("b", retry_after=9.0)]
    flaky = Flaky(clock, errors)

    await Retrier(no_jitter(), clock, on_retry=events.append).call(flaky)

    assert [(e.attempt, e.kind, e.delay) for e in events] == [
        (1, ErrorKind.TRANSIENT, 1.0),
        (2, ErrorKind.RATE_LIMITED, 9.0),
    ]


async def test_attempt_timeout_turns_a_hung_attempt_into_a_retried_deadline(
    clock: Clock,
) -> None:
    attempted_at: list[float] = []

    async def hangs_once() -> str:
        attempted_at.append(clock.monotonic())
        if len(attempted_at) == 1:
            await clock.sleep(3600)
        return "ok"

    events: list[RetryEvent] = []
    retrier = Retrier(no_jitter(), clock, attempt_timeout=2.0, on_retry=events.append)
    result = await retrier.run(hangs_once)

    assert result.attempts == 2
    assert isinstance(events[0].error, DeadlineExceeded)
    assert relative(attempted_at) == [0.0, 3.0]  # 2s timeout, then 1s backoff


async def test_overall_deadline_raises_deadline_exceeded_on_time(clock: Clock) -> None:
    flaky = Flaky(clock, [TransientError(str(n)) for n in range(100)])
    started = clock.monotonic()

    with pytest.raises(DeadlineExceeded) as caught:
        await Retrier(no_jitter(max_attempts=100), clock, deadline=5.0).call(flaky)

    assert clock.monotonic() - started == pytest.approx(5.0)
    assert caught.value.timeout == 5.0
    assert relative(flaky.attempted_at) == [0.0, 1.0, 3.0]


async def test_cancellation_is_not_retried(clock: Clock) -> None:
    flaky = Flaky(clock, [asyncio.CancelledError()])

    with pytest.raises(asyncio.CancelledError):
        await Retrier(no_jitter(), clock).call(flaky)

    assert len(flaky.attempted_at) == 1


async def test_retry_call_passes_arguments_and_returns_the_value(clock: Clock) -> None:
    calls: list[tuple[int, str]] = []

    async def record(number: int, *, label: str) -> int:
        calls.append((number, label))
        if len(calls) < 2:
            raise ConnectionError("reset")
        return number * 2

    fn: Callable[[int], Awaitable[int]] = functools.partial(record, label="x")
    value = await retry_call(fn, 21, policy=no_jitter(), clock=clock)

    assert value == 42
    assert calls == [(21, "x"), (21, "x")]


def test_jittered_policy_without_rng_is_rejected() -> None:
    policy = RetryPolicy(jitter=Jitter.FULL)

    with pytest.raises(ValidationError) as caught:
        Retrier(policy)

    assert caught.value.field == "rng"


@pytest.mark.parametrize(("field", "value"), [("attempt_timeout", 0.0), ("deadline", -1.0)])
def test_retrier_rejects_non_positive_time_limits(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as caught:
        Retrier(no_jitter(), **{field: value})  # type: ignore[arg-type]

    assert caught.value.field == field


async def test_first_attempt_success_neither_sleeps_nor_reports(clock: Clock) -> None:
    events: list[RetryEvent] = []
    flaky = Flaky(clock, [])
    started = clock.monotonic()

    result = await Retrier(no_jitter(), clock, on_retry=events.append).run(flaky)

    assert (result.value, result.attempts, result.retry_count) == ("ok", 1, 0)
    assert events == []
    assert clock.monotonic() == started


async def test_kwargs_reach_the_function_on_every_attempt(clock: Clock) -> None:
    seen: list[str] = []

    async def labelled(*, label: str) -> str:
        seen.append(label)
        if len(seen) < 3:
            raise TransientError("again")
        return label

    result = await Retrier(no_jitter(), clock).run(labelled, label="k")

    assert (result.value, result.attempts) == ("k", 3)
    assert seen == ["k", "k", "k"]


async def test_overall_deadline_reports_the_attempts_made(clock: Clock) -> None:
    flaky = Flaky(clock, [TransientError(str(n)) for n in range(100)])

    with pytest.raises(DeadlineExceeded) as caught:
        await Retrier(no_jitter(max_attempts=100), clock, deadline=5.0).call(flaky)

    # Attempts at 0s, 1s and 3s; the deadline falls during the 4s wait after the third.
    assert caught.value.context["attempts"] == 3


async def test_timeout_raised_by_the_function_itself_is_retried_as_a_timeout(
    clock: Clock,
) -> None:
    events: list[RetryEvent] = []
    flaky = Flaky(clock, [TimeoutError("fn's own")])

    result = await Retrier(no_jitter(), clock, attempt_timeout=50.0, on_retry=events.append).run(
        flaky
    )

    assert result.attempts == 2
    assert type(events[0].error) is TimeoutError
    assert events[0].kind is ErrorKind.TIMEOUT


async def test_single_attempt_policy_wraps_a_retryable_failure(clock: Clock) -> None:
    error = TransientError("once")
    flaky = Flaky(clock, [error])

    with pytest.raises(RetryExhausted) as caught:
        await Retrier(no_jitter(max_attempts=1), clock).call(flaky)

    assert caught.value.attempts == 1
    assert caught.value.last_error is error
    assert len(flaky.attempted_at) == 1
