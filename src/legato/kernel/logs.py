"""Structured logging: a structlog pipeline stamped by the Clock, rendered as JSON or for people.

`configure_logging()` sets the pipeline once per process::

    merge_contextvars      fields bound for the current task, such as correlation_id
    add_log_level          "level": "info"
    ClockTimeStamper       "timestamp" from the runtime's Clock, so simulated runs log virtual time
    redact_secrets         secret values and secret-looking keys replaced before rendering
    StackInfoRenderer      stack_info=True adds the stack
    format_exc_info        (JSON only) the traceback as a string field
    renderer               one JSON object per line, or aligned console text

Records from the standard `logging` module (uvicorn, SQLAlchemy) pass through the same steps
and renderer, with `logger_name` taken from the record.

Inside `with bind_correlation("order-42"):` every line, in this task and in tasks it starts,
carries `correlation_id="order-42"`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import structlog
from pydantic import SecretBytes, SecretStr
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError

__all__ = [
    "CORRELATION_KEY",
    "ClockTimeStamper",
    "LogFormat",
    "add_stdlib_logger_name",
    "bind_correlation",
    "configure_logging",
    "current_correlation",
    "get_logger",
    "logs_at",
    "redact_secrets",
]

LogFormat = Literal["console", "json", "auto"]
"""How lines are rendered; "auto" means console on a terminal and JSON anywhere else."""

CORRELATION_KEY = "correlation_id"
"""The log field (and context variable) that ties together every line of one piece of work."""

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# The threshold of each filtering logger class structlog hands out (it makes one per level
# and keeps it), so the configured class says which levels are written.
_THRESHOLDS = {structlog.make_filtering_bound_logger(number): number for number in _LEVELS.values()}
_FORMATS = ("console", "json", "auto")
_MASK = "**********"
# Key endings that name credentials whatever the value's type. Deliberately not any key
# containing "token": rate limiters log token-bucket counts under such names.
_SECRET_KEY_ENDINGS = (
    "password",
    "passwd",
    "secret",
    "_token",
    "api_key",
    "apikey",
    "authorization",
)


@dataclass(frozen=True, slots=True)
class ClockTimeStamper:
    """Processor adding an ISO 8601 UTC timestamp read from a `Clock`, not the wall clock."""

    clock: Clock
    key: str = "timestamp"

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """Stamp `event_dict` with the clock's current time, e.g. 2026-01-02T03:04:05.000000Z."""
        stamped = self.clock.now().isoformat(timespec="microseconds")
        event_dict[self.key] = stamped.replace("+00:00", "Z")
        return event_dict


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Processor replacing secret values, and values under secret-looking keys, with asterisks."""
    for key, value in event_dict.items():
        if isinstance(value, SecretStr | SecretBytes) or (
            isinstance(key, str) and value is not None and _is_secret_key(key)
        ):
            event_dict[key] = _MASK
    return event_dict


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return lowered == "token" or lowered.endswith(_SECRET_KEY_ENDINGS)


def configure_logging(
    level: str | int = "info",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
    *,
    clock: Clock | None = None,
) -> None:
    """Route every structlog logger to `stream` (default stderr) at `level` and above.

    `fmt` is "json" (one object per line, for production), "console" (aligned text, coloured
    only on a terminal) or "auto" (console on a terminal, JSON otherwise). Timestamps come from
    `clock` (default `RealClock()`): pass the runtime's clock so simulated runs log virtual time.
    Calling it again replaces the previous configuration, also for loggers already handed out.
    The standard `logging` root logger gets one handler writing the same format to `stream`.
    """
    threshold = _level_number(level)
    if fmt not in _FORMATS:
        raise ValidationError("fmt", fmt, "one of 'console', 'json', 'auto'")
    output = sys.stderr if stream is None else stream
    is_terminal = _is_terminal(output)
    use_json = fmt == "json" or (fmt == "auto" and not is_terminal)
    renderer: list[Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if use_json
        else [structlog.dev.ConsoleRenderer(colors=is_terminal)]
    )
    enrich: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        ClockTimeStamper(RealClock() if clock is None else clock),
        redact_secrets,
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[*enrich, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=output),
        # Not cached: reconfiguring (a test, a switch to simulated time) must reach loggers
        # that modules created at import time.
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(threshold, output, [add_stdlib_logger_name, *enrich], renderer)


class _StructlogHandler(logging.StreamHandler[TextIO]):
    """The root handler `configure_logging` installs; its class marks it for replacement."""


def _route_standard_logging(
    threshold: int, output: TextIO, enrich: list[Processor], renderer: list[Processor]
) -> None:
    # Libraries below us (uvicorn, SQLAlchemy, alembic) log through the standard library;
    # their lines go through the same enrichment and renderer, so one stream has one format.
    handler = _StructlogHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=enrich,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(threshold)


def add_stdlib_logger_name(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Processor naming the standard-library logger a foreign record came from."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        event_dict.setdefault("logger_name", record.name)
    return event_dict


def _level_number(level: str | int) -> int:
    if isinstance(level, bool):
        raise ValidationError("level", level, "a level name or number")
    if isinstance(level, int):
        if level not in _LEVELS.values():
            raise ValidationError("level", level, f"one of {sorted(_LEVELS.values())}")
        return level
    if isinstance(level, str) and level.lower() in _LEVELS:
        return _LEVELS[level.lower()]
    raise ValidationError("level", level, "one of " + ", ".join(repr(name) for name in _LEVELS))


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def get_logger(name: str, **initial_values: Any) -> FilteringBoundLogger:
    """Return a logger whose lines carry `logger_name=name` and any `initial_values`.

    The logger is lazy: it follows whatever `configure_logging()` set last.
    """
    # "logger_name", not "logger": structlog.get_logger reserves the keyword `logger`, and
    # ConsoleRenderer shows either key in its logger column.
    logger: FilteringBoundLogger = structlog.get_logger(logger_name=name, **initial_values)
    return logger


def logs_at(level: str | int) -> bool:
    """True when a line at `level` is written under the current logging configuration.

    For a line that costs something to log on a hot path: loggers here are lazy (they follow
    the latest `configure_logging`), so each call assembles a bound logger before its level
    drops the line. A configuration this module does not know (structlog set up by hand)
    counts as writing everything.
    """
    threshold = _THRESHOLDS.get(structlog.get_config()["wrapper_class"], logging.NOTSET)
    return _level_number(level) >= threshold


@contextmanager
def bind_correlation(correlation_id: str) -> Iterator[str]:
    """Within the block, every log line of this task (and tasks it starts) carries the id.

    Nested blocks shadow the outer id and restore it on exit.
    """
    if not isinstance(correlation_id, str) or not correlation_id.strip():
        raise ValidationError("correlation_id", correlation_id, "a non-empty string")
    with structlog.contextvars.bound_contextvars(**{CORRELATION_KEY: correlation_id}):
        yield correlation_id


def current_correlation() -> str | None:
    """Return the correlation id bound by the innermost `bind_correlation`, if any."""
    value = structlog.contextvars.get_contextvars().get(CORRELATION_KEY)
    return value if isinstance(value, str) else None
