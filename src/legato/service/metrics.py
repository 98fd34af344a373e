"""Prometheus exposition: a collector that renders one `MetricsSnapshot` taken at scrape time.

Nothing is counted in the hot path: the route reads the store and the in-memory figures once
per scrape (`OperatorRuntime.snapshot()`), and this collector turns the snapshot into metric
families. See docs/operator-guide.md for the list.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from legato.kernel.supervisor import LoopState
from legato.service.latency import LatencyWindow
from legato.service.runtime import MetricsSnapshot

__all__ = ["CONTENT_TYPE", "SnapshotCollector", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, documentation: str, window: LatencyWindow) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, documentation, buckets=window.cumulative_buckets(), sum_value=window.total
    )


class SnapshotCollector(Collector):
    """Yields Legato's metric families from one snapshot."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every metric family of the snapshot."""
        snap = self.snapshot
        tasks = GaugeMetricFamily(
            "legato_tasks", "Tasks in the store by queue and state", labels=["queue", "state"]
        )
        for (queue, state), count in sorted(snap.tasks.items()):
            tasks.add_metric([queue, state], count)
        yield tasks
        yield GaugeMetricFamily(
            "legato_tasks_unschedulable",
            "Waiting tasks that no live worker can ever fit (queue or resources)",
            value=snap.unschedulable,
        )
        figures = snap.figures
        yield _histogram(
            "legato_task_enqueue_to_start_seconds",
            "Time from a task becoming due to an attempt starting",
            figures.enqueue_to_start,
        )
        yield _histogram(
            "legato_task_run_seconds", "Run time of attempts that ended", figures.run_time
        )
        yield CounterMetricFamily(
            "legato_task_retries",
            "Attempts that failed and were scheduled again",
            value=figures.retries,
        )
        yield CounterMetricFamily(
            "legato_task_dead_lettered",
            "Tasks that went to the dead-letter queue",
            value=figures.dead_lettered,
        )
        yield CounterMetricFamily(
            "legato_task_succeeded", "Tasks that succeeded", value=figures.succeeded
        )
        yield CounterMetricFamily(
            "legato_reaper_reclaimed",
            "Expired leases the service's reaper settled",
            value=figures.reaped,
        )
        workers = GaugeMetricFamily(
            "legato_workers", "Registered workers by health state", labels=["state"]
        )
        for state, count in sorted(snap.workers.items()):
            workers.add_metric([state], count)
        yield workers
        loop_up = GaugeMetricFamily(
            "legato_loop_up", "1 when a supervised loop is starting or running", labels=["loop"]
        )
        loop_failures = GaugeMetricFamily(
            "legato_loop_consecutive_failures",
            "Consecutive failed iterations of a supervised loop",
            labels=["loop"],
        )
        for name, health in sorted(snap.loops.items()):
            loop_up.add_metric(
                [name], 1 if health.state in (LoopState.STARTING, LoopState.RUNNING) else 0
            )
            loop_failures.add_metric([name], health.consecutive_failures)
        yield loop_up
        yield loop_failures
        if snap.loop_lag is not None:
            yield GaugeMetricFamily(
                "legato_event_loop_lag_seconds",
                "Worst recent event-loop lag of the service process",
                value=snap.loop_lag,
            )
        if snap.limiter_tokens:
            tokens = GaugeMetricFamily(
                "legato_limiter_available_tokens",
                "Tokens a named rate limiter could grant now",
                labels=["limiter"],
            )
            for name, available in sorted(snap.limiter_tokens.items()):
                tokens.add_metric([name], available)
            yield tokens
        if snap.bus is not None:
            bus = snap.bus
            for name, value, doc in (
                ("published", bus.published, "Messages published on the bus"),
                ("delivered", bus.delivered, "Successful handler calls"),
                ("failed", bus.failed, "Failed handler attempts"),
                ("dead_lettered", bus.dead_lettered, "Messages given up to the dead-letter topic"),
            ):
                yield CounterMetricFamily(f"legato_bus_{name}", doc, value=value)
            depth = GaugeMetricFamily(
                "legato_bus_queue_depth", "Messages waiting per subscriber", labels=["subscriber"]
            )
            for subscriber in bus.subscribers:
                depth.add_metric([subscriber.subscriber_id], subscriber.queue_depth)
            yield depth


def render_metrics(snapshot: MetricsSnapshot) -> bytes:
    """The snapshot in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
