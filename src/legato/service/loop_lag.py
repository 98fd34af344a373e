"""Event-loop lag: how late a tiny supervised loop wakes up, the liveness signal of /health.

A loop that should run every `interval` seconds but starts `interval + x` after the last
start was held up `x` seconds by something blocking the event loop. The service is stalled
when the worst lag of the last `window` seconds, or the time since the last tick, passes
`threshold`: a stall stays visible for `window` seconds after it ended, long enough for a
probe that polls every few seconds to see it.
"""

from __future__ import annotations

from collections import deque

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError

__all__ = ["LoopLagMonitor"]


class LoopLagMonitor:
    """Measures the lag of the loop it runs on; call `tick()` every `interval` seconds."""

    __slots__ = ("_clock", "_lags", "_last_tick", "interval", "threshold", "window")

    def __init__(
        self, clock: Clock, *, interval: float = 0.5, threshold: float = 2.0, window: float = 10.0
    ) -> None:
        if interval <= 0:
            raise ValidationError("interval", interval, "seconds > 0")
        if threshold <= 0:
            raise ValidationError("threshold", threshold, "seconds > 0")
        self._clock = clock
        self.interval = interval
        self.threshold = threshold
        self._last_tick: float | None = None
        if window <= 0:
            raise ValidationError("window", window, "seconds > 0")
        self.window = window
        # (tick time, lag) pairs of the last `window` seconds.
        self._lags: deque[tuple[float, float]] = deque()

    async def tick(self) -> None:
        """One probe: record how late this tick is relative to the previous one."""
        now = self._clock.monotonic()
        if self._last_tick is not None:
            self._lags.append((now, max(0.0, now - self._last_tick - self.interval)))
        self._last_tick = now
        while self._lags and self._lags[0][0] < now - self.window:
            self._lags.popleft()

    @property
    def started(self) -> bool:
        """True once the probe has ticked at least once."""
        return self._last_tick is not None

    def lag(self) -> float | None:
        """The worst recent lag in seconds, counting a tick that is overdue now (None: no data)."""
        if self._last_tick is None:
            return None
        now = self._clock.monotonic()
        overdue = max(0.0, now - self._last_tick - self.interval)
        recent = [lag for at, lag in self._lags if at >= now - self.window]
        return max([overdue, *recent])

    def stalled(self) -> bool:
        """True when the loop lags by more than `threshold` (never before the first tick)."""
        lag = self.lag()
        return lag is not None and lag > self.threshold
