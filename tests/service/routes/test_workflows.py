"""Workflow endpoints: the list with filters and cursors, and one workflow's journal."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from legato.orchestrator import Orchestrator
from legato.orchestrator.workflow import WorkflowEngine
from legato.orchestrator.workflow_context import WorkflowContext


def _engine(orchestrator: Orchestrator) -> WorkflowEngine:
    engine = WorkflowEngine(orchestrator)

    async def double(value: int) -> int:
        return value * 2

    async def undo(value: int) -> None:
        return None

    @engine.workflow(name="doubler")
    async def doubler(ctx: WorkflowContext, value: int) -> int:
        first: int = await ctx.step(double, value, compensate=undo)
        second: int = await ctx.step(double, first)
        return second

    return engine


async def test_an_empty_store_lists_no_workflows_and_an_unknown_id_is_404(
    service_app: FastAPI, serving: Any
) -> None:
    async with serving(service_app) as client:
        listed = await client.get("/workflows")
        one = await client.get("/workflows/77")
        not_an_id = await client.get("/workflows/w-1")
    assert listed.json() == {"items": [], "next_cursor": None}
    assert one.status_code == 404
    assert one.json()["error"]["details"] == {"id": 77}
    assert not_an_id.status_code == 422


async def test_a_finished_workflow_shows_its_steps_compensations_and_history(
    service_app: FastAPI,
    serving: Any,
    orchestrator: Orchestrator,
    running_worker: Any,
    wait_for: Any,
) -> None:
    engine = _engine(orchestrator)
    async with serving(service_app) as client, running_worker():
        workflow_id = await engine.start("doubler", 3)

        async def finished() -> Any:
            body = (await client.get(f"/workflows/{workflow_id}")).json()
            return body if body["state"] == "succeeded" else None

        detail = await wait_for(finished)
        listed = (await client.get("/workflows", params={"state": "succeeded"})).json()
        page = (await client.get(f"/ui/workflows/{workflow_id}")).text
    assert detail["input"] == 3
    assert detail["result"] == 12
    steps = [s for s in detail["steps"] if s["kind"] == "step"]
    assert [s["result"] for s in steps] == [6, 12]
    assert len(detail["compensations"]) == 1
    assert detail["history"][-1]["to_state"] == "succeeded"
    assert [item["id"] for item in listed["items"]] == [workflow_id]
    assert "doubler" in page


async def test_workflow_pages_follow_the_cursor(
    service_app: FastAPI, serving: Any, orchestrator: Orchestrator
) -> None:
    engine = _engine(orchestrator)
    async with serving(service_app) as client:
        ids = [await engine.start("doubler", n) for n in range(3)]
        first = (await client.get("/workflows", params={"limit": 2})).json()
        second = (
            await client.get("/workflows", params={"limit": 2, "cursor": first["next_cursor"]})
        ).json()
    assert [w["id"] for w in first["items"] + second["items"]] == ids
    assert second["next_cursor"] is None
