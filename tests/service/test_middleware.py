"""Request ids on every response, and the request size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


async def test_a_request_id_is_generated_and_an_acceptable_one_is_echoed(
    service_app: Any, serving: Any
) -> None:
    async with serving(service_app) as client:
        generated = await client.get("/health")
        echoed = await client.get("/health", headers={"X-Request-ID": "abc-123"})
        refused = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(generated.headers["X-Request-ID"]) == 16
    assert echoed.headers["X-Request-ID"] == "abc-123"
    assert refused.headers["X-Request-ID"] != "bad id\twith spaces"


async def test_error_bodies_carry_the_request_id(service_app: Any, serving: Any) -> None:
    async with serving(service_app) as client:
        response = await client.get("/tasks/424242", headers={"X-Request-ID": "trace-9"})
    assert response.headers["X-Request-ID"] == "trace-9"
    assert response.json()["error"]["request_id"] == "trace-9"


async def test_a_body_over_one_mib_is_413_by_its_declared_length(
    service_app: Any, serving: Any, auth: dict[str, str]
) -> None:
    big = b'{"name": "echo", "args": ["' + b"x" * (1024 * 1024) + b'"]}'
    async with serving(service_app) as client:
        response = await client.post(
            "/tasks", content=big, headers={**auth, "Content-Type": "application/json"}
        )
        listed = await client.get("/tasks")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert response.headers["X-Request-ID"]
    assert listed.json()["items"] == []


async def test_a_streamed_body_over_the_limit_is_413_too(
    service_app: Any, serving: Any, auth: dict[str, str]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "echo", "args": ["'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"]}'

    async with serving(service_app) as client:
        response = await client.post(
            "/tasks", content=chunks(), headers={**auth, "Content-Type": "application/json"}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
