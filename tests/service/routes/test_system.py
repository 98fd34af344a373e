"""System endpoints: liveness, readiness, info, loops, bus, metrics and stats."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from legato.kernel.bus import MessageBus
from legato.kernel.message import Message
from legato.kernel.ratelimit import TokenBucketRateLimiter
from legato.kernel.simulation import SimulatedClock

from ..asyncness import threaded_callables


async def test_health_is_ok_while_the_loop_keeps_up(service_app: FastAPI, serving: Any) -> None:
    async with serving(service_app) as client:
        await service_app.state.runtime.clock.sleep(1.0)
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_health_is_503_after_the_event_loop_stalls(
    service_app: FastAPI, serving: Any, clock: SimulatedClock
) -> None:
    async with serving(service_app) as client:
        await clock.sleep(1.0)
        clock.advance(5.0)  # the process froze: no timer ran for five seconds
        response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "stalled"
    assert response.json()["loop_lag_seconds"] > response.json()["lag_threshold_seconds"]


async def test_ready_reports_each_dependency(service_app: FastAPI, serving: Any) -> None:
    async with serving(service_app) as client:
        response = await client.get("/ready")
    assert response.status_code == 200
    checks = {check["name"]: check["ok"] for check in response.json()["checks"]}
    assert checks == {"store": True, "migrations": True, "bus": True}


async def test_ready_is_503_naming_a_bus_that_is_not_running(make_app: Any, serving: Any) -> None:
    app = make_app(bus=MessageBus())
    async with serving(app) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    failing = [check["name"] for check in response.json()["checks"] if not check["ok"]]
    assert failing == ["bus"]


async def test_info_summarizes_the_config_without_the_token(
    service_app: FastAPI, serving: Any
) -> None:
    async with serving(service_app) as client:
        response = await client.get("/info")
    body = response.json()
    assert body["version"]
    assert body["backend"] in ("sqlite", "postgresql")
    assert body["config"]["service"]["api_token_configured"] is True
    assert "s3cret-token-for-tests" not in response.text


async def test_loops_lists_the_service_loops_with_their_health(
    service_app: FastAPI, serving: Any
) -> None:
    async with serving(service_app) as client:
        await service_app.state.runtime.clock.sleep(1.0)
        loops = (await client.get("/loops")).json()
    names = {loop["name"]: loop for loop in loops}
    assert set(names) >= {"service.lag", "service.watch", "service.reaper"}
    assert names["service.watch"]["iterations"] >= 1
    assert names["service.watch"]["state"] == "running"


async def test_bus_shows_subscribers_and_counters(make_app: Any, serving: Any) -> None:
    async with MessageBus() as bus:

        async def audit(message: Message) -> None:
            return None

        await bus.subscribe(subscriber_id="audit", topic="orders.*", handler=audit)
        app = make_app(bus=bus)
        async with serving(app) as client:
            body = (await client.get("/bus")).json()
    assert body["available"] is True
    assert body["topics"] == ["orders.*"]
    assert [s["id"] for s in body["subscribers"]] == ["audit"]


async def test_bus_without_a_bus_says_so(service_app: FastAPI, serving: Any) -> None:
    async with serving(service_app) as client:
        body = (await client.get("/bus")).json()
    assert body["available"] is False


async def test_metrics_and_stats_count_a_task_that_ran(
    service_app: FastAPI,
    serving: Any,
    auth: dict[str, str],
    running_worker: Any,
    wait_for: Any,
) -> None:
    async with serving(service_app) as client, running_worker():
        task_id = await client.post("/tasks", json={"name": "nap", "args": [2]}, headers=auth)
        task_id = task_id.json()["id"]

        async def counted() -> Any:
            stats = (await client.get("/stats")).json()
            return stats if stats["run_time"]["count"] >= 1 else None

        stats = await wait_for(counted)
        metrics = await client.get("/metrics")
    assert stats["tasks_by_state"]["succeeded"] == 1
    assert 2.0 <= stats["run_time"]["p50"] < 3.0
    assert stats["enqueue_to_start"]["count"] == 1
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'legato_tasks{queue="default",state="succeeded"} 1.0' in text
    assert "legato_task_run_seconds_count 1.0" in text
    assert 'legato_workers{state="healthy"} 1.0' in text
    assert 'legato_loop_up{loop="service.watch"} 1.0' in text


async def test_metrics_show_the_free_tokens_of_named_limiters(
    make_app: Any, serving: Any, clock: SimulatedClock
) -> None:
    # One token per hour: the few virtual seconds of the test refill next to nothing.
    orders = TokenBucketRateLimiter(rate=1 / 3600, capacity=5, clock=clock)
    assert orders.try_acquire(3)
    app = make_app(limiters={"venue.orders": orders})
    async with serving(app) as client:
        text = (await client.get("/metrics")).text
    line = next(x for x in text.splitlines() if x.startswith("legato_limiter_available_tokens{"))
    assert line.startswith('legato_limiter_available_tokens{limiter="venue.orders"} ')
    assert float(line.split()[-1]) == pytest.approx(2.0, abs=0.01)


def test_no_route_or_dependency_runs_in_a_worker_thread(service_app: FastAPI) -> None:
    assert threaded_callables(service_app) == []
