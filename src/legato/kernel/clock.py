"""Time for everything in Legato: the `Clock` protocol and the real clock.

Library code never reads the wall clock or sleeps on its own; it asks a `Clock`. Production
code gets a `RealClock`. Tests, backtests and chaos runs get a `SimulatedClock`
(`legato.kernel.simulation`), whose virtual time jumps to the next timer whenever nothing is
ready, so an hour of timers runs in milliseconds.

This module is the one place in Legato allowed to read the operating system's clocks.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "RealClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of wall time, monotonic time and sleeping."""

    def now(self) -> datetime:
        """Return the current wall time as an aware UTC datetime."""
        ...

    def timestamp(self) -> float:
        """Return the current wall time as POSIX seconds (what the store persists)."""
        ...

    def monotonic(self) -> float:
        """Return seconds on a clock that never goes backwards; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` of this clock's time."""
        ...


class RealClock:
    """The operating system's clocks; `sleep` is `asyncio.sleep` on the running loop."""

    __slots__ = ()

    def now(self) -> datetime:
        """Return the current wall time as an aware UTC datetime."""
        return datetime.now(UTC)

    def timestamp(self) -> float:
        """Return the current wall time as POSIX seconds."""
        return time.time()

    def monotonic(self) -> float:
        """Return `time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running event loop."""
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "RealClock()"
