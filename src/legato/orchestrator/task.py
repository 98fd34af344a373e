"""Task definitions and the context a running task can read.

A task is a registered Python function (sync or async) called with JSON arguments. While it
runs, `current_task()` (or a parameter named `ctx`) gives it a `TaskContext`: which task and
attempt this is, the key to guard its effects with, and whether it has been asked to stop.
"""

from __future__ import annotations

import contextvars
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from legato.kernel.errors import ValidationError
from legato.kernel.retry import Jitter, RetryPolicy
from legato.orchestrator.resources import Resources

__all__ = [
    "DEFAULT_RETRY",
    "TaskContext",
    "TaskDefinition",
    "bind_context",
    "current_task",
    "decode_retry",
    "encode_retry",
]

DEFAULT_RETRY = RetryPolicy(max_attempts=5, initial_delay=1.0, max_delay=300.0)
"""Five attempts, 1 s doubling to at most 5 min, full jitter."""

_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("legato_task")


@dataclass(frozen=True, slots=True)
class TaskDefinition:
    """A registered task: its function and the defaults every submission starts from."""

    name: str
    fn: Callable[..., Any]
    queue: str = "default"
    retry: RetryPolicy = DEFAULT_RETRY
    timeout: float | None = None
    priority: int = 0
    resources: Resources = field(default_factory=Resources)
    protected: bool = False
    # Derived once here rather than on every submit and every attempt (the hot paths).
    signature: inspect.Signature = field(init=False, repr=False, compare=False)
    is_async: bool = field(init=False, repr=False, compare=False)
    wants_context: bool = field(init=False, repr=False, compare=False)
    retry_json: str = field(init=False, repr=False, compare=False)
    resources_json: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        signature = inspect.signature(self.fn)
        object.__setattr__(self, "signature", signature)
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))
        object.__setattr__(self, "wants_context", "ctx" in signature.parameters)
        object.__setattr__(self, "retry_json", encode_retry(self.retry))
        object.__setattr__(self, "resources_json", self.resources.to_json())

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise ValidationError unless `args`/`kwargs` bind to the function's signature."""
        signature = self.signature
        if self.wants_context:
            kwargs = {**kwargs, "ctx": None}
        try:
            signature.bind(*args, **kwargs)
        except TypeError as error:
            raise ValidationError(
                "args",
                {"args": args, "kwargs": kwargs},
                f"arguments matching {self.name}{signature}",
            ) from error


class TaskContext:
    """What a running attempt knows about itself; read it, do not keep it after the attempt."""

    __slots__ = (
        "_stop_requested",
        "attempt",
        "fencing_token",
        "idempotency_key",
        "name",
        "queue",
        "task_id",
    )

    def __init__(
        self,
        *,
        task_id: int,
        name: str,
        queue: str,
        attempt: int,
        fencing_token: int,
        idempotency_key: str | None,
    ) -> None:
        self.task_id = task_id
        self.name = name
        self.queue = queue
        self.attempt = attempt
        self.fencing_token = fencing_token
        self.idempotency_key = idempotency_key
        # A plain flag: only the worker's loop writes it, and a sync task polling it from its
        # thread reads a bool atomically (a threading.Event per attempt costs more than the
        # whole rest of the bookkeeping).
        self._stop_requested = False

    @property
    def effect_key(self) -> str:
        """A key that is the same on every attempt of this task: guard external writes with it.

        The submitter's idempotency key when there is one, else one derived from the task id.
        """
        return self.idempotency_key or f"legato-task-{self.task_id}"

    @property
    def stop_requested(self) -> bool:
        """True once the worker asked this attempt to stop (time limit, cancel, shutdown)."""
        return self._stop_requested

    def request_stop(self) -> None:
        """Ask the attempt to stop; the worker calls this, tasks only read it."""
        self._stop_requested = True

    def __repr__(self) -> str:
        return f"TaskContext(task_id={self.task_id}, name={self.name!r}, attempt={self.attempt})"


def current_task() -> TaskContext:
    """Return the context of the task running in this coroutine or thread.

    Raises LookupError outside a task.
    """
    return _current.get()


def bind_context(context: TaskContext) -> contextvars.Token[TaskContext]:
    """Make `context` what `current_task()` returns in the current context."""
    return _current.set(context)


def encode_retry(policy: RetryPolicy) -> str:
    """Encode a RetryPolicy for the store (the reaper needs it after the submitter is gone)."""
    return json.dumps(
        {
            "max_attempts": policy.max_attempts,
            "initial_delay": policy.initial_delay,
            "max_delay": policy.max_delay,
            "multiplier": policy.multiplier,
            "jitter": policy.jitter.value,
        },
        separators=(",", ":"),
    )


def decode_retry(text: str) -> RetryPolicy:
    """Decode what `encode_retry` wrote; an empty or unreadable value gives DEFAULT_RETRY."""
    try:
        data = json.loads(text)
        return RetryPolicy(
            max_attempts=int(data["max_attempts"]),
            initial_delay=float(data["initial_delay"]),
            max_delay=float(data["max_delay"]),
            multiplier=float(data["multiplier"]),
            jitter=Jitter(data["jitter"]),
        )
    except (ValueError, KeyError, TypeError):
        return DEFAULT_RETRY
