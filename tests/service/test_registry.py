"""The registry view: the policy applied per worker, failure windows, drains, departures."""

from __future__ import annotations

from legato.orchestrator.health import WorkerHealth
from legato.service.registry import WorkerRegistry
from legato.store.records import WorkerRecord


def _record(worker_id: str, heartbeat_at: float) -> WorkerRecord:
    return WorkerRecord(
        worker_id, "host", 1, ("default",), "{}", 2, "0", "active", 0.0, heartbeat_at
    )


def test_first_sight_and_every_state_change_are_reported_once() -> None:
    registry = WorkerRegistry()
    first = registry.observe([_record("a", 0.0)], now=1.0)
    same = registry.observe([_record("a", 0.0)], now=2.0)
    late = registry.observe([_record("a", 0.0)], now=31.0)
    assert [(c.worker_id, c.before, c.after) for c in first] == [("a", None, WorkerHealth.HEALTHY)]
    assert same == []
    assert [(c.before, c.after) for c in late] == [(WorkerHealth.HEALTHY, WorkerHealth.UNHEALTHY)]


def test_a_worker_failing_most_attempts_turns_degraded() -> None:
    registry = WorkerRegistry()
    registry.observe([_record("a", 0.0)], now=0.0)
    for failed in [True] * 8 + [False] * 2:
        registry.record_outcome("a", failed=failed)
    registry.observe([_record("a", 1.0)], now=1.0)
    assert registry.status("a").state is WorkerHealth.DEGRADED
    assert registry.counts()["degraded"] == 1


def test_a_drained_worker_counts_as_draining_and_a_departed_one_is_forgotten() -> None:
    registry = WorkerRegistry()
    registry.observe([_record("a", 0.0), _record("b", 0.0)], now=0.0)
    registry.drain("a", now=1.0)
    assert registry.counts()["draining"] == 1
    registry.observe([_record("b", 2.0)], now=2.0)
    assert [r.worker_id for r in registry.records()] == ["b"]
    assert registry.record("a") is None
