"""How fast simulated time runs: virtual seconds simulated per real second.

Run: ``python -m benchmarks.clock``. Prints one JSON object. Each scenario simulates one
virtual hour on a fresh simulated loop (`run_simulated`): a single task ticking once a
second, then many concurrent tasks each ticking on its own period (periods drawn from a
seeded generator), so the loop's timer heap holds one timer per task. Real time is measured
around the whole `run_simulated` call, loop creation and shutdown included.
"""

from __future__ import annotations

import asyncio
import gc
import json
import platform
import random
import sys
import time

from legato.kernel.simulation import SimulatedClock, run_simulated

VIRTUAL_SECONDS = 3600.0
TASK_COUNTS = (1, 100, 1000)


async def _tick_for_an_hour(tasks: int, rng: random.Random) -> int:
    fired = 0

    async def ticker(period: float) -> None:
        nonlocal fired
        deadline = VIRTUAL_SECONDS - period
        loop = asyncio.get_running_loop()
        while loop.time() <= deadline:
            await asyncio.sleep(period)
            fired += 1

    # The lone ticker is the "3600 sleeps of 1 s" case; crowds tick every 1 to 30 seconds.
    periods = [1.0] if tasks == 1 else [rng.uniform(1.0, 30.0) for _ in range(tasks)]
    async with asyncio.TaskGroup() as group:
        for index, period in enumerate(periods):
            group.create_task(ticker(period), name=f"ticker-{index}")
    return fired


def _measure(tasks: int) -> dict[str, float | int]:
    gc.collect()
    clock = SimulatedClock()
    started = time.perf_counter()
    fired = run_simulated(_tick_for_an_hour(tasks, random.Random(11)), clock=clock)
    elapsed = time.perf_counter() - started
    return {
        "tasks": tasks,
        "timers_fired": fired,
        "virtual_seconds": round(clock.monotonic(), 3),
        "real_seconds": round(elapsed, 4),
        "virtual_seconds_per_real_second": round(clock.monotonic() / elapsed),
        "timers_per_real_second": round(fired / elapsed),
    }


def main() -> None:
    """Run every scenario and print one JSON object."""
    result: dict[str, object] = {
        "benchmark": "clock",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "virtual_seconds_per_scenario": VIRTUAL_SECONDS,
        "scenarios": [_measure(tasks) for tasks in TASK_COUNTS],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
