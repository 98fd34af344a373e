"""Placement check: could any live worker ever run this task, given its queue and resources?

A task that asks for 4 GPUs on a queue whose workers have none would wait forever without a
word. The service reports such tasks as unschedulable (in the task listing, on the task,
and in /metrics) with the reason, so an operator can add capacity or fix the request.
"""

from __future__ import annotations

from collections.abc import Iterable

from legato.orchestrator.health import WorkerStatus
from legato.orchestrator.resources import Capacity, Resources
from legato.store.records import TaskRecord, TaskState, WorkerRecord

__all__ = ["check_placement", "waiting"]

_WAITING = (TaskState.PENDING, TaskState.RETRYING)


def waiting(record: TaskRecord) -> bool:
    """True for tasks that wait to be claimed (the only ones placement concerns)."""
    return record.state in _WAITING


def check_placement(
    queue: str,
    request: Resources,
    workers: Iterable[tuple[WorkerRecord, WorkerStatus]],
) -> tuple[bool, str]:
    """Return (schedulable, reason) for a request on `queue` against the live workers.

    Only workers that accept work count (not draining, unhealthy or evicted). A request fits
    a worker when it fits the worker's whole declared capacity, i.e. once it is idle; a worker
    that declared no capacity at all claims any task (as `Worker` does), so it fits everything.
    """
    serving = [
        Resources.from_json(record.resources)
        for record, status in workers
        if queue in record.queues and status.state.accepts_work
    ]
    if not serving:
        return False, f"no live worker serves queue {queue!r}"
    if any(capacity.empty or Capacity(capacity).fits(request) for capacity in serving):
        return True, f"{len(serving)} live worker(s) on queue {queue!r} can run it"
    return False, (
        f"no live worker on queue {queue!r} can ever fit cpu={request.cpu} "
        f"memory_mb={request.memory_mb} gpus={request.gpus} labels={sorted(request.labels)}"
    )
