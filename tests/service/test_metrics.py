"""Prometheus rendering of a snapshot: every family, consistent histograms, labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from legato.service.metrics import render_metrics
from legato.service.runtime import MetricsSnapshot
from legato.service.watcher import TaskFigures


def _snapshot() -> MetricsSnapshot:
    figures = TaskFigures()
    for seconds in (0.02, 0.3, 4.0):
        figures.run_time.record(seconds)
    figures.retries = 2
    return MetricsSnapshot(
        tasks={("default", "pending"): 3, ("emails", "dead"): 1},
        workers={"healthy": 2, "evicted": 1},
        figures=figures,
        loops={},
        bus=None,
        loop_lag=0.01,
        unschedulable=1,
        limiter_tokens={"venue.orders": 4.0},
    )


def test_the_snapshot_renders_as_parseable_prometheus_text() -> None:
    families = {
        f.name: f for f in text_string_to_metric_families(render_metrics(_snapshot()).decode())
    }
    assert {
        "legato_tasks",
        "legato_tasks_unschedulable",
        "legato_task_run_seconds",
        "legato_task_enqueue_to_start_seconds",
        "legato_task_retries",
        "legato_workers",
        "legato_event_loop_lag_seconds",
        "legato_limiter_available_tokens",
    } <= set(families)
    tasks = {
        (s.labels["queue"], s.labels["state"]): s.value for s in families["legato_tasks"].samples
    }
    assert tasks == {("default", "pending"): 3.0, ("emails", "dead"): 1.0}
    run = {
        (s.name, s.labels.get("le")): s.value for s in families["legato_task_run_seconds"].samples
    }
    assert run[("legato_task_run_seconds_bucket", "0.025")] == 1.0
    assert run[("legato_task_run_seconds_bucket", "+Inf")] == 3.0
    assert run[("legato_task_run_seconds_count", None)] == 3.0
    assert families["legato_task_retries"].samples[0].value == 2.0
