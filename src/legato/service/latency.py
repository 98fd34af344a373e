"""Latency figures the service derives from task timestamps: percentiles and histograms.

A `LatencyWindow` keeps the most recent samples (for p50/p95/p99 on /stats) and cumulative
bucket counts (for Prometheus histograms on /metrics): the window answers "how is it now",
the buckets "how has it been since the service started".
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

from legato.kernel.errors import ValidationError

__all__ = ["DEFAULT_BUCKETS", "LatencyWindow", "Throughput", "percentile"]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Upper bounds in seconds: tasks range from milliseconds of work to minutes of queueing."""


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of already sorted samples (None when there are none)."""
    if not 0 <= fraction <= 1:
        raise ValidationError("fraction", fraction, "a number between 0 and 1")
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


class LatencyWindow:
    """The last `size` samples of one latency plus cumulative histogram buckets."""

    __slots__ = ("_bucket_counts", "_samples", "buckets", "count", "total")

    def __init__(self, size: int = 10_000, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        if size < 1:
            raise ValidationError("size", size, "an int >= 1")
        self._samples: deque[float] = deque(maxlen=size)
        self.buckets = tuple(sorted(buckets))
        self._bucket_counts = [0] * len(self.buckets)
        self.count = 0
        self.total = 0.0

    def record(self, seconds: float) -> None:
        """Add one sample; negative ones (clock skew between hosts) count as zero."""
        value = max(0.0, float(seconds))
        self._samples.append(value)
        self.count += 1
        self.total += value
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self._bucket_counts):
            self._bucket_counts[index] += 1

    def summary(self) -> dict[str, float | int | None]:
        """count, p50, p95, p99 and max over the recent window."""
        ordered = sorted(self._samples)
        return {
            "count": len(ordered),
            "p50": percentile(ordered, 0.50),
            "p95": percentile(ordered, 0.95),
            "p99": percentile(ordered, 0.99),
            "max": ordered[-1] if ordered else None,
        }

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, samples at or below it), ending with +Inf."""
        running = 0
        result: list[tuple[str, int]] = []
        for bound, count in zip(self.buckets, self._bucket_counts, strict=True):
            running += count
            result.append((repr(float(bound)), running))
        result.append(("+Inf", self.count))
        return result


class Throughput:
    """Tasks finished per minute over the last `minutes` minutes, for the overview chart."""

    __slots__ = ("_counts", "minutes")

    def __init__(self, minutes: int = 30) -> None:
        self.minutes = minutes
        self._counts: dict[int, int] = {}

    def record(self, at: float) -> None:
        """Count one finish at POSIX time `at`."""
        minute = int(at // 60)
        self._counts[minute] = self._counts.get(minute, 0) + 1
        if len(self._counts) > self.minutes * 2:
            for old in sorted(self._counts)[: -self.minutes]:
                del self._counts[old]

    def per_minute(self, now: float) -> list[int]:
        """Counts for each of the last `minutes` minutes, oldest first, current minute last."""
        current = int(now // 60)
        return [self._counts.get(m, 0) for m in range(current - self.minutes + 1, current + 1)]
