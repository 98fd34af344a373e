"""Dead-letter endpoints: a failed task shows up, is replayed, or is deleted for good."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI


async def _dead_task(client: Any, auth: dict[str, str], wait_for: Any) -> int:
    task_id: int = (await client.post("/tasks", json={"name": "boom"}, headers=auth)).json()["id"]

    async def dead() -> bool:
        return bool((await client.get(f"/tasks/{task_id}")).json()["state"] == "dead")

    await wait_for(dead)
    return task_id


async def test_a_task_out_of_attempts_is_listed_with_its_error(
    service_app: FastAPI, serving: Any, auth: dict[str, str], running_worker: Any, wait_for: Any
) -> None:
    async with serving(service_app) as client, running_worker():
        task_id = await _dead_task(client, auth, wait_for)
        listed = (await client.get("/dlq")).json()
    assert [item["id"] for item in listed] == [task_id]
    assert "boom on purpose" in listed[0]["error"]


async def test_replay_sends_dead_tasks_back_and_reports_the_rest_as_skipped(
    service_app: FastAPI, serving: Any, auth: dict[str, str], running_worker: Any, wait_for: Any
) -> None:
    async with serving(service_app) as client, running_worker():
        task_id = await _dead_task(client, auth, wait_for)
        alive = await client.post("/tasks", json={"name": "nap", "args": [60]}, headers=auth)
        alive_id = alive.json()["id"]
        result = await client.post(
            "/dlq/replay", json={"task_ids": [task_id, alive_id, 12345]}, headers=auth
        )
        assert result.status_code == 200
        assert result.json() == {"replayed": [task_id], "skipped": [alive_id, 12345]}
        history = (await client.get(f"/tasks/{task_id}")).json()["history"]
        assert any(event["reason"] == "replayed" for event in history)


async def test_replay_refuses_an_empty_list(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        response = await client.post("/dlq/replay", json={"task_ids": []}, headers=auth)
    assert response.status_code == 422
    assert response.json()["error"]["details"]["field"] == "task_ids"


async def test_delete_removes_a_dead_task_and_refuses_others(
    service_app: FastAPI, serving: Any, auth: dict[str, str], running_worker: Any, wait_for: Any
) -> None:
    async with serving(service_app) as client, running_worker():
        task_id = await _dead_task(client, auth, wait_for)
        pending = await client.post("/tasks", json={"name": "nap", "args": [60]}, headers=auth)
        not_dead = await client.delete(f"/dlq/{pending.json()['id']}", headers=auth)
        deleted = await client.delete(f"/dlq/{task_id}", headers=auth)
        gone = await client.get(f"/tasks/{task_id}")
        again = await client.delete(f"/dlq/{task_id}", headers=auth)
    assert not_dead.status_code == 409
    assert deleted.status_code == 204
    assert gone.status_code == 404
    assert again.status_code == 404
