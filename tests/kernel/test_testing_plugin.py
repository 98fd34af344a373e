"""Tests for legato.kernel.testing, the pytest plugin: async tests on simulated time."""

from __future__ import annotations

import asyncio

import pytest

from legato.kernel.clock import Clock, RealClock
from legato.kernel.simulation import SimulatedClock, SimulatedEventLoop, current_clock
from legato.kernel.testing import Simulate

pytest_plugins = ["pytester"]

# Hypothesis's plugin costs about a second per inner session and plays no part here.
_INNER_ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


@pytest.fixture
def sleeper_deadline(clock: Clock) -> float:
    """A sync fixture that reads the test's clock, as components under test do."""
    return clock.monotonic() + 60


async def test_async_test_runs_on_a_simulated_loop_driven_by_the_clock_fixture(
    clock: Clock,
) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SimulatedEventLoop)
    assert loop.clock is clock
    assert current_clock() is clock
    await asyncio.sleep(3600)
    assert clock.monotonic() == 3600


async def test_sync_fixtures_see_the_same_clock_as_the_loop(
    clock: Clock, sleeper_deadline: float
) -> None:
    await clock.sleep(60)
    assert clock.monotonic() == sleeper_deadline


async def test_async_test_without_the_clock_fixture_still_runs_on_simulated_time() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SimulatedEventLoop)
    await asyncio.sleep(86400)
    assert loop.time() == 86400


@pytest.mark.realtime
async def test_realtime_marker_runs_on_a_real_loop_with_a_real_clock(clock: Clock) -> None:
    assert isinstance(clock, RealClock)
    assert not isinstance(asyncio.get_running_loop(), SimulatedEventLoop)
    assert isinstance(current_clock(), RealClock)
    await clock.sleep(0.001)


@pytest.mark.parametrize("seconds", [1, 10])
async def test_parametrized_async_tests_receive_their_arguments(clock: Clock, seconds: int) -> None:
    await asyncio.sleep(seconds)
    assert clock.monotonic() == seconds


class TestAsyncMethods:
    """Async test methods in a class run the same way as module-level async tests."""

    async def test_async_method_runs_on_simulated_time(self, clock: Clock) -> None:
        await asyncio.sleep(120)
        assert clock.monotonic() == 120


def test_simulate_runs_coroutines_on_the_tests_clock(clock: Clock, simulate: Simulate) -> None:
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return current_clock().monotonic()

    assert isinstance(clock, SimulatedClock)
    assert simulate(nap(5)) == 5
    assert simulate(nap(5)) == 10
    assert clock.monotonic() == 10


def test_sync_tests_run_untouched_without_a_loop() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_failing_async_test_is_reported_as_a_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio

        async def test_wrong(clock):
            await asyncio.sleep(5)
            assert clock.monotonic() == 4
        """
    )
    result = pytester.runpytest_inprocess(*_INNER_ARGS)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 5.0 == 4*"])


def test_deadlocked_async_test_fails_with_simulation_deadlock(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio

        async def test_waits_forever():
            await asyncio.Event().wait()
        """
    )
    result = pytester.runpytest_inprocess(*_INNER_ARGS)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*SimulationDeadlock*"])


def test_async_fixture_is_refused_with_a_clear_message(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        async def resource():
            return 1

        async def test_uses_async_fixture(resource):
            pass
        """
    )
    result = pytester.runpytest_inprocess(*_INNER_ARGS, "-W", "ignore")
    # pytest 9 refuses it during setup; on pytest 8 the plugin refuses it when calling.
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 1
    assert "passed" not in outcomes
    result.stdout.fnmatch_lines(["*async fixture*"])


def test_realtime_marker_is_registered_by_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.realtime
        async def test_real(clock):
            assert type(clock).__name__ == "RealClock"
        """
    )
    result = pytester.runpytest_inprocess(*_INNER_ARGS, "--strict-markers")
    result.assert_outcomes(passed=1)


def test_fixture_handing_over_a_coroutine_is_refused_by_the_plugin(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.fixture
        def pending_answer():
            return asyncio.sleep(0, result=42)

        async def test_uses_it(pending_answer):
            assert await pending_answer == 42
        """
    )
    result = pytester.runpytest_inprocess(*_INNER_ARGS)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*'pending_answer' is an async fixture*"])
