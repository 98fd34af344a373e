"""Access rules: the bearer token guards every change, and everything off loopback."""

from __future__ import annotations

from typing import Any

import pytest

from legato.kernel.errors import ConfigError
from legato.service.security import is_loopback


async def test_mutating_requests_without_a_token_are_401_and_change_nothing(
    service_app: Any, serving: Any
) -> None:
    async with serving(service_app) as client:
        missing = await client.post("/tasks", json={"name": "echo"})
        wrong = await client.post(
            "/tasks", json={"name": "echo"}, headers={"Authorization": "Bearer nope"}
        )
        basic = await client.post(
            "/tasks", json={"name": "echo"}, headers={"Authorization": "Basic abc"}
        )
        listed = await client.get("/tasks")
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert listed.json()["items"] == []


async def test_reads_on_loopback_need_no_token(service_app: Any, serving: Any) -> None:
    async with serving(service_app) as client:
        assert (await client.get("/tasks")).status_code == 200
        assert (await client.get("/workers")).status_code == 200


async def test_every_request_needs_the_token_off_loopback(make_app: Any, serving: Any) -> None:
    app = make_app(host="0.0.0.0")
    async with serving(app) as client:
        anonymous = await client.get("/tasks")
        dashboard = await client.get("/")
        authorized = await client.get(
            "/tasks", headers={"Authorization": "Bearer s3cret-token-for-tests"}
        )
    assert anonymous.status_code == 401
    assert dashboard.status_code == 401
    assert authorized.status_code == 200


def test_binding_off_loopback_without_a_token_refuses_to_start(make_app: Any) -> None:
    with pytest.raises(ConfigError, match="api_token"):
        make_app(host="0.0.0.0", token=None)


async def test_without_a_configured_token_changes_are_refused_with_how_to_fix(
    make_app: Any, serving: Any
) -> None:
    app = make_app(token=None)
    async with serving(app) as client:
        response = await client.post(
            "/tasks", json={"name": "echo"}, headers={"Authorization": "Bearer anything"}
        )
    assert response.status_code == 401
    assert "LEGATO_API_TOKEN" in response.json()["error"]["message"]


async def test_the_token_can_come_from_the_environment(make_app: Any, serving: Any) -> None:
    app = make_app(token=None, environ={"LEGATO_API_TOKEN": "from-env"})
    async with serving(app) as client:
        response = await client.post(
            "/tasks", json={"name": "echo"}, headers={"Authorization": "Bearer from-env"}
        )
    assert response.status_code == 201


def test_loopback_addresses_are_recognized() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.1.2.3")
    assert not is_loopback("example.com")
