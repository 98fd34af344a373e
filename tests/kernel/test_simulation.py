"""Tests for legato.kernel.simulation: virtual time, jumping, real work and deadlocks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import random
import socket
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError
from legato.kernel.simulation import (
    DEFAULT_START,
    SimulatedClock,
    SimulatedEventLoop,
    SimulationDeadlock,
    current_clock,
    real_io,
    run_simulated,
)

# --- SimulatedClock on its own ------------------------------------------------------------


def test_clock_starts_at_2024_01_01_utc_by_default() -> None:
    clock = SimulatedClock()
    assert clock.now() == datetime(2024, 1, 1, tzinfo=UTC)
    assert clock.now().tzinfo is UTC
    assert clock.timestamp() == datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    assert clock.monotonic() == 0.0


def test_clock_satisfies_the_clock_protocol() -> None:
    assert isinstance(SimulatedClock(), Clock)


def test_clock_rejects_a_naive_start() -> None:
    with pytest.raises(ValidationError) as caught:
        SimulatedClock(datetime(2024, 1, 1))  # noqa: DTZ001 - naive on purpose
    assert caught.value.field == "start"
    assert "aware" in caught.value.expected


def test_clock_rejects_a_start_that_is_not_a_datetime() -> None:
    with pytest.raises(ValidationError) as caught:
        SimulatedClock("2024-01-01")  # type: ignore[arg-type]
    assert caught.value.field == "start"


def test_clock_converts_an_aware_start_to_utc() -> None:
    paris_summer = timezone(timedelta(hours=2))
    clock = SimulatedClock(datetime(2024, 6, 1, 12, 0, tzinfo=paris_summer))
    assert clock.now() == datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
    assert clock.now().utcoffset() == timedelta(0)


@pytest.mark.parametrize("settle", [-0.1, 2.0, float("nan"), "fast"])
def test_clock_rejects_a_settle_outside_zero_to_one_second(settle: object) -> None:
    with pytest.raises(ValidationError) as caught:
        SimulatedClock(settle=settle)  # type: ignore[arg-type]
    assert caught.value.field == "settle"


def test_advance_moves_now_timestamp_and_monotonic_together() -> None:
    clock = SimulatedClock(datetime(2024, 3, 1, tzinfo=UTC))
    clock.advance(90.5)
    assert clock.monotonic() == 90.5
    assert clock.now() == datetime(2024, 3, 1, 0, 1, 30, 500000, tzinfo=UTC)
    assert clock.timestamp() == clock.now().timestamp()


@pytest.mark.parametrize("seconds", [-1.0, float("inf"), float("nan")])
def test_advance_rejects_negative_or_non_finite_seconds(seconds: float) -> None:
    clock = SimulatedClock()
    with pytest.raises(ValidationError) as caught:
        clock.advance(seconds)
    assert caught.value.field == "seconds"
    assert clock.monotonic() == 0.0


def test_sleep_outside_the_clocks_loop_is_refused() -> None:
    clock = SimulatedClock()
    with pytest.raises(RuntimeError, match="own simulated event loop"):
        asyncio.run(clock.sleep(1))


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), "5", True])
async def test_sleep_rejects_infinite_nan_or_non_numeric_seconds(
    clock: SimulatedClock, seconds: float
) -> None:
    with pytest.raises(ValidationError):
        await clock.sleep(seconds)


# --- virtual time on the loop -------------------------------------------------------------


async def test_sleep_advances_now_by_exactly_the_virtual_seconds(clock: SimulatedClock) -> None:
    before = clock.now()
    await clock.sleep(30)
    assert clock.now() - before == timedelta(seconds=30)
    assert asyncio.get_running_loop().time() == clock.monotonic() == 30


async def test_negative_sleep_returns_without_moving_time(clock: SimulatedClock) -> None:
    await clock.sleep(-5)
    assert clock.monotonic() == 0


async def test_an_hour_of_timers_and_many_tasks_elapse_one_virtual_hour(
    clock: SimulatedClock,
) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(3600):
            await asyncio.sleep(1)
            ticks += 1

    async def sleeper(index: int) -> float:
        await asyncio.sleep(index % 3600)
        return clock.monotonic()

    async with asyncio.TaskGroup() as group:
        group.create_task(ticker())
        sleepers = [group.create_task(sleeper(index)) for index in range(500)]

    assert ticks == 3600
    assert clock.monotonic() == pytest.approx(3600)
    assert [task.result() for task in sleepers] == pytest.approx([float(i) for i in range(500)])


async def test_asyncio_timeout_fires_at_the_virtual_deadline(clock: SimulatedClock) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.sleep(60)
    assert clock.monotonic() == pytest.approx(5)


async def test_wait_for_times_out_on_virtual_time(clock: SimulatedClock) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), timeout=2.5)
    assert clock.monotonic() == pytest.approx(2.5)


async def test_call_later_and_call_at_fire_in_virtual_time_order(clock: SimulatedClock) -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    done = asyncio.Event()
    loop.call_later(3, lambda: fired.append(("later 3", loop.time())))
    loop.call_at(1, lambda: fired.append(("at 1", loop.time())))
    loop.call_later(2, lambda: fired.append(("later 2", loop.time())))
    loop.call_at(4, done.set)
    await done.wait()
    assert fired == [("at 1", 1.0), ("later 2", 2.0), ("later 3", 3.0)]


async def test_time_does_not_move_while_callbacks_are_ready(clock: SimulatedClock) -> None:
    timer_fired = asyncio.Event()
    asyncio.get_running_loop().call_later(0.001, timer_fired.set)
    for _ in range(1000):
        await asyncio.sleep(0)
    assert not timer_fired.is_set()
    assert clock.monotonic() == 0


async def test_timers_beyond_one_day_land_exactly(clock: SimulatedClock) -> None:
    # asyncio caps one selector wait at a day; the jump must still land on the timer.
    await asyncio.sleep(10 * 86400 + 0.25)
    assert clock.now() == DEFAULT_START + timedelta(days=10, seconds=0.25)


@pytest.mark.timeout(10)  # the failure mode is a loop spinning for ever
async def test_short_timers_still_fire_a_century_into_virtual_time(clock: SimulatedClock) -> None:
    # Far from zero one float step of loop time is bigger than asyncio's clock resolution.
    century = 100 * 365 * 86400.0
    clock.advance(century)
    for _ in range(10):
        await asyncio.sleep(0.001)
    assert clock.monotonic() == pytest.approx(century + 0.01, abs=1e-6)
    due_now = asyncio.Event()
    asyncio.get_running_loop().call_later(0, due_now.set)
    await due_now.wait()
    await asyncio.sleep(1e-9)  # shorter than one float step at this time


async def test_advance_inside_the_loop_makes_due_timers_fire(clock: SimulatedClock) -> None:
    woke_at: list[float] = []

    async def sleeper() -> None:
        await asyncio.sleep(10)
        woke_at.append(clock.monotonic())

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0)
    clock.advance(25)
    await task
    assert woke_at == [25.0]


# --- the trap: real work in flight freezes virtual time -----------------------------------


async def test_timeout_does_not_fire_while_a_thread_does_a_real_blocking_call(
    clock: SimulatedClock,
) -> None:
    events: list[str] = []

    async def five_second_timer() -> None:
        await asyncio.sleep(5)
        events.append("timer fired")

    async with asyncio.TaskGroup() as group:
        group.create_task(five_second_timer())
        async with asyncio.timeout(5):
            await asyncio.to_thread(time.sleep, 0.02)  # stands in for a disk write
        events.append(f"disk write done at {clock.monotonic()}")

    assert events == ["disk write done at 0.0", "timer fired"]


async def test_run_in_executor_with_an_explicit_pool_freezes_virtual_time(
    clock: SimulatedClock,
) -> None:
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        async with asyncio.timeout(1):
            results = await asyncio.gather(
                loop.run_in_executor(pool, time.sleep, 0.02),
                loop.run_in_executor(pool, pow, 2, 10),
            )
    assert list(results) == [None, 1024]
    assert clock.monotonic() == 0
    assert isinstance(loop, SimulatedEventLoop)
    assert loop.real_work_in_flight == 0


async def test_process_pool_work_freezes_virtual_time_until_its_result_is_back(
    clock: SimulatedClock,
) -> None:
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        async with asyncio.timeout(5):
            result = await loop.run_in_executor(pool, pow, 2, 10)
    assert result == 1024
    assert clock.monotonic() == 0


async def test_cancelled_executor_call_keeps_time_frozen_until_the_thread_ends(
    clock: SimulatedClock,
) -> None:
    release = threading.Event()
    order: list[str] = []

    def blocking_write() -> None:
        release.wait(timeout=5)
        order.append("thread ended")

    async def one_second_timer() -> None:
        await asyncio.sleep(1)
        order.append("timer fired")

    writer = asyncio.create_task(asyncio.to_thread(blocking_write))
    timer = asyncio.create_task(one_second_timer())
    await asyncio.sleep(0)
    writer.cancel()
    # Nobody awaits the thread any more, but it is still real work: time must wait for it.
    releaser = threading.Timer(0.02, release.set)
    releaser.start()
    await timer
    releaser.join()
    assert order == ["thread ended", "timer fired"]


async def test_executor_job_cancelled_before_it_starts_releases_virtual_time(
    clock: SimulatedClock,
) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SimulatedEventLoop)
    ran: list[str] = []
    gate = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        busy = loop.run_in_executor(pool, gate.wait, 5)
        queued = loop.run_in_executor(pool, ran.append, "queued job")
        queued.cancel()
        await asyncio.sleep(0)  # let the cancellation reach the pool before it frees up
        gate.set()
        await busy
        await asyncio.sleep(0)
    assert loop.real_work_in_flight == 0
    await asyncio.sleep(10)  # would wait forever in real time if the count leaked
    assert clock.monotonic() == 10
    assert ran == []


async def test_real_io_block_freezes_time_while_a_socket_reply_is_due(
    clock: SimulatedClock,
) -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        remote = threading.Timer(0.02, theirs.sendall, args=(b"row",))
        remote.start()
        async with asyncio.timeout(5), clock.real_io():
            reply = await loop.sock_recv(ours, 16)
        remote.join()
    assert reply == b"row"
    assert clock.monotonic() == 0


async def test_wait_real_returns_the_awaitables_result(clock: SimulatedClock) -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        remote = threading.Timer(0.02, theirs.sendall, args=(b"pong",))
        remote.start()
        async with asyncio.timeout(5):
            reply = await clock.wait_real(loop.sock_recv(ours, 16))
        remote.join()
    assert reply == b"pong"
    assert clock.monotonic() == 0


async def test_module_real_io_freezes_time_on_a_simulated_loop(clock: SimulatedClock) -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        remote = threading.Timer(0.02, theirs.sendall, args=(b"ack",))
        remote.start()
        async with asyncio.timeout(5), real_io():
            reply = await loop.sock_recv(ours, 16)
        remote.join()
    assert reply == b"ack"
    assert clock.monotonic() == 0


def test_module_real_io_does_nothing_on_a_real_loop() -> None:
    async def main() -> str:
        async with real_io():
            await asyncio.sleep(0)
        return "done"

    assert asyncio.run(main()) == "done"


async def test_unmarked_socket_wait_lets_time_jump_to_the_next_timer(
    clock: SimulatedClock,
) -> None:
    # The documented limit: an idle socket looks the same as a slow one, so without
    # real_io() the loop settles briefly and then jumps.
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await loop.sock_recv(ours, 16)
    assert clock.monotonic() == pytest.approx(5)


async def test_real_io_outside_the_clocks_loop_is_refused() -> None:
    other = SimulatedClock()
    with pytest.raises(RuntimeError, match="own simulated event loop"):
        async with other.real_io():
            pass


# --- deadlock detection -------------------------------------------------------------------


def test_waiting_on_an_event_nobody_sets_raises_simulation_deadlock() -> None:
    async def forgotten() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(forgotten(), name="forgotten-waiter")
            await asyncio.sleep(3)

    clock = SimulatedClock()
    with pytest.raises(SimulationDeadlock) as caught:
        run_simulated(main(), clock=clock)
    assert any(task.startswith("forgotten-waiter running") for task in caught.value.tasks)
    assert "forgotten-waiter" in str(caught.value)
    assert caught.value.virtual_time == pytest.approx(3)
    assert clock.loop is None


def test_deadlock_is_not_reported_while_a_thread_is_still_working() -> None:
    async def main() -> str:
        await asyncio.to_thread(time.sleep, 0.02)
        return "finished"

    assert run_simulated(main()) == "finished"


async def test_waiting_only_on_a_registered_socket_is_not_a_deadlock(
    clock: SimulatedClock,
) -> None:
    # No timer and nothing ready, but a real socket can still wake the loop.
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        remote = threading.Timer(0.02, theirs.sendall, args=(b"late",))
        remote.start()
        reply = await loop.sock_recv(ours, 16)
        remote.join()
    assert reply == b"late"
    assert clock.monotonic() == 0


@pytest.mark.timeout(10)
def test_a_socket_no_longer_registered_no_longer_holds_off_a_deadlock() -> None:
    # The loop keeps count of foreign descriptors as they are registered and removed.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            loop.add_reader(ours, lambda: None)
            loop.remove_reader(ours)
            await asyncio.Event().wait()

    with pytest.raises(SimulationDeadlock):
        run_simulated(main())


async def test_a_registered_socket_makes_every_jump_poll_it_first(
    clock: SimulatedClock,
) -> None:
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    assert not selector._has_foreign_fds()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        loop.add_reader(ours, lambda: None)
        assert selector._has_foreign_fds()
        await asyncio.sleep(5)  # jumps, after polling the socket for `settle` real seconds
        loop.remove_reader(ours)
    assert not selector._has_foreign_fds()
    assert clock.monotonic() == 5


@pytest.mark.parametrize("seconds", [2, 0, 1.5, -0.0])
def test_advance_takes_ints_and_floats_alike(seconds: float) -> None:
    clock = SimulatedClock()
    clock.advance(seconds)
    assert clock.monotonic() == seconds
    assert type(clock.monotonic()) is float


@pytest.mark.parametrize("seconds", [True, "1", None, -1, -1e-300, 10**400])
def test_advance_rejects_what_is_not_a_duration(seconds: object) -> None:
    clock = SimulatedClock()
    with pytest.raises((ValidationError, OverflowError)):
        clock.advance(seconds)  # type: ignore[arg-type]
    assert clock.monotonic() == 0.0


# --- determinism --------------------------------------------------------------------------


def _concurrent_sleepers_log(seed: int) -> list[tuple[float, int, int]]:
    async def main() -> list[tuple[float, int, int]]:
        rng = random.Random(seed)
        log: list[tuple[float, int, int]] = []
        loop = asyncio.get_running_loop()

        async def sleeper(index: int, delays: list[float]) -> None:
            for step, delay in enumerate(delays):
                await asyncio.sleep(delay)
                log.append((loop.time(), index, step))

        async with asyncio.TaskGroup() as group:
            for index in range(200):
                # Coarse delays so that many tasks share the same wake-up instant.
                delays = [rng.choice([0.0, 0.5, 1.0, 1.5]) for _ in range(20)]
                group.create_task(sleeper(index, delays))
        return log

    return run_simulated(main())


def test_same_seed_gives_the_identical_event_log() -> None:
    first = _concurrent_sleepers_log(seed=7)
    second = _concurrent_sleepers_log(seed=7)
    assert len(first) == 200 * 20
    assert first == second
    assert first != _concurrent_sleepers_log(seed=8)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=10_000), max_size=8), min_size=1, max_size=12
    )
)
def test_every_sleeper_wakes_exactly_at_the_sum_of_its_sleeps(plans: list[list[int]]) -> None:
    # Whole milliseconds, so the expected wake-up times are plain sums, compared to the ns.
    async def sleeper(delays_ms: list[int]) -> list[float]:
        loop = asyncio.get_running_loop()
        woke = []
        for delay_ms in delays_ms:
            await asyncio.sleep(delay_ms / 1000)
            woke.append(loop.time())
        return woke

    async def main() -> list[list[float]]:
        return list(await asyncio.gather(*(sleeper(plan) for plan in plans)))

    clock = SimulatedClock()
    woke = run_simulated(main(), clock=clock)
    for plan, times in zip(plans, woke, strict=True):
        expected = [sum(plan[: step + 1]) / 1000 for step in range(len(plan))]
        assert times == pytest.approx(expected, abs=1e-9)
    assert clock.monotonic() == pytest.approx(max(sum(plan) for plan in plans) / 1000, abs=1e-9)


# --- run_simulated and current_clock ------------------------------------------------------


def test_run_simulated_returns_the_coroutines_result_and_releases_the_clock() -> None:
    clock = SimulatedClock()

    async def main() -> datetime:
        await asyncio.sleep(42)
        return clock.now()

    assert run_simulated(main(), clock=clock) == DEFAULT_START + timedelta(seconds=42)
    assert clock.loop is None


def test_run_simulated_propagates_the_coroutines_exception() -> None:
    async def main() -> None:
        await asyncio.sleep(1)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_simulated(main())


def test_run_simulated_cancels_leftover_tasks_and_finalizes_async_generators() -> None:
    cleaned: list[str] = []

    async def leftover() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append("task cancelled")

    async def ticks() -> AsyncIterator[int]:
        try:
            for tick in range(10):
                yield tick
        finally:
            cleaned.append("generator closed")

    keep: list[object] = []

    async def main() -> None:
        keep.append(asyncio.create_task(leftover()))
        generator = ticks()
        keep.append(generator)
        await anext(generator)
        await asyncio.sleep(1)

    run_simulated(main())
    assert sorted(cleaned) == ["generator closed", "task cancelled"]


def test_run_simulated_closes_its_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        await asyncio.to_thread(time.sleep, 0)

    run_simulated(main())
    assert loops[0].is_closed()


def test_time_carries_on_when_a_clock_runs_a_second_program() -> None:
    clock = SimulatedClock()
    run_simulated(asyncio.sleep(10), clock=clock)
    run_simulated(asyncio.sleep(5), clock=clock)
    assert clock.monotonic() == 15


def test_a_clock_cannot_drive_two_open_loops() -> None:
    clock = SimulatedClock()
    loop = SimulatedEventLoop(clock)
    try:
        with pytest.raises(ValidationError) as caught:
            SimulatedEventLoop(clock)
        assert caught.value.field == "clock"
        coroutine = asyncio.sleep(1)
        with pytest.raises(ValidationError):
            run_simulated(coroutine, clock=clock)
    finally:
        loop.close()
    assert clock.loop is None
    SimulatedEventLoop(clock).close()


def test_run_simulated_rejects_what_is_not_a_coroutine() -> None:
    with pytest.raises(ValidationError) as caught:
        run_simulated(asyncio.sleep)  # type: ignore[arg-type]
    assert caught.value.field == "main"


def test_run_simulated_rejects_a_real_clock() -> None:
    coroutine = asyncio.sleep(1)
    with pytest.raises(ValidationError) as caught:
        run_simulated(coroutine, clock=RealClock())  # type: ignore[arg-type]
    assert caught.value.field == "clock"


def test_current_clock_is_the_simulated_loops_clock() -> None:
    clock = SimulatedClock()

    async def main() -> Clock:
        return current_clock()

    assert run_simulated(main(), clock=clock) is clock


def test_current_clock_is_a_real_clock_on_a_real_loop_or_outside_any_loop() -> None:
    async def main() -> Clock:
        return current_clock()

    assert isinstance(asyncio.run(main()), RealClock)
    assert isinstance(current_clock(), RealClock)
