"""Legato's error taxonomy: what went wrong, and what the caller may safely do next.

Every failure that crosses a component boundary is one of these. Retry policies, the task
engine and the execution manager decide what to do from the class alone::

    LegatoError                      base of everything Legato raises on purpose
    ├── ValidationError              bad input: names the field, the value, what is accepted;
    │   │                            nothing was changed. Never retried.
    │   └── ConfigError              invalid settings; lists every problem at once
    ├── PermanentError               the operation will fail the same way again. Not retried.
    ├── TransientError               the operation did not take effect; safe to retry
    │   ├── RateLimitedError         the remote side said "slow down"; carries retry_after
    │   ├── DeadlineExceeded         timed out before any effect was possible
    │   └── CircuitOpenError         a circuit breaker refused the call; carries retry_after
    └── UnknownOutcomeError          the request may have taken effect (a timeout or a 5xx
                                     after sending). Never blindly retried: resolve it by
                                     querying with the idempotency key it carries.

`classify()` maps any exception, including ones from other libraries, to an `ErrorKind`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "ErrorKind",
    "LegatoError",
    "PermanentError",
    "RateLimitedError",
    "TransientError",
    "UnknownOutcomeError",
    "ValidationError",
    "classify",
    "sole_error",
]


class ErrorKind(enum.Enum):
    """What a failure means for whoever decides whether to try again."""

    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    UNKNOWN_OUTCOME = "unknown_outcome"
    PERMANENT = "permanent"
    VALIDATION = "validation"

    @property
    def retryable(self) -> bool:
        """True when trying the same call again cannot cause a duplicate effect."""
        return self in (ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED, ErrorKind.TIMEOUT)


class LegatoError(Exception):
    """Base of every error Legato raises on purpose.

    `context` carries what an operator needs to find the cause (a task id, an order's client
    id, a field name); it is included in `str()` and in structured logs.
    """

    kind: ErrorKind = ErrorKind.PERMANENT

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = context

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = ", ".join(f"{key}={value!r}" for key, value in self.context.items())
        return f"{self.message} ({details})"


class ValidationError(LegatoError):
    """Bad input. Names the field, the value given and what would be accepted."""

    kind = ErrorKind.VALIDATION

    def __init__(self, field: str, value: Any, expected: str, **context: Any) -> None:
        super().__init__(f"invalid {field}: got {value!r}, expected {expected}", **context)
        self.field = field
        self.value = value
        self.expected = expected


class ConfigError(ValidationError):
    """Invalid settings. `problems` lists every (field, value, expected) found, not just one."""

    def __init__(self, problems: Sequence[tuple[str, Any, str]], source: str = "settings") -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        field, value, expected = problems[0]
        super().__init__(field, value, expected)
        self.problems = list(problems)
        self.source = source
        lines = [f"{source}: {len(self.problems)} problem(s)"]
        lines += [f"  {f}: got {v!r}, expected {e}" for f, v, e in self.problems]
        self.message = "\n".join(lines)
        self.args = (self.message,)


class PermanentError(LegatoError):
    """The operation failed and will fail the same way if tried again."""

    kind = ErrorKind.PERMANENT


class TransientError(LegatoError):
    """The operation failed without taking effect; trying again is safe."""

    kind = ErrorKind.TRANSIENT


class RateLimitedError(TransientError):
    """The remote side asked us to slow down; `retry_after` is how long, in seconds."""

    kind = ErrorKind.RATE_LIMITED

    def __init__(self, message: str, retry_after: float | None = None, **context: Any) -> None:
        super().__init__(message, retry_after=retry_after, **context)
        self.retry_after = retry_after


class DeadlineExceeded(TransientError):
    """A time limit ran out before the operation could have had any effect.

    A timeout *after* a non-idempotent request was sent is an `UnknownOutcomeError` instead.
    """

    kind = ErrorKind.TIMEOUT

    def __init__(self, message: str, timeout: float | None = None, **context: Any) -> None:
        super().__init__(message, timeout=timeout, **context)
        self.timeout = timeout


class CircuitOpenError(TransientError):
    """A circuit breaker refused the call without trying it; `retry_after` says when to probe."""

    def __init__(self, name: str, retry_after: float, **context: Any) -> None:
        super().__init__(
            f"circuit {name!r} is open; calls are refused for {retry_after:.3f}s more",
            breaker=name,
            retry_after=retry_after,
            **context,
        )
        self.breaker = name
        self.retry_after = retry_after


class UnknownOutcomeError(LegatoError):
    """The request may or may not have taken effect.

    Never retry it blindly: query the remote side with `idempotency_key` to learn the outcome.
    """

    kind = ErrorKind.UNKNOWN_OUTCOME

    def __init__(self, message: str, idempotency_key: str | None = None, **context: Any) -> None:
        super().__init__(message, idempotency_key=idempotency_key, **context)
        self.idempotency_key = idempotency_key


_BUILTIN_KINDS: Mapping[type[BaseException], ErrorKind] = {
    TimeoutError: ErrorKind.TIMEOUT,  # asyncio.TimeoutError is TimeoutError on 3.11+
    ConnectionError: ErrorKind.TRANSIENT,
    ValueError: ErrorKind.VALIDATION,
    TypeError: ErrorKind.PERMANENT,
}


def classify(error: BaseException) -> ErrorKind:
    """Return the `ErrorKind` of any exception.

    Legato errors carry their kind. Built-in timeouts count as `TIMEOUT`, connection errors as
    `TRANSIENT`, `ValueError` as `VALIDATION`; anything else as `PERMANENT`, because retrying
    an error nobody understood is how duplicate orders happen.
    """
    if isinstance(error, LegatoError):
        return error.kind
    if isinstance(error, asyncio.CancelledError):
        return ErrorKind.PERMANENT
    for error_type, kind in _BUILTIN_KINDS.items():
        if isinstance(error, error_type):
            return kind
    return ErrorKind.PERMANENT


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception `group` holds, however deeply nested; None when it holds more.

    A task group wraps its one failure in a group, and nested task groups wrap it again:
    a caller that knows only the failure (a strategy's own error, a ValidationError) wants
    it raised as itself.
    """
    found = group
    while len(found.exceptions) == 1:
        only = found.exceptions[0]
        if not isinstance(only, BaseExceptionGroup):
            return only
        found = only
    return None
