"""Tests for legato.kernel.breaker: every state transition, on simulated time."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from legato.kernel.breaker import (
    BreakerTransition,
    CircuitBreaker,
    CircuitState,
)
from legato.kernel.clock import Clock
from legato.kernel.errors import (
    CircuitOpenError,
    PermanentError,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
)


async def fail(error: Exception | None = None) -> None:
    raise error if error is not None else TransientError("down")


async def succeed() -> str:
    return "ok"


def make_breaker(
    clock: Clock,
    transitions: list[BreakerTransition],
    *,
    failure_threshold: int = 3,
    half_open_max_calls: int = 1,
) -> CircuitBreaker:
    return CircuitBreaker(
        "venue",
        failure_threshold=failure_threshold,
        recovery_timeout=10.0,
        half_open_max_calls=half_open_max_calls,
        clock=clock,
        on_state_change=transitions.append,
    )


async def trip(breaker: CircuitBreaker, failures: int = 3) -> None:
    for _ in range(failures):
        with pytest.raises(TransientError):
            await breaker.call(fail)


async def test_opens_after_threshold_consecutive_failures(clock: Clock) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(clock, transitions)

    await trip(breaker, failures=2)
    assert breaker.snapshot().state is CircuitState.CLOSED
    await trip(breaker, failures=1)

    assert breaker.snapshot().state is CircuitState.OPEN
    assert [(t.previous, t.current) for t in transitions] == [
        (CircuitState.CLOSED, CircuitState.OPEN)
    ]
    assert transitions[0].at == clock.now()
    assert transitions[0].breaker == "venue"


async def test_success_resets_the_consecutive_failure_count(clock: Clock) -> None:
    breaker = make_breaker(clock, [])

    await trip(breaker, failures=2)
    assert await breaker.call(succeed) == "ok"
    await trip(breaker, failures=2)

    assert breaker.snapshot().state is CircuitState.CLOSED
    assert breaker.snapshot().consecutive_failures == 2


async def test_open_circuit_refuses_calls_with_time_left_until_probe(clock: Clock) -> None:
    breaker = make_breaker(clock, [])
    await trip(breaker)
    await clock.sleep(4.0)
    called = False

    async def must_not_run() -> None:
        nonlocal called
        called = True

    with pytest.raises(CircuitOpenError) as caught:
        await breaker.call(must_not_run)

    assert not called
    assert caught.value.breaker == "venue"
    assert caught.value.retry_after == pytest.approx(6.0)


async def test_turns_half_open_when_recovery_timeout_elapses(clock: Clock) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(clock, transitions)
    await trip(breaker)

    await clock.sleep(9.999)
    assert breaker.snapshot().state is CircuitState.OPEN
    await clock.sleep(0.001)

    assert breaker.snapshot().state is CircuitState.HALF_OPEN
    assert transitions[-1].previous is CircuitState.OPEN
    assert transitions[-1].current is CircuitState.HALF_OPEN


async def test_successful_probe_closes_the_circuit(clock: Clock) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(clock, transitions)
    await trip(breaker)
    await clock.sleep(10.0)

    assert await breaker.call(succeed) == "ok"

    assert breaker.snapshot().state is CircuitState.CLOSED
    assert [t.current for t in transitions] == [
        CircuitState.OPEN,
        CircuitState.HALF_OPEN,
        CircuitState.CLOSED,
    ]
    assert breaker.snapshot().consecutive_failures == 0


async def test_failed_probe_reopens_for_a_full_recovery_timeout(clock: Clock) -> None:
    transitions: list[BreakerTransition] = []
    breaker = make_breaker(clock, transitions)
    await trip(breaker)
    await clock.sleep(10.0)

    with pytest.raises(TransientError):
        await breaker.call(fail)

    assert breaker.snapshot().state is CircuitState.OPEN
    assert breaker.snapshot().retry_after == pytest.approx(10.0)
    assert transitions[-1].reason == "a probe failed"
    await clock.sleep(10.0)
    assert breaker.snapshot().state is CircuitState.HALF_OPEN


async def test_half_open_admits_at_most_the_configured_concurrent_probes(clock: Clock) -> None:
    breaker = make_breaker(clock, [], half_open_max_calls=2)
    await trip(breaker)
    await clock.sleep(10.0)
    release = asyncio.Event()
    both_entered = asyncio.Event()
    entered = 0

    async def slow_probe() -> str:
        nonlocal entered
        entered += 1
        if entered == 2:
            both_entered.set()
        await release.wait()
        return "ok"

    async with asyncio.TaskGroup() as group:
        probes = [group.create_task(breaker.call(slow_probe)) for _ in range(2)]
        await both_entered.wait()
        assert breaker.snapshot().probes_in_flight == 2
        with pytest.raises(CircuitOpenError):
            await breaker.call(slow_probe)
        release.set()

    assert [probe.result() for probe in probes] == ["ok", "ok"]
    assert entered == 2
    assert breaker.snapshot().state is CircuitState.CLOSED


async def test_cancelled_probe_frees_its_slot(clock: Clock) -> None:
    breaker = make_breaker(clock, [])
    await trip(breaker)
    await clock.sleep(10.0)
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as group:
        probe = group.create_task(breaker.call(hangs))
        await started.wait()
        probe.cancel()

    assert breaker.snapshot().state is CircuitState.HALF_OPEN
    assert breaker.snapshot().probes_in_flight == 0
    assert await breaker.call(succeed) == "ok"


@pytest.mark.parametrize(
    "error",
    [
        ValidationError("price", "abc", "a decimal"),
        PermanentError("order rejected"),
        RateLimitedError("slow down", retry_after=1.0),
    ],
)
async def test_errors_that_say_nothing_about_health_do_not_count(
    clock: Clock, error: Exception
) -> None:
    breaker = make_breaker(clock, [])

    for _ in range(5):
        with pytest.raises(type(error)):
            await breaker.call(fail, error)

    assert breaker.snapshot().state is CircuitState.CLOSED
    assert breaker.snapshot().consecutive_failures == 0


async def test_unknown_outcomes_and_timeouts_count_as_failures(clock: Clock) -> None:
    breaker = make_breaker(clock, [])

    with pytest.raises(UnknownOutcomeError):
        await breaker.call(fail, UnknownOutcomeError("lost reply", idempotency_key="k"))
    with pytest.raises(TimeoutError):
        await breaker.call(fail, TimeoutError())
    with pytest.raises(ConnectionError):
        await breaker.call(fail, ConnectionError())

    assert breaker.snapshot().state is CircuitState.OPEN


async def test_custom_failure_rule_decides_what_counts(clock: Clock) -> None:
    breaker = CircuitBreaker(
        "strict",
        failure_threshold=1,
        clock=clock,
        counts_as_failure=lambda error: isinstance(error, PermanentError),
    )

    with pytest.raises(TransientError):
        await breaker.call(fail)
    assert breaker.snapshot().state is CircuitState.CLOSED
    with pytest.raises(PermanentError):
        await breaker.call(fail, PermanentError("no"))

    assert breaker.snapshot().state is CircuitState.OPEN


async def test_async_with_records_outcomes_like_call(clock: Clock) -> None:
    breaker = make_breaker(clock, [], failure_threshold=2)

    for _ in range(2):
        with pytest.raises(TransientError):
            async with breaker:
                raise TransientError("down")
    with pytest.raises(CircuitOpenError):
        async with breaker:
            pytest.fail("an open breaker must not run the block")
    await clock.sleep(10.0)
    async with breaker:
        pass

    assert breaker.snapshot().state is CircuitState.CLOSED


async def test_stale_failure_from_before_opening_does_not_count_again(clock: Clock) -> None:
    breaker = make_breaker(clock, [], failure_threshold=1)
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow_failure() -> None:
        started.set()
        await finish.wait()
        raise TransientError("late")

    async def call_slow_failure() -> BaseException | None:
        try:
            await breaker.call(slow_failure)
        except TransientError as error:
            return error
        return None

    async with asyncio.TaskGroup() as group:
        slow = group.create_task(call_slow_failure())
        await started.wait()
        await trip(breaker, failures=1)  # opens the circuit
        await clock.sleep(10.0)
        assert breaker.snapshot().state is CircuitState.HALF_OPEN
        finish.set()

    assert isinstance(slow.result(), TransientError)

    assert breaker.snapshot().state is CircuitState.HALF_OPEN
    assert breaker.snapshot().opened_count == 1


async def test_failing_state_callback_does_not_break_calls(clock: Clock) -> None:
    def broken(transition: BreakerTransition) -> None:
        raise RuntimeError("metrics down")

    breaker = CircuitBreaker("venue", failure_threshold=1, clock=clock, on_state_change=broken)

    with pytest.raises(TransientError):
        await breaker.call(fail)

    assert breaker.snapshot().state is CircuitState.OPEN


async def test_snapshot_is_a_frozen_copy(clock: Clock) -> None:
    breaker = make_breaker(clock, [])
    await trip(breaker)

    snapshot = breaker.snapshot()

    assert snapshot.name == "venue"
    assert snapshot.state is CircuitState.OPEN
    assert snapshot.consecutive_failures == 3
    assert snapshot.last_failure == "TransientError: down"
    assert snapshot.opened_count == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.state = CircuitState.CLOSED  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [("failure_threshold", 0), ("recovery_timeout", 0.0), ("half_open_max_calls", 0)],
)
def test_rejects_bad_settings_by_name(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as caught:
        CircuitBreaker("venue", **{field: value})  # type: ignore[arg-type]

    assert caught.value.field == field
