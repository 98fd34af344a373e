"""The one error envelope: unknown routes, wrong methods, and what it always contains."""

from __future__ import annotations

from typing import Any


async def test_an_unknown_path_is_a_404_envelope(service_app: Any, serving: Any) -> None:
    async with serving(service_app) as client:
        response = await client.get("/no/such/thing")
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["code"] == "not_found"
    assert "/no/such/thing" in error["message"]


async def test_a_wrong_method_is_a_405_envelope(
    service_app: Any, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        response = await client.put("/tasks", headers=auth)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_validation_errors_list_every_problem(
    service_app: Any, serving: Any, auth: dict[str, str]
) -> None:
    async with serving(service_app) as client:
        response = await client.post(
            "/tasks", json={"name": "", "priority": "x", "timeout": -1}, headers=auth
        )
    error = response.json()["error"]
    assert response.status_code == 422
    fields = {problem["field"] for problem in error["details"]["problems"]}
    assert fields == {"name", "priority", "timeout"}
    assert "more problem" in error["message"]
