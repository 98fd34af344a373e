"""Placement: a request no live worker on its queue can ever fit is unschedulable."""

from __future__ import annotations

import json

from legato.orchestrator.health import WorkerStatus, request_drain
from legato.orchestrator.resources import Resources
from legato.service.placement import check_placement
from legato.store.records import WorkerRecord


def _worker(queues: tuple[str, ...], resources: Resources) -> WorkerRecord:
    return WorkerRecord("w", "host", 1, queues, resources.to_json(), 4, "0", "active", 0.0, 0.0)


GPU_BOX = _worker(
    ("train",), Resources(cpu=8, memory_mb=32_000, gpus=2, labels=frozenset({"a100"}))
)


def test_a_request_that_fits_an_idle_worker_is_schedulable() -> None:
    ok, reason = check_placement("train", Resources(gpus=2), [(GPU_BOX, WorkerStatus())])
    assert ok
    assert "1 live worker" in reason


def test_too_many_gpus_or_a_missing_label_is_unschedulable() -> None:
    for request in (Resources(gpus=4), Resources(labels=frozenset({"h100"}))):
        ok, reason = check_placement("train", request, [(GPU_BOX, WorkerStatus())])
        assert not ok
        assert "can ever fit" in reason


def test_no_live_worker_on_the_queue_is_unschedulable() -> None:
    ok, reason = check_placement("other", Resources(), [(GPU_BOX, WorkerStatus())])
    assert not ok
    assert "no live worker serves queue 'other'" in reason
    drained = request_drain(WorkerStatus(), 0.0)
    assert not check_placement("train", Resources(), [(GPU_BOX, drained)])[0]


def test_a_worker_without_declared_capacity_takes_anything() -> None:
    anything = _worker(("train",), Resources())
    assert json.loads(anything.resources)["gpus"] == 0
    assert check_placement("train", Resources(gpus=8), [(anything, WorkerStatus())])[0]
