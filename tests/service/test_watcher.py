"""The change watcher: task transitions, worker health changes and alerts become events."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from fastapi import FastAPI

from legato.kernel.simulation import SimulatedClock
from legato.orchestrator import Orchestrator
from legato.service.events import EventHub, ServiceEvent
from legato.service.registry import WorkerRegistry
from legato.service.watcher import ChangeWatcher
from legato.store import NewTask
from legato.store.records import Outcome, TaskState, WorkerRecord
from legato.store.task_store import TaskStore


async def _collect(subscription: Any, until: Any) -> list[ServiceEvent]:
    seen: list[ServiceEvent] = []
    while True:
        event = await subscription.next()
        assert event is not None
        seen.append(event)
        if until(event):
            return seen


async def test_a_task_run_by_a_worker_produces_its_observed_transitions_in_order(
    service_app: Any,
    serving: Any,
    auth: dict[str, str],
    running_worker: Any,
    clock: SimulatedClock,
) -> None:
    hub = service_app.state.runtime.hub
    async with (
        serving(service_app) as client,
        hub.subscribe() as subscription,
        running_worker(),
    ):
        await service_app.state.runtime.watcher.baseline_taken.wait()
        task_id = (
            await client.post("/tasks", json={"name": "nap", "args": [3]}, headers=auth)
        ).json()["id"]
        events = await _collect(
            subscription, lambda e: e.kind == "task" and e.data["state"] == "succeeded"
        )
    states = [e.data["state"] for e in events if e.kind == "task" and e.data["id"] == task_id]
    assert states == ["pending", "running", "succeeded"]


async def test_transitions_shorter_than_a_poll_are_all_published_in_order(
    service_app: FastAPI,
    serving: Any,
    auth: dict[str, str],
    orchestrator: Orchestrator,
) -> None:
    hub = service_app.state.runtime.hub
    async with serving(service_app) as client, hub.subscribe() as subscription:
        store = orchestrator.store
        await service_app.state.runtime.watcher.baseline_taken.wait()
        task_id = (await client.post("/tasks", json={"name": "echo"}, headers=auth)).json()["id"]
        # Claimed, failed, claimed again and finished, all between two polls of the watcher.
        now = orchestrator.clock.timestamp()
        (lease,) = await store.claim("w", ["default"], 1, now, 30.0)
        retry = Outcome(task_id, lease.fencing_token, TaskState.RETRYING, "error", run_at=now)
        await store.complete([retry], "w", now)
        (again,) = await store.claim("w", ["default"], 1, now, 30.0)
        done = Outcome(task_id, again.fencing_token, TaskState.SUCCEEDED, "succeeded")
        await store.complete([done], "w", now)
        events = await _collect(
            subscription, lambda e: e.kind == "task" and e.data["state"] == "succeeded"
        )
    assert [(e.data["from"], e.data["state"]) for e in events if e.kind == "task"] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "retrying"),
        ("retrying", "running"),
        ("running", "succeeded"),
    ]


async def test_an_evicted_workers_leases_are_released_to_the_reaper(
    service_app: FastAPI, serving: Any, orchestrator: Orchestrator, clock: SimulatedClock
) -> None:
    hub = service_app.state.runtime.hub
    async with serving(service_app), hub.subscribe() as subscription:
        store = orchestrator.store
        now = clock.timestamp()
        await store.register_worker(
            WorkerRecord("ghost", "host", 1, ("default",), "{}", 1, "0", "active", now, now)
        )
        task_id = await orchestrator.submit("echo")
        # A lease far longer than the eviction threshold: only eviction can free it.
        await store.claim("ghost", ["default"], 1, now, 3600.0)
        await _collect(subscription, lambda e: e.kind == "worker" and e.data["state"] == "evicted")
        events = await _collect(
            subscription,
            lambda e: e.kind == "task" and e.data["id"] == task_id and e.data["from"] == "running",
        )
        record = await store.get_task(task_id)
    assert events[-1].data["state"] == "retrying"
    assert record is not None
    assert "lease_released" in [e.reason for e in record.history]


async def test_a_silent_worker_raises_health_events_and_alerts(
    service_app: Any, serving: Any, orchestrator: Any, clock: SimulatedClock
) -> None:
    hub = service_app.state.runtime.hub
    async with serving(service_app), hub.subscribe() as subscription:
        now = clock.timestamp()
        await orchestrator.store.register_worker(
            WorkerRecord("ghost", "host", 1, ("default",), "{}", 1, "0", "active", now, now)
        )
        events = await _collect(
            subscription, lambda e: e.kind == "worker" and e.data["state"] == "evicted"
        )
        alert = await subscription.next()
    states = [e.data["state"] for e in events if e.kind == "worker"]
    assert states == ["healthy", "degraded", "unhealthy", "evicted"]
    alerts = [e for e in events if e.kind == "alert"]
    assert [a.data["severity"] for a in alerts] == ["warning"]
    assert alert is not None
    assert alert.kind == "alert"
    assert alert.data["severity"] == "high"


async def test_a_replayed_dead_task_is_announced_as_pending_again(
    service_app: Any,
    serving: Any,
    auth: dict[str, str],
    running_worker: Any,
    clock: SimulatedClock,
) -> None:
    hub = service_app.state.runtime.hub
    async with serving(service_app) as client, hub.subscribe() as subscription:
        async with running_worker():
            task_id = (await client.post("/tasks", json={"name": "boom"}, headers=auth)).json()[
                "id"
            ]
            await _collect(
                subscription,
                lambda e: (
                    e.kind == "task" and e.data["id"] == task_id and e.data["state"] == "dead"
                ),
            )
        # No worker now, so the replayed attempt stays pending until the watcher has seen it.
        replayed = await client.post("/dlq/replay", json={"task_ids": [task_id]}, headers=auth)
        assert replayed.json()["replayed"] == [task_id]
        async with asyncio.timeout(30):
            events = await _collect(
                subscription, lambda e: e.kind == "task" and e.data["id"] == task_id
            )
    assert events[-1].data["state"] == "pending"


async def test_an_event_committed_late_below_the_cursor_is_still_published(
    open_store: Any, clock: SimulatedClock
) -> None:
    hub = EventHub()
    async with open_store(clock) as store, hub.subscribe() as subscription:
        watcher = ChangeWatcher(lambda: store, clock, hub, WorkerRegistry(), dict, gap_timeout=5.0)
        await watcher.poll()  # baseline
        (submitted,) = await store.submit([_task()], clock.timestamp())
        task_id = submitted.task_id
        # Event ids 2 and 3 are visible while id 1 is still "committing" (written later).
        for event_id, to_state in ((2, "running"), (3, "succeeded")):
            await _insert_event(store, event_id, task_id, to_state)
        await watcher.poll()
        await _insert_event(store, 1, task_id, "cancelled")  # the late commit
        await watcher.poll()
        seen = []
        while len(seen) < 4:
            event = await subscription.next()
            assert event is not None
            seen.append(event.data["state"])
        # id 1 is published when it appears, though ids 2 and 3 went out before it.
        assert seen == ["pending", "running", "succeeded", "cancelled"]
        # A gap that never fills (a rolled-back id) is given up after gap_timeout.
        await _insert_event(store, 5, task_id, "dead")
        await watcher.poll()
        await clock.sleep(6.0)
        await watcher.poll()
        await _insert_event(store, 6, task_id, "pending")
        await watcher.poll()
        assert [(await subscription.next()).data["state"] for _ in range(2)] == [  # type: ignore[union-attr]
            "dead",
            "pending",
        ]
        assert watcher._event_cursor == 6


async def test_a_commit_held_open_past_the_gap_timeout_is_waited_for_on_postgresql(
    postgres_database: str, clock: SimulatedClock
) -> None:
    with psycopg.connect(postgres_database, autocommit=True) as admin:
        admin.execute("TRUNCATE legato_tasks, legato_task_events RESTART IDENTITY CASCADE")
    hub = EventHub()
    store = await TaskStore.open(postgres_database, upgrade=False, clock=clock)
    try:
        async with hub.subscribe() as subscription:
            watcher = ChangeWatcher(
                lambda: store, clock, hub, WorkerRegistry(), dict, gap_timeout=5.0
            )
            await watcher.poll()  # baseline
            (submitted,) = await store.submit([_task()], clock.timestamp())
            task_id = submitted.task_id
            # Another session inserts event 1 and keeps its transaction open.
            with psycopg.connect(postgres_database) as held:
                held.execute(
                    "INSERT INTO legato_task_events (id, task_id, at, from_state, to_state, "
                    "reason) VALUES (1, %s, 1.0, NULL, 'running', 'test')",
                    (task_id,),
                )
                await _insert_event(store, 2, task_id, "succeeded")
                await watcher.poll()  # 2 is published; 1 is a gap
                await clock.sleep(60.0)  # far beyond gap_timeout: the commit is still open
                await watcher.poll()
                assert watcher._event_cursor == 0  # the gap is still waited for
                held.commit()
            await watcher.poll()
            states = [(await subscription.next()).data["state"] for _ in range(3)]  # type: ignore[union-attr]
            assert states == ["pending", "succeeded", "running"]
            assert watcher._event_cursor == 2
    finally:
        await store.close()


def _task() -> NewTask:
    return NewTask("echo", "default", '{"args":[],"kwargs":{}}', 0, 0.0, "{}")


async def _insert_event(store: Any, event_id: int, task_id: int, to_state: str) -> None:
    async with store.database.transaction() as tx:
        await tx.execute(
            "INSERT INTO legato_task_events (id, task_id, at, from_state, to_state, reason) "
            "VALUES (?, ?, ?, NULL, ?, 'test')",
            (event_id, task_id, 1.0, to_state),
        )
