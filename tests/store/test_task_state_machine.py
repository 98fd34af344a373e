"""Property test of the task state machine against a model (hypothesis, SQLite).

Random sequences of submits, claims, heartbeats, completions (including stale ones from
workers that lost their lease), expiries, cancels and replays must keep the store equal to
a simple model: every task in exactly one state, none lost, no stale completion accepted.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from legato.store import ExpiredLease, NewTask, Outcome, TaskState, TaskStore, upgrade

LEASE = 5.0
MAX_ATTEMPTS = 3
WORKERS = ("w1", "w2", "w3")


@functools.cache
def migrated_template() -> Path:
    """A migrated empty SQLite file, made once per test session."""
    path = Path(tempfile.mkdtemp(prefix="legato-sm-")) / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@dataclass
class ModelTask:
    state: TaskState = TaskState.PENDING
    token: int = 0
    owner: str | None = None
    expires: float = 0.0
    attempts: int = 0
    run_at: float = 0.0
    cancel_requested: bool = False


def decide(expired: ExpiredLease, now: float) -> Outcome:
    if expired.cancel_requested:
        return Outcome(expired.task_id, expired.fencing_token, TaskState.CANCELLED, "lease_expired")
    if expired.attempt < MAX_ATTEMPTS:
        return Outcome(
            expired.task_id,
            expired.fencing_token,
            TaskState.RETRYING,
            "lease_expired",
            run_at=now + 1.0,
        )
    return Outcome(expired.task_id, expired.fencing_token, TaskState.DEAD, "lease_expired")


class TaskStateMachine(RuleBasedStateMachine):
    """Drives a real store and a model side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.directory = Path(tempfile.mkdtemp(prefix="legato-sm-run-"))
        path = self.directory / "legato.db"
        shutil.copyfile(migrated_template(), path)
        self.store: TaskStore = self.run(TaskStore.open(f"sqlite:///{path}", upgrade=False))
        self.model: dict[int, ModelTask] = {}
        # What each worker believes it holds: {task_id: token}; may be stale.
        self.held: dict[str, dict[int, int]] = {w: {} for w in WORKERS}
        self.now = 100.0
        self.stale_rejections = 0

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.runner.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @initialize()
    def seed_tasks(self) -> None:
        self.submit(2)

    @rule(count=st.integers(1, 3))
    def submit(self, count: int) -> None:
        tasks = [NewTask("job", "default", "{}", 0, self.now, "{}") for _ in range(count)]
        for submitted in self.run(self.store.submit(tasks, self.now)):
            assert submitted.task_id not in self.model
            self.model[submitted.task_id] = ModelTask(run_at=self.now)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 6.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim(self, worker: str, limit: int) -> None:
        expected = [
            task_id
            for task_id, task in sorted(self.model.items())
            if task.state in (TaskState.PENDING, TaskState.RETRYING) and task.run_at <= self.now
        ][:limit]
        leases = self.run(self.store.claim(worker, ["default"], limit, self.now, LEASE))
        assert [lease.task_id for lease in leases] == expected
        for lease in leases:
            task = self.model[lease.task_id]
            task.state, task.owner, task.expires = TaskState.RUNNING, worker, self.now + LEASE
            task.token += 1
            task.attempts += 1
            assert (lease.fencing_token, lease.attempt) == (task.token, task.attempts)
            self.held[worker][lease.task_id] = lease.fencing_token

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        held = dict(self.held[worker])
        answer = self.run(self.store.heartbeat(worker, held, self.now, LEASE)).leases
        expected = {}
        for task_id, token in held.items():
            task = self.model[task_id]
            if task.state is TaskState.RUNNING and task.token == token:
                task.expires = self.now + LEASE
                expected[task_id] = task.cancel_requested
        assert answer == expected

    @rule(
        worker=st.sampled_from(WORKERS),
        pick=st.integers(0, 10),
        result=st.sampled_from([TaskState.SUCCEEDED, TaskState.RETRYING, TaskState.DEAD]),
    )
    def complete(self, worker: str, pick: int, result: TaskState) -> None:
        held = sorted(self.held[worker].items())
        if not held:
            return
        task_id, token = held[pick % len(held)]
        del self.held[worker][task_id]
        task = self.model[task_id]
        current = task.state is TaskState.RUNNING and task.token == token
        outcome = Outcome(task_id, token, result, "done", run_at=self.now + 1.0)
        (accepted,) = self.run(self.store.complete([outcome], worker, self.now))
        assert accepted == current
        if accepted:
            task.state, task.owner = result, None
            if result is TaskState.RETRYING:
                task.run_at = self.now + 1.0
        else:
            self.stale_rejections += 1

    @rule(worker=st.sampled_from(WORKERS))
    def leases_expire_and_another_worker_claims(self, worker: str) -> None:
        # The partition scenario, made likely: every lease runs out, the reaper settles it,
        # and a worker claims again while the old holders still think they own their tasks.
        self.tick(LEASE + 1.0)
        self.reap()
        self.tick(1.0)
        self.claim(worker, 3)

    def _stale_holdings(self) -> list[tuple[str, int]]:
        return [
            (worker, task_id)
            for worker, held in sorted(self.held.items())
            for task_id, token in sorted(held.items())
            if self.model[task_id].state is TaskState.RUNNING and self.model[task_id].token != token
        ]

    @precondition(lambda self: bool(self._stale_holdings()))
    @rule(pick=st.integers(0, 10), result=st.sampled_from([TaskState.SUCCEEDED, TaskState.DEAD]))
    def complete_while_another_worker_holds_the_lease(self, pick: int, result: TaskState) -> None:
        stale = self._stale_holdings()
        worker, task_id = stale[pick % len(stale)]
        position = sorted(self.held[worker]).index(task_id)
        self.complete(worker, position, result)

    @rule()
    def reap(self) -> None:
        now = self.now
        applied = self.run(self.store.reap_expired(now, lambda e: decide(e, now)))
        expected = sorted(
            task_id
            for task_id, task in self.model.items()
            if task.state is TaskState.RUNNING and task.expires < now
        )
        assert sorted(o.task_id for o in applied) == expected
        for o in applied:
            task = self.model[o.task_id]
            task.state, task.owner = o.state, None
            if o.run_at is not None:
                task.run_at = o.run_at

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 50))
    def cancel(self, pick: int) -> None:
        task_id = sorted(self.model)[pick % len(self.model)]
        task = self.model[task_id]
        state = self.run(self.store.cancel(task_id, self.now))
        if task.state in (TaskState.PENDING, TaskState.RETRYING):
            task.state = TaskState.CANCELLED
        elif task.state is TaskState.RUNNING:
            task.cancel_requested = True
        assert state is task.state

    @rule()
    def replay(self) -> None:
        ended = [
            t for t, m in self.model.items() if m.state in (TaskState.DEAD, TaskState.CANCELLED)
        ]
        replayed = self.run(self.store.replay(ended, self.now))
        assert replayed == sorted(ended)
        for task_id in replayed:
            task = self.model[task_id]
            task.state, task.attempts, task.run_at = TaskState.PENDING, 0, self.now
            task.cancel_requested = False

    @invariant()
    def store_matches_model(self) -> None:
        records = self.run(self.store.list_tasks(limit=10_000))
        assert sorted(r.task_id for r in records) == sorted(self.model)  # none lost, none extra
        for record in records:
            task = self.model[record.task_id]
            assert record.state is task.state
            assert record.fencing_token == task.token
            assert record.attempts == task.attempts
            assert (record.lease_owner is not None) == (record.state is TaskState.RUNNING)
            if record.state is TaskState.RUNNING:
                assert record.lease_owner == task.owner


TestTaskStateMachine = TaskStateMachine.TestCase
TestTaskStateMachine.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
