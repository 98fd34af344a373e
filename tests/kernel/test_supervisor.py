"""Tests for legato.kernel.supervisor: supervised loops on simulated time."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Iterator, MutableMapping
from datetime import timedelta
from typing import Any

import pytest
import structlog

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.kernel.retry import Jitter, RetryPolicy
from legato.kernel.supervisor import LoopState, Supervisor

BACKOFF = RetryPolicy(initial_delay=1.0, max_delay=8.0, multiplier=2.0, jitter=Jitter.NONE)


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Capture structlog events (and skip rendering dozens of tracebacks to the console)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


class Body:
    """A loop body that records when it ran and fails for the first `failures` iterations."""

    def __init__(self, clock: Clock, failures: int = 0, duration: float = 0.0) -> None:
        self.clock = clock
        self.failures = failures
        self.duration = duration
        self.ran_at: list[float] = []
        self.ran = asyncio.Event()

    async def __call__(self) -> None:
        self.ran_at.append(self.clock.monotonic())
        self.ran.set()
        if self.duration:
            await self.clock.sleep(self.duration)
        if len(self.ran_at) <= self.failures:
            raise RuntimeError(f"failure {len(self.ran_at)}")


async def run_for(clock: Clock, supervisor: Supervisor, seconds: float) -> float:
    """Start `supervisor`, let virtual time pass, stop it; return the virtual start time."""
    started = clock.monotonic()
    async with supervisor:
        await clock.sleep(seconds)
    return started


def offsets(times: list[float], origin: float) -> list[float]:
    return [round(t - origin, 9) for t in times]


async def test_loop_runs_every_interval_start_to_start(clock: Clock) -> None:
    body = Body(clock, duration=3.0)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("heartbeat", body, interval=10.0)

    origin = await run_for(clock, supervisor, 35.0)

    assert offsets(body.ran_at, origin) == [0.0, 10.0, 20.0, 30.0]


async def test_run_immediately_false_waits_one_interval_first(clock: Clock) -> None:
    body = Body(clock)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("reaper", body, interval=10.0, run_immediately=False)

    origin = await run_for(clock, supervisor, 25.0)

    assert offsets(body.ran_at, origin) == [10.0, 20.0]


async def test_jitter_spreads_intervals_within_bounds_reproducibly(clock: Clock) -> None:
    histories = []
    for seed in (5, 5):
        body = Body(clock)
        supervisor = Supervisor(clock=clock, rng=random.Random(seed))
        supervisor.add_loop("guard", body, interval=10.0, jitter=2.0)
        origin = await run_for(clock, supervisor, 100.0)
        gaps = [b - a for a, b in zip(body.ran_at, body.ran_at[1:], strict=False)]
        assert all(10.0 <= gap <= 12.0 for gap in gaps)
        assert len(set(gaps)) > 1
        histories.append(offsets(body.ran_at, origin))

    assert histories[0] == histories[1]


async def test_timed_out_iteration_counts_as_failure(clock: Clock) -> None:
    body = Body(clock, duration=3600.0)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("reconcile", body, interval=10.0, timeout=5.0, backoff=BACKOFF)

    async with supervisor:
        await clock.sleep(5.5)
        health = supervisor.health()["reconcile"]

    assert health.state is LoopState.BACKING_OFF
    assert health.iterations == 1
    assert health.failures == 1
    assert health.consecutive_failures == 1
    assert health.last_error == "iteration timed out after 5.0s"
    assert health.last_success_at is None


async def test_error_backoff_grows_then_resets_on_success(clock: Clock) -> None:
    body = Body(clock, failures=5)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("orders", body, interval=100.0, backoff=BACKOFF)

    origin = await run_for(clock, supervisor, 150.0)

    # Failures at 0, 1, 3, 7, 15 wait 1, 2, 4, 8, 8 (capped); the success at 23 resets the
    # backoff, so the loop goes back to its 100 s interval.
    assert offsets(body.ran_at, origin) == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0, 123.0]
    health = supervisor.health()["orders"]
    assert health.consecutive_failures == 0
    assert health.failures == 5
    assert health.iterations == 7


async def test_consecutive_failures_reset_by_success(clock: Clock) -> None:
    body = Body(clock, failures=2)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("sync", body, interval=10.0, backoff=BACKOFF)

    async with supervisor:
        await clock.sleep(1.5)
        assert supervisor.health()["sync"].consecutive_failures == 2
        await clock.sleep(2.0)
        health = supervisor.health()["sync"]

    assert health.consecutive_failures == 0
    assert health.state is LoopState.RUNNING
    assert health.last_error == "RuntimeError: failure 2"
    assert supervisor.health()["sync"].state is LoopState.STOPPED


async def test_failed_iteration_is_logged_with_its_error(
    clock: Clock, logs: list[MutableMapping[str, Any]]
) -> None:
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("guard", Body(clock, failures=1), interval=10.0, backoff=BACKOFF)

    await run_for(clock, supervisor, 0.5)

    failures = [entry for entry in logs if entry["event"] == "loop_iteration_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "warning"
    assert failures[0]["loop"] == "guard"
    assert failures[0]["error"] == "RuntimeError: failure 1"
    assert failures[0]["consecutive_failures"] == 1


async def test_crashing_loop_never_disturbs_a_healthy_one(clock: Clock) -> None:
    healthy = Body(clock)
    crashing = Body(clock, failures=1_000_000)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("healthy", healthy, interval=10.0)
    supervisor.add_loop("crashing", crashing, interval=1.0, backoff=BACKOFF)

    origin = await run_for(clock, supervisor, 45.0)

    assert offsets(healthy.ran_at, origin) == [0.0, 10.0, 20.0, 30.0, 40.0]
    health = supervisor.health()
    assert health["healthy"].consecutive_failures == 0
    assert health["crashing"].consecutive_failures == len(crashing.ran_at)
    assert health["crashing"].last_error is not None


class LoopBug(BaseException):
    """Something a loop body should never raise: it escapes the per-iteration handler."""


async def test_loop_killed_by_base_exception_is_crashed_and_others_run_on(clock: Clock) -> None:
    healthy = Body(clock)

    async def broken() -> None:
        raise LoopBug("escaped")

    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("healthy", healthy, interval=10.0)
    supervisor.add_loop("broken", broken, interval=10.0)

    async with supervisor:
        await clock.sleep(25.0)
        broken_health = supervisor.health()["broken"]

    assert broken_health.state is LoopState.CRASHED
    assert broken_health.last_error == "LoopBug: escaped"
    assert len(healthy.ran_at) == 3
    assert supervisor.health()["broken"].state is LoopState.CRASHED


async def test_stray_cancelled_error_from_body_is_a_failure_not_a_stop(clock: Clock) -> None:
    body = Body(clock)
    calls = 0

    async def cancels_itself_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError
        await body()

    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("odd", cancels_itself_once, interval=10.0, backoff=BACKOFF)

    async with supervisor:
        await clock.sleep(1.5)
        health = supervisor.health()["odd"]

    assert health.failures == 1
    assert len(body.ran_at) == 1


async def test_stop_lets_an_in_flight_iteration_finish_within_grace(clock: Clock) -> None:
    body = Body(clock, duration=2.0)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("flush", body, interval=10.0)
    await supervisor.start()
    await body.ran.wait()
    stop_started = clock.monotonic()

    await supervisor.stop(grace=5.0)

    assert clock.monotonic() - stop_started == pytest.approx(2.0)
    health = supervisor.health()["flush"]
    assert health.state is LoopState.STOPPED
    assert health.last_success_at is not None
    assert health.iterations == 1


async def test_stop_cancels_a_hung_iteration_after_grace(clock: Clock) -> None:
    cancelled = asyncio.Event()
    entered = asyncio.Event()

    async def hangs() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("stuck", hangs, interval=10.0)
    await supervisor.start()
    await entered.wait()
    stop_started = clock.monotonic()

    await supervisor.stop(grace=3.0)

    assert clock.monotonic() - stop_started == pytest.approx(3.0)
    assert cancelled.is_set()
    health = supervisor.health()["stuck"]
    assert health.state is LoopState.STOPPED
    assert health.in_iteration is False
    assert not supervisor.running


async def test_stop_ends_idle_loops_at_once(clock: Clock) -> None:
    body = Body(clock)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("idle", body, interval=3600.0)
    await supervisor.start()
    await body.ran.wait()
    stop_started = clock.monotonic()

    await supervisor.stop(grace=30.0)

    assert clock.monotonic() == stop_started


async def test_trigger_runs_an_iteration_now(clock: Clock) -> None:
    body = Body(clock)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("reconcile", body, interval=60.0)

    async with supervisor:
        await clock.sleep(5.0)
        origin = body.ran_at[0]
        body.ran.clear()
        supervisor.trigger("reconcile")
        await body.ran.wait()
        await clock.sleep(70.0)

    # Triggered at 5; the next scheduled run counts from the triggered one.
    assert offsets(body.ran_at, origin) == [0.0, 5.0, 65.0]


async def test_trigger_during_an_iteration_runs_again_right_after(clock: Clock) -> None:
    body = Body(clock, duration=4.0)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("reconcile", body, interval=60.0)

    async with supervisor:
        await body.ran.wait()
        origin = body.ran_at[0]
        supervisor.trigger("reconcile")
        await clock.sleep(10.0)

    assert offsets(body.ran_at, origin) == [0.0, 4.0]


async def test_loops_can_be_added_and_removed_while_running(clock: Clock) -> None:
    first = Body(clock)
    second = Body(clock)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("first", first, interval=10.0)

    async with supervisor:
        await clock.sleep(15.0)
        supervisor.add_loop("second", second, interval=10.0)
        await clock.sleep(10.0)
        removed = await supervisor.remove_loop("first")
        runs_when_removed = len(first.ran_at)
        await clock.sleep(30.0)
        names = set(supervisor.health())

    assert removed.state is LoopState.STOPPED
    assert len(first.ran_at) == runs_when_removed == 3
    assert offsets(second.ran_at, second.ran_at[0]) == [0.0, 10.0, 20.0, 30.0]
    assert names == {"second"}


async def test_health_reports_success_time_and_state(clock: Clock) -> None:
    body = Body(clock)
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("heartbeat", body, interval=10.0)
    assert supervisor.health()["heartbeat"].state is LoopState.STARTING

    async with supervisor:
        await clock.sleep(12.0)
        health = supervisor.loop_health("heartbeat")
        now = clock.now()

    assert health.name == "heartbeat"
    assert health.state is LoopState.RUNNING
    assert health.iterations == 2
    assert health.failures == 0
    assert health.last_success_at == now - timedelta(seconds=2.0)
    assert health.last_error is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        health.iterations = 0  # type: ignore[misc]


async def test_unknown_loop_name_is_a_validation_error(clock: Clock) -> None:
    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("known", Body(clock), interval=1.0)

    with pytest.raises(ValidationError) as caught:
        supervisor.trigger("unknown")

    assert caught.value.field == "name"
    assert "known" in caught.value.expected


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"interval": 0.0}, "interval"),
        ({"interval": 1.0, "timeout": 0.0}, "timeout"),
        ({"interval": 1.0, "jitter": -1.0}, "jitter"),
        ({"interval": 1.0, "jitter": 1.0}, "rng"),
        ({"interval": 1.0, "backoff": RetryPolicy(jitter=Jitter.FULL)}, "rng"),
    ],
)
def test_add_loop_rejects_bad_settings_by_name(options: dict[str, object], field: str) -> None:
    supervisor = Supervisor()

    async def body() -> None:
        return None

    with pytest.raises(ValidationError) as caught:
        supervisor.add_loop("loop", body, **options)  # type: ignore[arg-type]

    assert caught.value.field == field


def test_duplicate_loop_name_is_rejected() -> None:
    supervisor = Supervisor()

    async def body() -> None:
        return None

    supervisor.add_loop("loop", body, interval=1.0)
    with pytest.raises(ValidationError):
        supervisor.add_loop("loop", body, interval=1.0)


async def test_loop_removing_itself_is_refused_as_a_failed_iteration(clock: Clock) -> None:
    supervisor = Supervisor(clock=clock)

    async def removes_itself() -> None:
        await supervisor.remove_loop("selfish")

    supervisor.add_loop("selfish", removes_itself, interval=10.0, backoff=BACKOFF)

    async with supervisor:
        await clock.sleep(0.5)
        health = supervisor.health()["selfish"]

    assert health.failures == 1
    assert health.last_error is not None
    assert "a loop other than the one making this call" in health.last_error


async def test_cancelling_stop_still_cancels_every_loop(clock: Clock) -> None:
    entered = asyncio.Event()

    async def hangs() -> None:
        entered.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(clock=clock)
    supervisor.add_loop("stuck", hangs, interval=10.0)
    await supervisor.start()
    await entered.wait()

    async with asyncio.TaskGroup() as group:
        stopping = group.create_task(supervisor.stop(grace=60.0))
        await clock.sleep(1.0)
        stopping.cancel()

    assert stopping.cancelled()
    health = supervisor.health()["stuck"]
    assert health.in_iteration is False
    assert health.state is LoopState.STOPPED
