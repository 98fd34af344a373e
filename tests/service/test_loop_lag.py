"""Loop lag: late ticks, an overdue tick and the window a stall stays visible in."""

from __future__ import annotations

import pytest

from legato.kernel.errors import ValidationError
from legato.kernel.simulation import SimulatedClock
from legato.service.loop_lag import LoopLagMonitor


async def test_on_time_ticks_show_no_lag(clock: SimulatedClock) -> None:
    monitor = LoopLagMonitor(clock, interval=0.5, threshold=1.0)
    assert monitor.lag() is None
    assert not monitor.stalled()
    for _ in range(4):
        await monitor.tick()
        await clock.sleep(0.5)
    assert monitor.lag() == pytest.approx(0.0, abs=1e-9)
    assert not monitor.stalled()


async def test_a_late_tick_is_a_stall_until_the_window_passes(clock: SimulatedClock) -> None:
    monitor = LoopLagMonitor(clock, interval=0.5, threshold=1.0, window=10.0)
    await monitor.tick()
    clock.advance(3.5)  # a blocked loop: the next tick comes three seconds late
    assert monitor.stalled()  # overdue already, before the tick runs
    await monitor.tick()
    assert monitor.lag() == pytest.approx(3.0)
    for _ in range(25):
        await clock.sleep(0.5)
        await monitor.tick()
    assert not monitor.stalled()


def test_bad_settings_are_refused(clock: SimulatedClock) -> None:
    with pytest.raises(ValidationError, match="threshold"):
        LoopLagMonitor(clock, threshold=0)
