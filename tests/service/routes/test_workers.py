"""Worker endpoints: the registry with health states, one worker, drain."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from legato.kernel.simulation import SimulatedClock
from legato.store.records import WorkerRecord


async def test_a_running_worker_is_listed_healthy_with_its_queues(
    service_app: FastAPI, serving: Any, running_worker: Any
) -> None:
    async with serving(service_app) as client, running_worker(queues=("default", "gpu")) as w:
        listed = (await client.get("/workers")).json()
        one = await client.get(f"/workers/{w.worker_id}")
    assert [item["id"] for item in listed] == [w.worker_id]
    assert listed[0]["state"] == "healthy"
    assert listed[0]["queues"] == ["default", "gpu"]
    assert one.json()["id"] == w.worker_id


async def test_an_unknown_worker_is_a_404(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        missing = await client.get("/workers/nobody")
        drain = await client.post("/workers/nobody/drain", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["details"] == {"id": "nobody"}
    assert drain.status_code == 404


async def test_drain_marks_the_worker_draining_and_stops_a_local_one(
    service_app: FastAPI, serving: Any, auth: dict[str, str], running_worker: Any
) -> None:
    runtime = service_app.state.runtime
    async with serving(service_app) as client, running_worker() as worker:
        runtime.attach_worker(worker)
        drained = await client.post(f"/workers/{worker.worker_id}/drain", headers=auth)
        assert drained.status_code == 200
        assert drained.json()["state"] == "draining"
        assert drained.json()["draining"] is True
        submitted = await client.post("/tasks", json={"name": "echo"}, headers=auth)
        assert submitted.json()["placement"]["schedulable"] is False


async def test_a_worker_that_stops_heartbeating_turns_unhealthy_then_evicted(
    service_app: FastAPI, serving: Any, orchestrator: Any, clock: SimulatedClock
) -> None:
    async with serving(service_app) as client:
        now = clock.timestamp()
        await orchestrator.store.register_worker(
            WorkerRecord("ghost", "host", 1, ("default",), "{}", 1, "0", "active", now, now)
        )
        assert (await client.get("/workers/ghost")).json()["state"] == "healthy"
        await clock.sleep(35)
        assert (await client.get("/workers/ghost")).json()["state"] == "unhealthy"
        await clock.sleep(60)
        evicted = (await client.get("/workers/ghost")).json()
    assert evicted["state"] == "evicted"
    assert "no heartbeat" in evicted["reason"]


async def test_drain_of_a_worker_in_another_process_is_written_to_the_store(
    service_app: FastAPI,
    serving: Any,
    auth: dict[str, str],
    orchestrator: Any,
    clock: SimulatedClock,
) -> None:
    async with serving(service_app) as client:
        now = clock.timestamp()
        await orchestrator.store.register_worker(
            WorkerRecord("elsewhere", "host", 1, ("default",), "{}", 1, "0", "active", now, now)
        )
        drained = await client.post("/workers/elsewhere/drain", headers=auth)
        assert drained.status_code == 200
        assert drained.json()["registered_state"] == "draining"
        # The worker process learns it from the store at its next heartbeat.
        reply = await orchestrator.store.heartbeat("elsewhere", {}, clock.timestamp(), 30.0)
        assert reply.draining is True
        listed = (await client.get("/workers/elsewhere")).json()
    assert (listed["state"], listed["draining"]) == ("draining", True)
