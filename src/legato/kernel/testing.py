"""pytest plugin for Legato: async tests run on simulated time unless marked `realtime`.

Loaded automatically through the `pytest11` entry point. What it gives a test suite:

- Every `async def test_...` runs on a fresh `SimulatedEventLoop`, as `run_simulated` would
  run it. The `clock` fixture is that loop's `SimulatedClock`: the same instance the loop
  uses, so sync fixtures that take `clock` build components on the test's virtual time.
- `@pytest.mark.realtime` runs the async test on a real asyncio loop, like `asyncio.run`;
  `clock` is then a `RealClock`.
- `simulate` is a callable fixture, `simulate(coroutine)`, that runs a coroutine on a fresh
  simulated loop driven by the test's `clock`; for sync tests. Annotate it as `Simulate`.
- Sync tests are untouched. Async fixtures are not supported: use a sync fixture and an async
  context manager inside the test.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import pytest

from legato.kernel.clock import Clock, RealClock
from legato.kernel.simulation import SimulatedClock, SimulatedEventLoop, run_simulated

__all__ = ["Simulate", "clock", "pytest_configure", "pytest_pyfunc_call", "simulate"]

T = TypeVar("T")

_REALTIME = "realtime"
# Markers of other async test plugins (anyio comes with FastAPI's test client).
_OTHER_RUNNERS = ("anyio", "asyncio", "trio")


def pytest_configure(config: pytest.Config) -> None:
    """Register the `realtime` marker, so projects without Legato's config can use it."""
    config.addinivalue_line(
        "markers", f"{_REALTIME}: run this async test on a real asyncio loop, not simulated time"
    )


def _is_realtime(node: pytest.Item) -> bool:
    return node.get_closest_marker(_REALTIME) is not None


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> Clock:
    """The test's clock: the simulated loop's `SimulatedClock`, or a `RealClock` if realtime."""
    if _is_realtime(request.node):
        return RealClock()
    return SimulatedClock()


class Simulate(Protocol):
    """The `simulate` fixture's type: run a coroutine on simulated time, return its result."""

    def __call__(self, main: Coroutine[Any, Any, T], /) -> T:
        """Run `main` on a fresh simulated loop driven by the test's clock."""
        ...


@pytest.fixture
def simulate(clock: Clock) -> Simulate:
    """A function that runs a coroutine on a fresh simulated loop on the test's clock."""
    if not isinstance(clock, SimulatedClock):
        pytest.fail("the simulate fixture runs on simulated time; drop the 'realtime' marker")
    simulated_clock = clock

    def run(main: Coroutine[Any, Any, T], /) -> T:
        return run_simulated(main, clock=simulated_clock)

    return run


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run coroutine test functions on a simulated (or, if marked, a real) event loop."""
    test_function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test_function):
        return None
    if any(pyfuncitem.get_closest_marker(name) for name in _OTHER_RUNNERS):
        return None  # the test asked for another async plugin; let that one run it
    funcargs = pyfuncitem.funcargs
    # The test's own parameters, selected as pytest's default hook does; `_fixtureinfo` is
    # pytest-private, the one internal this plugin relies on (other async plugins do too).
    arguments = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    for name, value in arguments.items():
        if inspect.iscoroutine(value) or inspect.isasyncgen(value):
            if inspect.iscoroutine(value):
                value.close()
            pytest.fail(
                f"fixture {name!r} is an async fixture (it gave a coroutine or async "
                "generator); Legato's plugin supports only sync fixtures. Build the object in "
                "a sync fixture and enter it with 'async with' inside the test.",
                pytrace=False,
            )
    if _is_realtime(pyfuncitem):
        with asyncio.Runner() as runner:
            runner.run(test_function(**arguments))
        return True
    # The loop must run on the very clock the fixtures saw; make one if nobody asked for it.
    fixture_clock = funcargs.get("clock")
    if isinstance(fixture_clock, SimulatedClock):
        simulated_clock = fixture_clock
    else:
        simulated_clock = SimulatedClock()
    with asyncio.Runner(loop_factory=lambda: SimulatedEventLoop(simulated_clock)) as runner:
        runner.run(test_function(**arguments))
    return True
