"""Latency windows: nearest-rank percentiles and cumulative Prometheus buckets."""

from __future__ import annotations

import pytest

from legato.kernel.errors import ValidationError
from legato.service.latency import LatencyWindow, Throughput, percentile


def test_percentiles_use_the_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 0.50) == 50.0
    assert percentile(samples, 0.95) == 95.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile([], 0.5) is None
    with pytest.raises(ValidationError, match="fraction"):
        percentile(samples, 1.5)


def test_the_window_keeps_recent_samples_and_buckets_keep_everything() -> None:
    window = LatencyWindow(size=3, buckets=(1.0, 10.0))
    for value in (0.5, 5.0, 50.0, 2.0, -1.0):
        window.record(value)
    summary = window.summary()
    assert summary["count"] == 3
    assert summary["max"] == 50.0
    assert window.cumulative_buckets() == [("1.0", 2), ("10.0", 4), ("+Inf", 5)]
    assert window.count == 5
    assert window.total == pytest.approx(57.5)


def test_throughput_counts_finishes_per_minute() -> None:
    throughput = Throughput(minutes=3)
    for at in (0.0, 30.0, 61.0, 150.0):
        throughput.record(at)
    assert throughput.per_minute(now=150.0) == [2, 1, 1]
    assert throughput.per_minute(now=300.0) == [0, 0, 0]
