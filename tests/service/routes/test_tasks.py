"""Task endpoints: submit, idempotency, list filters and cursors, detail, cancel, retry."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from legato.orchestrator import Orchestrator, Resources


async def test_submit_answers_201_with_the_stored_task(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        response = await client.post(
            "/tasks", json={"name": "echo", "args": [42], "priority": 5}, headers=auth
        )
        assert response.status_code == 201
        body = response.json()
        assert body["name"] == "echo"
        assert body["args"] == [42]
        assert body["priority"] == 5
        assert body["state"] == "pending"
        fetched = await client.get(f"/tasks/{body['id']}")
        assert fetched.json()["id"] == body["id"]


async def test_resubmitting_an_idempotency_key_answers_200_with_the_existing_task(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        task = {"name": "echo", "args": [1], "idempotency_key": "order-7"}
        first = await client.post("/tasks", json=task, headers=auth)
        again = await client.post("/tasks", json={**task, "args": [2]}, headers=auth)
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["args"] == [1]
        listed = await client.get("/tasks")
        assert len(listed.json()["items"]) == 1


async def test_submitting_an_unregistered_task_is_a_422_naming_it(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        response = await client.post("/tasks", json={"name": "nope"}, headers=auth)
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"]["field"] == "task"
        assert error["details"]["value"] == "nope"
        assert "echo" in error["details"]["expected"]
        assert (await client.get("/tasks")).json()["items"] == []


async def test_submit_body_errors_name_the_field_and_value(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        bad_priority = await client.post(
            "/tasks", json={"name": "echo", "priority": "high"}, headers=auth
        )
        unknown_field = await client.post(
            "/tasks", json={"name": "echo", "colour": "red"}, headers=auth
        )
        wrong_arguments = await client.post(
            "/tasks", json={"name": "nap", "args": [1, 2, 3]}, headers=auth
        )
        not_json = await client.post(
            "/tasks", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
        )
    assert bad_priority.status_code == 422
    assert bad_priority.json()["error"]["details"]["field"] == "priority"
    assert bad_priority.json()["error"]["details"]["value"] == "high"
    assert unknown_field.status_code == 422
    assert unknown_field.json()["error"]["details"]["field"] == "colour"
    assert wrong_arguments.status_code == 422
    assert not_json.status_code == 422


async def test_an_unknown_task_id_is_a_404_in_the_envelope(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        for response in (
            await client.get("/tasks/999"),
            await client.post("/tasks/999/cancel", headers=auth),
            await client.post("/tasks/999/retry", headers=auth),
        ):
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
            assert response.json()["error"]["details"] == {"id": 999}
        not_an_id = await client.get("/tasks/abc")
        assert not_an_id.status_code == 422
        assert not_an_id.json()["error"]["details"]["field"] == "task_id"


async def test_listing_filters_by_state_queue_name_and_creation_time(
    service_app: FastAPI, serving: Any, auth: dict[str, str], orchestrator: Orchestrator
) -> None:
    async with serving(service_app) as client:
        ids = []
        for body in (
            {"name": "echo"},
            {"name": "echo", "queue": "other"},
            {"name": "nap", "args": [1]},
        ):
            ids.append((await client.post("/tasks", json=body, headers=auth)).json()["id"])
        await client.post(f"/tasks/{ids[0]}/cancel", headers=auth)

        def listed(response: Any) -> list[int]:
            return [item["id"] for item in response.json()["items"]]

        assert listed(await client.get("/tasks", params={"state": "cancelled"})) == [ids[0]]
        assert listed(await client.get("/tasks", params={"state": ["pending", "cancelled"]})) == ids
        assert listed(await client.get("/tasks", params={"queue": "other"})) == [ids[1]]
        assert listed(await client.get("/tasks", params={"name": "nap"})) == [ids[2]]
        created = (await client.get(f"/tasks/{ids[0]}")).json()["created_at"]
        assert listed(await client.get("/tasks", params={"created_before": created})) == []
        assert listed(await client.get("/tasks", params={"created_after": created})) == ids
        bad_state = await client.get("/tasks", params={"state": "sleeping"})
        assert bad_state.status_code == 422
        assert bad_state.json()["error"]["details"]["value"] == "sleeping"


async def test_cursor_pagination_visits_every_task_once_in_order(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        ids = [
            (await client.post("/tasks", json={"name": "echo", "args": [n]}, headers=auth)).json()[
                "id"
            ]
            for n in range(7)
        ]
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/tasks", params=params)).json()
            seen += [item["id"] for item in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids
        assert pages == 3


async def test_a_cursor_not_issued_by_the_service_is_a_422_naming_cursor(
    service_app: FastAPI, serving: Any
) -> None:
    async with serving(service_app) as client:
        response = await client.get("/tasks", params={"cursor": "garbage!"})
    assert response.status_code == 422
    assert response.json()["error"]["details"]["field"] == "cursor"
    assert response.json()["error"]["details"]["value"] == "garbage!"


async def test_detail_carries_the_state_history(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        task = (await client.post("/tasks", json={"name": "echo"}, headers=auth)).json()
        await client.post(f"/tasks/{task['id']}/cancel", headers=auth)
        detail = (await client.get(f"/tasks/{task['id']}")).json()
    assert [(e["from_state"], e["to_state"]) for e in detail["history"]] == [
        (None, "pending"),
        ("pending", "cancelled"),
    ]


async def test_cancel_then_retry_and_the_conflicts_in_between(
    service_app: FastAPI, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        task_id = (await client.post("/tasks", json={"name": "echo"}, headers=auth)).json()["id"]
        premature = await client.post(f"/tasks/{task_id}/retry", headers=auth)
        assert premature.status_code == 409
        assert premature.json()["error"]["details"]["state"] == "pending"
        cancelled = await client.post(f"/tasks/{task_id}/cancel", headers=auth)
        assert cancelled.json()["state"] == "cancelled"
        twice = await client.post(f"/tasks/{task_id}/cancel", headers=auth)
        assert twice.status_code == 409
        retried = await client.post(f"/tasks/{task_id}/retry", headers=auth)
        assert retried.status_code == 200
        assert retried.json()["state"] == "pending"
        assert retried.json()["history"][-1]["reason"] == "replayed"


async def test_a_task_no_live_worker_can_fit_is_reported_unschedulable(
    service_app: FastAPI,
    serving: Any,
    auth: dict[str, str],
    running_worker: Any,
    wait_for: Any,
) -> None:
    async with (
        serving(service_app) as client,
        running_worker(queues=("gpu", "default"), resources=Resources(cpu=2, memory_mb=1024)),
    ):

        async def worker_seen() -> bool:
            return bool((await client.get("/workers")).json())

        await wait_for(worker_seen)
        gpu = (await client.post("/tasks", json={"name": "gpu"}, headers=auth)).json()
        assert gpu["placement"]["schedulable"] is False
        assert "gpus=4" in gpu["placement"]["reason"]
        metrics = (await client.get("/metrics")).text
        assert "legato_tasks_unschedulable 1.0" in metrics
