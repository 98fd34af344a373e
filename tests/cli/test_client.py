"""The service client: retries and backoff, error mapping, registry cache, disk fallback."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from legato.cli.client import (
    CLIENT_RETRY,
    ConflictError,
    NotFoundError,
    ServiceClient,
    ServiceUnreachableError,
    SnapshotSource,
    UnauthorizedError,
)
from legato.kernel.clock import Clock
from legato.kernel.errors import UnknownOutcomeError, ValidationError
from legato.kernel.retry import RetryPolicy
from legato.kernel.settings import LegatoSettings, ServiceSettings, StoreSettings
from legato.service import Service

URL = "http://legato.test"
WORKERS = [{"id": "host:1:abc", "state": "healthy"}]


def envelope(status: int, code: str, message: str, **details: Any) -> httpx.Response:
    """An error answer shaped like the service's envelope."""
    body = {"error": {"code": code, "message": message, "details": details, "request_id": "r1"}}
    return httpx.Response(status, json=body)


class Recorder:
    """A fake service: answers from a script and notes the clock time of each request."""

    def __init__(self, clock: Clock, answers: list[Callable[[httpx.Request], httpx.Response]]):
        self.clock = clock
        self.answers = answers
        self.times: list[float] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(self.clock.monotonic())
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return answer(request)


def status(code: int) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, json={"detail": "x"})


def ok(body: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=body)


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def client_for(recorder: Recorder, clock: Clock, **options: Any) -> ServiceClient:
    return ServiceClient(
        URL,
        clock=clock,
        rng=random.Random(11),
        transport=httpx.MockTransport(recorder),
        **options,
    )


async def test_unavailable_answers_are_retried_after_1_2_4_seconds_with_jitter(
    clock: Clock,
) -> None:
    recorder = Recorder(clock, [status(503), status(502), status(504), ok(WORKERS)])
    async with client_for(recorder, clock) as client:
        snapshot = await client.workers()
    assert snapshot.value == WORKERS
    assert snapshot.source is SnapshotSource.LIVE
    gaps = [
        later - earlier for earlier, later in zip(recorder.times, recorder.times[1:], strict=False)
    ]
    # Equal jitter: each wait lies between half and all of 1 s, 2 s, 4 s ...
    for gap, base in zip(gaps, (1.0, 2.0, 4.0), strict=True):
        assert base / 2 <= gap <= base
    # ... and is exactly what the seeded generator draws, so a run replays identically.
    expected_rng = random.Random(11)
    expected = [CLIENT_RETRY.delay(attempt, expected_rng) for attempt in (1, 2, 3)]
    assert gaps == pytest.approx(expected)


async def test_connection_refused_is_retried_then_reported_unreachable(clock: Clock) -> None:
    recorder = Recorder(clock, [refused])
    async with client_for(recorder, clock) as client:
        with pytest.raises(ServiceUnreachableError) as raised:
            await client.task(1)
    assert len(recorder.requests) == CLIENT_RETRY.max_attempts
    assert raised.value.attempts == CLIENT_RETRY.max_attempts


@pytest.mark.parametrize(
    ("answer", "error_type"),
    [
        (envelope(404, "not_found", "no task with id 7", id=7), NotFoundError),
        (envelope(409, "conflict", "task 7 is already succeeded"), ConflictError),
        (envelope(401, "unauthorized", "missing bearer token"), UnauthorizedError),
    ],
)
async def test_client_errors_are_mapped_and_never_retried(
    clock: Clock, answer: httpx.Response, error_type: type[Exception]
) -> None:
    recorder = Recorder(clock, [lambda request: answer])
    async with client_for(recorder, clock) as client:
        with pytest.raises(error_type) as raised:
            await client.cancel(7)
    assert len(recorder.requests) == 1
    assert getattr(raised.value, "request_id", None) == "r1"


async def test_a_validation_answer_becomes_a_validation_error_naming_the_field(
    clock: Clock,
) -> None:
    answer = envelope(
        422,
        "validation_error",
        "task: got 'nope', expected a registered task",
        field="task",
        value="nope",
        expected="a registered task (echo)",
    )
    recorder = Recorder(clock, [lambda request: answer])
    async with client_for(recorder, clock) as client:
        with pytest.raises(ValidationError) as raised:
            await client.submit("nope")
    assert (raised.value.field, raised.value.value) == ("task", "nope")
    assert raised.value.expected == "a registered task (echo)"
    assert len(recorder.requests) == 1


async def test_a_lost_submit_without_key_is_an_unknown_outcome_not_a_retry(clock: Clock) -> None:
    recorder = Recorder(clock, [status(504), ok({"id": 1})])
    async with client_for(recorder, clock) as client:
        with pytest.raises(UnknownOutcomeError):
            await client.submit("echo", [1])
    assert len(recorder.requests) == 1


async def test_a_lost_submit_with_an_idempotency_key_is_retried(clock: Clock) -> None:
    recorder = Recorder(clock, [status(504), ok({"id": 1, "state": "pending"})])
    async with client_for(recorder, clock) as client:
        task = await client.submit("echo", [1], idempotency_key="k-1")
    assert task["id"] == 1
    assert len(recorder.requests) == 2
    assert json.loads(recorder.requests[1].content)["idempotency_key"] == "k-1"


async def test_the_registry_is_cached_for_its_ttl_on_the_clock(clock: Clock) -> None:
    recorder = Recorder(clock, [ok(WORKERS)])
    async with client_for(recorder, clock, cache_ttl=10.0) as client:
        first = await client.workers()
        await clock.sleep(9.0)
        second = await client.workers()
        await clock.sleep(2.0)
        third = await client.workers()
    assert [first.source, second.source, third.source] == [
        SnapshotSource.LIVE,
        SnapshotSource.CACHE,
        SnapshotSource.LIVE,
    ]
    assert len(recorder.requests) == 2


async def test_the_token_is_sent_as_a_bearer_header(clock: Clock) -> None:
    recorder = Recorder(clock, [ok({"id": 3, "state": "cancelled"})])
    async with client_for(recorder, clock, token="s3cret") as client:
        await client.cancel(3)
    assert recorder.requests[0].headers["authorization"] == "Bearer s3cret"


def free_port() -> int:
    """A port nothing listens on right now (the service binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.realtime
async def test_a_stopped_service_is_served_from_the_disk_snapshot(
    tmp_path: Path, clock: Clock
) -> None:
    port = free_port()
    settings = LegatoSettings(
        data_dir=tmp_path,
        store=StoreSettings(url=f"sqlite:///{tmp_path / 'legato.db'}"),
        service=ServiceSettings(host="127.0.0.1", port=port, api_token="t"),
    )
    service = Service(settings, clock=clock, rng=random.Random(3))
    quick = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02)
    client = ServiceClient(
        f"http://127.0.0.1:{port}",
        token="t",
        clock=clock,
        rng=random.Random(1),
        retry=quick,
        cache_ttl=0.0,
        snapshot_dir=tmp_path / "cache",
    )
    async with client, asyncio.timeout(30), asyncio.TaskGroup() as group:
        serving = group.create_task(service.run(), name="test-legato-service")
        await service.listening.wait()
        live = await client.workers()
        info = await client.info()
        service.stop()
        await serving
        stale = await client.workers()
        stale_info = await client.info()
    assert live.source is SnapshotSource.LIVE
    assert info.value["backend"] == "sqlite"
    assert stale.stale
    assert stale.source is SnapshotSource.DISK
    assert stale.value == live.value
    assert stale.fetched_at == pytest.approx(live.fetched_at)
    assert "unreachable" in (stale.unreachable_reason or "")
    assert stale_info.stale
    assert stale_info.value == info.value


async def test_without_a_snapshot_an_unreachable_service_is_an_error(
    tmp_path: Path, clock: Clock
) -> None:
    recorder = Recorder(clock, [refused])
    async with client_for(recorder, clock, snapshot_dir=tmp_path) as client:
        with pytest.raises(ServiceUnreachableError):
            await client.workers()
