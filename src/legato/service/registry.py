"""The service's view of the worker registry: each worker's health by the policy, and drains.

The store holds what workers say about themselves (registration and heartbeats); this
registry applies `legato.orchestrator.health` to it on every observation. An operator's
drain is written to the store (`TaskStore.set_worker_state`), where every worker, in any
process, reads it at its next heartbeat; a worker running in this process (the embedded
worker) is told at once through `Worker.drain()`. A record the store shows draining reads
draining here too, so the flag survives a service restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from legato.orchestrator.health import (
    DEFAULT_HEALTH_POLICY,
    HealthObservation,
    HealthPolicy,
    WorkerHealth,
    WorkerStatus,
    observe,
    request_drain,
)
from legato.orchestrator.worker import Worker
from legato.store.records import WorkerRecord, WorkerState

__all__ = ["HealthChange", "WorkerRegistry"]

_OUTCOME_WINDOW = 50


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A worker whose reported state changed during an observation."""

    worker_id: str
    before: WorkerHealth | None
    after: WorkerHealth
    reason: str


class WorkerRegistry:
    """Health statuses of the registered workers, by worker id."""

    def __init__(self, policy: HealthPolicy = DEFAULT_HEALTH_POLICY) -> None:
        self.policy = policy
        self._statuses: dict[str, WorkerStatus] = {}
        self._records: dict[str, WorkerRecord] = {}
        self._outcomes: dict[str, deque[bool]] = {}
        self._local: dict[str, Worker] = {}

    def attach_local(self, worker: Worker) -> None:
        """Know a worker of this process, so that draining it takes effect at once."""
        self._local[worker.worker_id] = worker

    def detach_local(self, worker: Worker) -> None:
        """Forget a local worker that ended."""
        self._local.pop(worker.worker_id, None)

    def record_outcome(self, worker_id: str, failed: bool) -> None:
        """Count one finished attempt of `worker_id` in its recent failure window."""
        window = self._outcomes.setdefault(worker_id, deque(maxlen=_OUTCOME_WINDOW))
        window.append(failed)

    def observe(self, records: Sequence[WorkerRecord], now: float) -> list[HealthChange]:
        """Apply the policy to every live worker record; return the state changes."""
        changes: list[HealthChange] = []
        seen = set()
        for record in records:
            seen.add(record.worker_id)
            self._records[record.worker_id] = record
            before = self._statuses.get(record.worker_id)
            current = before if before is not None else WorkerStatus(changed_at=now)
            window = self._outcomes.get(record.worker_id, ())
            observation = HealthObservation(
                heartbeat_age=max(0.0, now - record.heartbeat_at),
                failures=sum(window),
                outcomes=len(window),
                heartbeat_at=record.heartbeat_at,
            )
            after = observe(current, observation, now, self.policy)
            if record.state == WorkerState.DRAINING and not after.draining:
                after = request_drain(after, now)
            self._statuses[record.worker_id] = after
            if before is None or after.state is not before.state:
                changes.append(
                    HealthChange(
                        record.worker_id,
                        None if before is None else before.state,
                        after.state,
                        after.reason,
                    )
                )
        for gone in set(self._records) - seen:
            # Deregistered cleanly (or purged): nothing left to judge.
            self._records.pop(gone, None)
            self._statuses.pop(gone, None)
            self._outcomes.pop(gone, None)
        return changes

    def status(self, worker_id: str) -> WorkerStatus:
        """The worker's status (a fresh healthy one if it was never observed)."""
        return self._statuses.get(worker_id, WorkerStatus())

    def record(self, worker_id: str) -> WorkerRecord | None:
        """The last registry record seen for `worker_id`."""
        return self._records.get(worker_id)

    def records(self) -> list[WorkerRecord]:
        """Every worker record of the last observation."""
        return list(self._records.values())

    def drain(self, worker_id: str, now: float) -> WorkerStatus:
        """Show a worker draining; tell it at once if it runs in this process.

        The caller writes the drain to the store, which is what reaches other processes.
        """
        status = request_drain(self.status(worker_id), now)
        self._statuses[worker_id] = status
        local = self._local.get(worker_id)
        if local is not None:
            local.drain()
        return status

    def evicted(self) -> list[str]:
        """Ids of workers the policy evicted."""
        return [w for w, s in self._statuses.items() if s.health is WorkerHealth.EVICTED]

    def counts(self) -> dict[str, int]:
        """How many workers are in each reported state (every state present, maybe 0)."""
        counts = {state.value: 0 for state in WorkerHealth}
        for worker_id in self._records:
            counts[self.status(worker_id).state.value] += 1
        return counts
