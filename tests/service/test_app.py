"""The whole API against its own OpenAPI schema: schemathesis finds no 5xx on any input."""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from legato.kernel.clock import RealClock
from legato.kernel.settings import LegatoSettings, ServiceSettings, StoreSettings
from legato.service import Service, ServiceOptions

from .sample_app import build_orchestrator

TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def running_service(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[str]:
    """A real service (uvicorn, SQLite, embedded worker) in a thread; yields its base URL."""
    path = tmp_path_factory.mktemp("fuzz") / "legato.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    settings = LegatoSettings(
        store=StoreSettings(url=url), service=ServiceSettings(api_token=TOKEN)
    )
    service = Service(
        settings,
        build_orchestrator(url, RealClock()),
        embedded_worker=True,
        options=ServiceOptions(watch_interval=0.2),
        port=0,
        rng=random.Random(11),
        environ={},
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(service.run(),), daemon=True)
    thread.start()
    ready = asyncio.run_coroutine_threadsafe(service.listening.wait(), loop)
    ready.result(timeout=30)
    try:
        yield f"http://127.0.0.1:{service.port}"
    finally:
        loop.call_soon_threadsafe(service.stop)
        thread.join(timeout=30)
        loop.close()


@pytest.fixture(scope="module")
def api_schema(running_service: str) -> schemathesis.BaseSchema:
    """The service's own OpenAPI schema, without the endless event stream."""
    schema = schemathesis.openapi.from_url(f"{running_service}/openapi.json")
    return schema.exclude(path="/events")


def test_no_input_makes_the_api_fail_or_break_its_schema(
    api_schema: schemathesis.BaseSchema,
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    for operation, mode in itertools.product(operations, GenerationMode):
        raw = operation.definition.raw
        if mode is GenerationMode.NEGATIVE and not (
            raw.get("parameters") or raw.get("requestBody")
        ):
            continue  # nothing to get wrong in a request without inputs

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=20,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN}"},
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
            )

        call()
