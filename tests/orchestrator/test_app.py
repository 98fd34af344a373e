"""Registering and submitting tasks: validation that names what is wrong and writes nothing."""

from __future__ import annotations

import math
from datetime import datetime

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.orchestrator import Orchestrator, Resources, TaskState


def register(app: Orchestrator) -> None:
    @app.task(name="add", queue="math", priority=3, timeout=5.0)
    async def add(a: int, b: int) -> int:
        return a + b


async def test_submit_applies_the_task_defaults_and_returns_the_new_id(
    app: Orchestrator, clock: Clock
) -> None:
    register(app)
    async with app:
        task_id = await app.submit("add", 1, b=2)
        record = await app.get_task(task_id)
        assert record is not None
        assert (record.name, record.queue, record.priority, record.timeout) == (
            "add",
            "math",
            3,
            5.0,
        )
        assert record.payload == '{"args":[1],"kwargs":{"b":2}}'
        assert record.run_at == clock.timestamp()
        assert record.state is TaskState.PENDING


async def test_submit_options_override_the_defaults(app: Orchestrator, clock: Clock) -> None:
    register(app)
    async with app:
        task_id = await app.submit(
            "add",
            1,
            2,
            queue="urgent",
            priority=9,
            delay=30.0,
            timeout=1.0,
            protected=True,
            resources=Resources(gpus=1),
        )
        record = await app.get_task(task_id)
        assert record is not None
        assert (record.queue, record.priority, record.timeout, record.protected) == (
            "urgent",
            9,
            1.0,
            True,
        )
        assert record.run_at == clock.timestamp() + 30.0
        assert Resources.from_json(record.resources) == Resources(gpus=1)


async def test_resubmitting_an_idempotency_key_returns_the_existing_task(
    app: Orchestrator,
) -> None:
    register(app)
    async with app:
        first = await app.submit("add", 1, 2, idempotency_key="sum-1")
        second = await app.submit("add", 5, 5, idempotency_key="sum-1")
        assert first == second
        assert len(await app.list_tasks()) == 1


async def test_submit_many_writes_every_call_in_one_batch(app: Orchestrator) -> None:
    register(app)
    async with app:
        ids = await app.submit_many([app.call("add", i, i) for i in range(50)])
        assert len(set(ids)) == 50
        assert (await app.store.count_by_state()) == {TaskState.PENDING: 50}


@pytest.mark.parametrize(
    ("args", "options", "field"),
    [
        (("nope", 1, 2), {}, "task"),
        (("add", 1, object()), {}, "args"),
        (("add", 1, math.nan), {}, "args"),
        (("add", 1), {}, "args"),
        (("add", 1, 2, 3), {}, "args"),
        (("add", 1, 2), {"delay": -1.0}, "delay"),
        (("add", 1, 2), {"delay": 1.0, "run_at": 5.0}, "delay"),
        (("add", 1, 2), {"run_at": datetime(2030, 1, 1)}, "run_at"),  # noqa: DTZ001 (the bad input)
        (("add", 1, 2), {"priority": "high"}, "priority"),
        (("add", 1, 2), {"queue": ""}, "queue"),
        (("add", 1, 2), {"timeout": 0}, "timeout"),
        (("add", 1, 2), {"idempotency_key": ""}, "idempotency_key"),
        (("add", 1, 2), {"resources": {"gpus": 1}}, "resources"),
    ],
)
async def test_bad_submit_input_raises_a_validation_error_and_writes_nothing(
    app: Orchestrator, args: tuple[object, ...], options: dict[str, object], field: str
) -> None:
    register(app)
    async with app:
        with pytest.raises(ValidationError) as raised:
            await app.submit(*args, **options)  # type: ignore[arg-type]
        assert raised.value.field == field
        assert raised.value.expected
        assert await app.list_tasks() == []


def test_registering_a_second_function_under_a_taken_name_is_refused(app: Orchestrator) -> None:
    register(app)
    with pytest.raises(ValidationError) as raised:

        @app.task(name="add")
        def other() -> None: ...

    assert raised.value.field == "name"


def test_a_task_name_defaults_to_module_and_qualified_name(app: Orchestrator) -> None:
    @app.task()
    def report() -> None: ...

    assert app.definition(report).name == f"{__name__}.{report.__qualname__}"


async def test_queue_limits_are_validated(app: Orchestrator) -> None:
    async with app:
        with pytest.raises(ValidationError) as raised:
            await app.configure_queue("q", concurrency_limit=0)
        assert raised.value.field == "concurrency_limit"
