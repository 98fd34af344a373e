"""The service process: uvicorn in-process with its loops and an embedded worker, live events."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest

from legato.kernel.clock import Clock
from legato.kernel.settings import LegatoSettings, ServiceSettings, StoreSettings
from legato.orchestrator import WorkerConfig
from legato.service import Service, ServiceOptions

from .sample_app import build_orchestrator

TOKEN = "server-test-token"


def _service(store_url: str, clock: Clock) -> Service:
    settings = LegatoSettings(
        store=StoreSettings(url=store_url),
        service=ServiceSettings(host="127.0.0.1", api_token=TOKEN),
    )
    return Service(
        settings,
        build_orchestrator(store_url, clock),
        embedded_worker=True,
        worker_config=WorkerConfig(lease_seconds=6.0, poll_interval=0.1, grace=1.0),
        options=ServiceOptions(watch_interval=0.1, lag_interval=0.1),
        port=0,
        rng=random.Random(5),
        environ={},
    )


async def _read_events(response: httpx.Response, wanted: Any) -> dict[str, Any]:
    kind = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            if wanted(kind, data):
                return dict(data)
    pytest.fail("the event stream ended before the expected event")


@pytest.mark.realtime
async def test_events_stream_a_submitted_task_until_it_succeeds(
    store_url: str, clock: Clock
) -> None:
    service = _service(store_url, clock)
    async with asyncio.TaskGroup() as group:
        group.create_task(service.run(), name="service-under-test")
        try:
            async with asyncio.timeout(30):
                await service.listening.wait()
                base = f"http://127.0.0.1:{service.port}"
                async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                    async with client.stream("GET", "/events") as events:
                        assert events.headers["content-type"].startswith("text/event-stream")
                        submitted = await client.post(
                            "/tasks",
                            json={"name": "echo", "args": ["hi"]},
                            headers={"Authorization": f"Bearer {TOKEN}"},
                        )
                        task_id = submitted.json()["id"]
                        done = await _read_events(
                            events,
                            lambda kind, data: (
                                kind == "task"
                                and data["id"] == task_id
                                and data["state"] == "succeeded"
                            ),
                        )
                    assert done["name"] == "echo"
                    task = (await client.get(f"/tasks/{task_id}")).json()
                    assert task["result"] == "hi"
                    loops = {loop["name"] for loop in (await client.get("/loops")).json()}
                    assert {"service.watch", "heartbeat"} <= loops
        finally:
            service.stop()
    assert service.worker is not None
    assert service.worker.running_tasks == ()


@pytest.mark.realtime
async def test_stop_shuts_the_service_down_cleanly(store_url: str, clock: Clock) -> None:
    service = _service(store_url, clock)
    async with asyncio.timeout(30), asyncio.TaskGroup() as group:
        running = group.create_task(service.run(), name="service-under-test")
        await service.listening.wait()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
            assert (await client.get("/health")).status_code == 200
        service.stop()
    assert running.done()
    assert running.exception() is None
    assert not service.supervisor.running
