"""Logging: JSON or console lines, stamped by the Clock, carrying the bound correlation id."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.kernel.logs import (
    ClockTimeStamper,
    bind_correlation,
    configure_logging,
    current_correlation,
    get_logger,
    logs_at,
    redact_secrets,
)
from legato.kernel.settings import LegatoSettings, ServiceSettings
from legato.kernel.simulation import SimulatedClock

START = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


class Terminal(io.StringIO):
    """An in-memory stream that says it is a terminal, as an interactive stderr would."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave structlog's configuration, bound context and the root logger as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def output() -> io.StringIO:
    return io.StringIO()


def json_lines(output: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.getvalue().splitlines()]


def test_json_format_writes_one_object_per_line_with_event_level_and_fields(
    output: io.StringIO,
) -> None:
    configure_logging("info", "json", output, clock=SimulatedClock(START))

    get_logger("legato.bus").info("published", topic="orders", count=2)
    get_logger("legato.bus").warning("slow subscriber")

    first, second = json_lines(output)
    assert first == {
        "event": "published",
        "level": "info",
        "logger_name": "legato.bus",
        "timestamp": "2030-01-02T03:04:05.000000Z",
        "topic": "orders",
        "count": 2,
    }
    assert (second["event"], second["level"]) == ("slow subscriber", "warning")


def test_timestamps_come_from_the_clock_not_the_wall(output: io.StringIO) -> None:
    clock = SimulatedClock(START)
    configure_logging("info", "json", output, clock=clock)
    logger = get_logger("test")

    logger.info("before")
    clock.advance(90.25)
    logger.info("after")

    stamps = [line["timestamp"] for line in json_lines(output)]
    assert stamps == ["2030-01-02T03:04:05.000000Z", "2030-01-02T03:05:35.250000Z"]


async def test_simulated_runs_log_virtual_time(clock: Clock, output: io.StringIO) -> None:
    configure_logging("info", "json", output, clock=clock)
    start = clock.now()

    await asyncio.sleep(3600)
    get_logger("test").info("an hour later")

    (line,) = json_lines(output)
    logged = datetime.fromisoformat(line["timestamp"])
    assert (logged - start).total_seconds() == 3600


def test_clock_timestamper_is_a_standalone_processor() -> None:
    stamper = ClockTimeStamper(SimulatedClock(START), key="at")

    assert stamper(None, "info", {"event": "x"}) == {
        "event": "x",
        "at": "2030-01-02T03:04:05.000000Z",
    }


def test_correlation_id_is_on_every_line_inside_the_block_and_gone_after(
    output: io.StringIO,
) -> None:
    configure_logging("info", "json", output, clock=SimulatedClock(START))
    logger = get_logger("test")

    with bind_correlation("order-42") as correlation_id:
        logger.info("first")
        get_logger("other").error("second")
    logger.info("outside")

    assert correlation_id == "order-42"
    first, second, outside = json_lines(output)
    assert first["correlation_id"] == "order-42"
    assert second["correlation_id"] == "order-42"
    assert "correlation_id" not in outside


def test_nested_correlation_shadows_then_restores_the_outer_id(output: io.StringIO) -> None:
    configure_logging("info", "json", output, clock=SimulatedClock(START))
    logger = get_logger("test")

    with bind_correlation("outer"):
        with bind_correlation("inner"):
            logger.info("nested")
            assert current_correlation() == "inner"
        logger.info("back")
    assert current_correlation() is None

    assert [line["correlation_id"] for line in json_lines(output)] == ["inner", "outer"]


async def test_tasks_keep_their_own_correlation_ids(clock: Clock, output: io.StringIO) -> None:
    configure_logging("info", "json", output, clock=clock)
    logger = get_logger("test")

    async def handle(correlation_id: str, delay: float) -> None:
        with bind_correlation(correlation_id):
            await asyncio.sleep(delay)
            logger.info("handled")

    async def started_inside() -> None:
        logger.info("child task")

    with bind_correlation("parent"):
        async with asyncio.TaskGroup() as group:
            group.create_task(handle("a", 2), name="handle-a")
            group.create_task(handle("b", 1), name="handle-b")
            group.create_task(started_inside(), name="child")

    ids = sorted((line["event"], line["correlation_id"]) for line in json_lines(output))
    assert ids == [("child task", "parent"), ("handled", "a"), ("handled", "b")]


def test_bind_correlation_rejects_an_empty_id() -> None:
    with pytest.raises(ValidationError) as raised, bind_correlation(" "):
        pass

    assert raised.value.field == "correlation_id"


def test_lines_below_the_level_are_dropped(output: io.StringIO) -> None:
    configure_logging("WARNING", "json", output, clock=SimulatedClock(START))
    logger = get_logger("test")

    logger.info("dropped")
    logger.warning("kept")

    assert [line["event"] for line in json_lines(output)] == ["kept"]


@pytest.mark.parametrize(
    ("level", "fmt", "field"),
    [("loud", "json", "level"), (15, "json", "level"), ("info", "xml", "fmt")],
)
def test_bad_level_or_format_is_a_validation_error(level: Any, fmt: Any, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        configure_logging(level, fmt, io.StringIO())

    assert raised.value.field == field


def test_console_output_has_no_colour_codes_when_not_a_terminal(output: io.StringIO) -> None:
    configure_logging("info", "console", output, clock=SimulatedClock(START))

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("legato.loop").exception("iteration failed", loop="reaper")

    text = output.getvalue()
    assert "\x1b[" not in text
    assert "iteration failed" in text
    assert "loop=reaper" in text
    assert "RuntimeError: boom" in text
    assert "2030-01-02T03:04:05.000000Z" in text


def test_console_output_is_coloured_on_a_terminal() -> None:
    terminal = Terminal()
    configure_logging("info", "console", terminal, clock=SimulatedClock(START))

    get_logger("test").info("hello")

    assert "\x1b[" in terminal.getvalue()


def test_auto_writes_json_when_not_a_terminal(output: io.StringIO) -> None:
    configure_logging("info", "auto", output, clock=SimulatedClock(START))

    get_logger("test").info("hello")

    assert json_lines(output)[0]["event"] == "hello"


def test_auto_writes_console_text_on_a_terminal() -> None:
    terminal = Terminal()
    configure_logging("info", "auto", terminal, clock=SimulatedClock(START))

    get_logger("test").info("hello")

    with pytest.raises(json.JSONDecodeError):
        json.loads(terminal.getvalue())
    assert "hello" in terminal.getvalue()


def test_json_exceptions_carry_the_traceback(output: io.StringIO) -> None:
    configure_logging("info", "json", output, clock=SimulatedClock(START))

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("test").exception("failed")

    (line,) = json_lines(output)
    assert "RuntimeError: boom" in line["exception"]


def test_secrets_never_reach_the_output(output: io.StringIO) -> None:
    configure_logging("info", "json", output, clock=SimulatedClock(START))
    settings = LegatoSettings(service=ServiceSettings(api_token=SecretStr("s3cret-token")))

    get_logger("test").info(
        "connecting",
        token=SecretStr("s3cret-token"),
        db_password="hunter2",
        settings=settings,
        tokens=5,
    )

    text = output.getvalue()
    assert "s3cret-token" not in text
    assert "hunter2" not in text
    assert json_lines(output)[0]["tokens"] == 5  # rate-limiter counts are not secrets


def test_redact_secrets_masks_secret_types_and_credential_keys() -> None:
    event = {"event": "x", "api_key": "k", "secret": SecretStr("v"), "bucket_tokens": 3}

    assert redact_secrets(None, "info", event) == {
        "event": "x",
        "api_key": "**********",
        "secret": "**********",
        "bucket_tokens": 3,
    }


def test_reconfiguring_reaches_loggers_created_before(output: io.StringIO) -> None:
    logger = get_logger("made.early")
    configure_logging("info", "json", io.StringIO(), clock=SimulatedClock(START))

    configure_logging("info", "json", output, clock=SimulatedClock(START))
    logger.info("where")

    assert json_lines(output)[0]["logger_name"] == "made.early"


def test_standard_library_records_share_the_format_clock_and_correlation(
    output: io.StringIO,
) -> None:
    configure_logging("info", "json", output, clock=SimulatedClock(START))

    with bind_correlation("req-7"):
        logging.getLogger("uvicorn.error").warning("port %d busy", 8600)
    logging.getLogger("sqlalchemy.engine").debug("below the level")

    (line,) = json_lines(output)
    assert line == {
        "event": "port 8600 busy",
        "level": "warning",
        "logger_name": "uvicorn.error",
        "timestamp": "2030-01-02T03:04:05.000000Z",
        "correlation_id": "req-7",
    }


def test_reconfiguring_replaces_the_standard_library_handler(output: io.StringIO) -> None:
    first = io.StringIO()
    configure_logging("info", "json", first, clock=SimulatedClock(START))
    configure_logging("info", "json", output, clock=SimulatedClock(START))

    logging.getLogger("library").error("once")

    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(output)] == ["once"]


def test_logs_at_says_which_levels_the_configuration_writes(output: io.StringIO) -> None:
    configure_logging("warning", "json", output)
    assert not logs_at("info")
    assert logs_at("warning")
    assert logs_at(logging.ERROR)
    configure_logging("debug", "json", output)
    assert logs_at("debug")
    # structlog configured by hand, with a wrapper this module does not know: all written.
    structlog.configure(wrapper_class=structlog.BoundLogger)
    assert logs_at("debug")
