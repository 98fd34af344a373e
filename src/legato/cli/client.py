"""`ServiceClient`: talk to a Legato operator service over HTTP, and survive its absence.

What the client promises:

- **Retries only what is safe.** A request that never reached the service (connection
  refused, connect timeout) and a 502, 503 or 504 answer are retried with exponential
  backoff and jitter (`CLIENT_RETRY`: about 1 s, 2 s, 4 s), sleeping on the `Clock`. A 4xx
  answer is never retried: asking again cannot fix the request. A timeout or a 502/504
  *after* a non-idempotent request was sent is an `UnknownOutcomeError`, not a retry: the
  service may have acted on it (submit with an idempotency key to make it retryable).
- **Caches the registry and the configuration.** GET /workers and GET /info are kept for
  `cache_ttl` seconds on the clock, and written to a disk snapshot on every fresh answer.
- **Falls back to the snapshot.** When the service stays unreachable, `workers()` and
  `info()` return the last snapshot on disk with `source=SnapshotSource.DISK` and the time
  it was fetched, and log a warning; callers must say so (the CLI prints
  "service unreachable; showing snapshot from <time>").
- **Speaks the error taxonomy.** The service's error envelope becomes a Legato error::

      422 validation_error   -> legato.kernel.errors.ValidationError (field, value, expected)
      404 not_found          -> NotFoundError
      409 conflict           -> ConflictError
      401/403                -> UnauthorizedError
      other 4xx, 500         -> ServiceError                (all ServiceError: permanent)
      unreachable, 502/3/4   -> ServiceUnreachableError     (transient, after the retries)
      lost after sending     -> legato.kernel.errors.UnknownOutcomeError

The service layer does not import this module: it is the caller's side of the API.
"""

from __future__ import annotations

import enum
import random
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx
import structlog

from legato.cli.snapshots import SnapshotDirectory
from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import (
    LegatoError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
)
from legato.kernel.retry import Jitter, Retrier, RetryEvent, RetryExhausted, RetryPolicy

__all__ = [
    "CLIENT_RETRY",
    "DEFAULT_SERVICE_URL",
    "ConflictError",
    "JsonObject",
    "NotFoundError",
    "ServiceClient",
    "ServiceError",
    "ServiceUnreachableError",
    "Snapshot",
    "SnapshotSource",
    "UnauthorizedError",
    "error_from_response",
]

T = TypeVar("T")
JsonObject = dict[str, Any]
"""A JSON object as the API returns it."""
Query = list[tuple[str, str | int | float | bool | None]]
"""Query parameters, repeated keys allowed (`state=dead&state=cancelled`)."""

DEFAULT_SERVICE_URL = "http://127.0.0.1:8600"
"""Where `legato serve` listens by default."""

CLIENT_RETRY = RetryPolicy(max_attempts=4, initial_delay=1.0, max_delay=30.0, jitter=Jitter.EQUAL)
"""Four attempts, waiting about 1 s, 2 s and 4 s between them (equal jitter: 50-100 %)."""

_log = structlog.get_logger(__name__)

# Answers that mean "the service (or the proxy before it) did not handle this".
_UNAVAILABLE = frozenset({502, 503, 504})
# Failures before a single byte of the request can have been read by the service.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
# Failures after the request may have reached the service.
_LOST = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.WriteError,
         httpx.RemoteProtocolError)  # fmt: skip


class ServiceError(PermanentError):
    """The service answered with an error; `status`, `code` and `request_id` say which."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        # The message already says what is wrong; the request id lets the service log match.
        return f"{self.message} (request {self.request_id})" if self.request_id else self.message


class NotFoundError(ServiceError):
    """The task, worker or dead letter named does not exist (404)."""


class ConflictError(ServiceError):
    """The request is well formed but the target is in the wrong state (409)."""


class UnauthorizedError(ServiceError):
    """The service wants a valid bearer token (401) or refused it (403)."""


class ServiceUnreachableError(TransientError):
    """The service could not be reached, or kept answering 502/503/504, after every retry."""

    def __init__(self, message: str, *, url: str, attempts: int = 1) -> None:
        super().__init__(message, url=url, attempts=attempts)
        self.url = url
        self.attempts = attempts

    def __str__(self) -> str:
        return self.message


class SnapshotSource(enum.Enum):
    """Where a cached answer came from."""

    LIVE = "live"
    """Fetched from the service by this call."""
    CACHE = "cache"
    """From this client's memory, younger than its TTL."""
    DISK = "disk"
    """From the snapshot on disk: the service was unreachable."""


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[T]):
    """An answer about the registry or the configuration, with its age and its source."""

    value: T
    fetched_at: float
    source: SnapshotSource
    unreachable_reason: str | None = None

    @property
    def stale(self) -> bool:
        """True when the value comes from disk because the service could not be reached."""
        return self.source is SnapshotSource.DISK

    @property
    def fetched_at_datetime(self) -> datetime:
        """When the value was fetched from the service, as an aware UTC datetime."""
        return datetime.fromtimestamp(self.fetched_at, UTC)


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    stored_at: float
    snapshot: Snapshot[Any]


class ServiceClient:
    """An async client of the operator API; see the module docstring for its promises.

    `token` goes in `Authorization: Bearer` (mutating endpoints need it). `snapshot_dir`
    (usually `<data_dir>/.legato/cache`) enables the disk fallback; None disables it.
    `rng` draws the retry jitter: seed it for reproducible runs. `transport` replaces the
    network (tests pass `httpx.MockTransport`).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_SERVICE_URL,
        *,
        token: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        retry: RetryPolicy = CLIENT_RETRY,
        cache_ttl: float = 10.0,
        snapshot_dir: Path | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValidationError("url", base_url, "an http:// or https:// URL of the service")
        if cache_ttl < 0:
            raise ValidationError("cache_ttl", cache_ttl, "seconds >= 0")
        if timeout <= 0:
            raise ValidationError("timeout", timeout, "seconds > 0")
        self.base_url = base_url.rstrip("/")
        self._clock: Clock = clock if clock is not None else RealClock()
        self._retrier = Retrier(
            retry,
            self._clock,
            rng if rng is not None else random.Random(),
            on_retry=self._log_retry,
        )
        self._cache_ttl = cache_ttl
        self._cache: dict[str, _CacheEntry] = {}
        self._snapshots = (
            SnapshotDirectory(snapshot_dir, self.base_url) if snapshot_dir is not None else None
        )
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------ registry and configuration

    async def workers(self) -> Snapshot[list[JsonObject]]:
        """The worker registry (GET /workers): cached, with the disk snapshot as fallback."""
        return await self._cached("workers", "/workers")

    async def info(self) -> Snapshot[JsonObject]:
        """Version, backend and configuration (GET /info): cached, disk fallback."""
        return await self._cached("info", "/info")

    def invalidate(self) -> None:
        """Forget the in-memory cache (the disk snapshot stays)."""
        self._cache.clear()

    async def worker(self, worker_id: str) -> JsonObject:
        """One worker (GET /workers/{id}); NotFoundError if unknown."""
        return await self._object("GET", f"/workers/{_segment(worker_id)}")

    async def drain(self, worker_id: str) -> JsonObject:
        """Ask a worker to take no new work and finish what it runs (idempotent)."""
        result = await self._object(
            "POST", f"/workers/{_segment(worker_id)}/drain", retry_safe=True
        )
        self._cache.pop("workers", None)
        return result

    # ------------------------------------------------------------ tasks

    async def submit(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: float | None = None,
        idempotency_key: str | None = None,
        task_timeout: float | None = None,
        protected: bool | None = None,
    ) -> JsonObject:
        """Submit a registered task (POST /tasks); return the task.

        `task_timeout` is the task's time limit per attempt. Retried after an ambiguous failure
        only with an `idempotency_key`: the service then returns the task the first attempt
        created instead of a second one.
        """
        body: JsonObject = {"name": name, "args": list(args), "kwargs": dict(kwargs or {})}
        options = {
            "queue": queue,
            "priority": priority,
            "delay": delay,
            "run_at": run_at,
            "idempotency_key": idempotency_key,
            "timeout": task_timeout,
            "protected": protected,
        }
        body.update({key: value for key, value in options.items() if value is not None})
        return await self._object(
            "POST",
            "/tasks",
            body=body,
            retry_safe=idempotency_key is not None,
            idempotency_key=idempotency_key,
        )

    async def tasks(
        self,
        *,
        states: Sequence[str] = (),
        queue: str | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JsonObject:
        """One page of tasks (GET /tasks): {"items": [...], "next_cursor": str | None}."""
        params: Query = [("state", state) for state in states]
        params += [("limit", limit)]
        for key, value in (("queue", queue), ("name", name), ("cursor", cursor)):
            if value is not None:
                params.append((key, value))
        return await self._object("GET", "/tasks", params=params)

    async def task(self, task_id: int) -> JsonObject:
        """One task with its history (GET /tasks/{id}); NotFoundError if unknown."""
        return await self._object("GET", f"/tasks/{int(task_id)}")

    async def cancel(self, task_id: int) -> JsonObject:
        """Cancel a task; ConflictError if it already finished."""
        return await self._object("POST", f"/tasks/{int(task_id)}/cancel")

    async def retry(self, task_id: int) -> JsonObject:
        """Run a dead or cancelled task again; ConflictError for any other state."""
        return await self._object("POST", f"/tasks/{int(task_id)}/retry")

    # ------------------------------------------------------------ dead letters, workflows

    async def dead_letters(self, *, queue: str | None = None, limit: int = 100) -> list[JsonObject]:
        """Dead tasks, oldest first (GET /dlq)."""
        params: Query = [("limit", limit)]
        if queue is not None:
            params.append(("queue", queue))
        return await self._array("GET", "/dlq", params=params)

    async def replay(self, task_ids: Sequence[int]) -> JsonObject:
        """Send dead tasks back to pending: {"replayed": [...], "skipped": [...]}."""
        body = {"task_ids": [int(task_id) for task_id in task_ids]}
        # Replaying an already replayed task is a no-op ("skipped"), so a retry is harmless.
        return await self._object("POST", "/dlq/replay", body=body, retry_safe=True)

    async def purge(self, task_id: int) -> None:
        """Delete one dead task for good (DELETE /dlq/{id})."""
        await self._request("DELETE", f"/dlq/{int(task_id)}", retry_safe=False)

    async def workflows(self) -> list[JsonObject]:
        """Durable workflows (GET /workflows)."""
        return await self._array("GET", "/workflows")

    # ------------------------------------------------------------ plumbing

    async def _cached(self, resource: str, path: str) -> Snapshot[Any]:
        entry = self._cache.get(resource)
        if entry is not None and self._clock.monotonic() - entry.stored_at < self._cache_ttl:
            return replace(entry.snapshot, source=SnapshotSource.CACHE)
        try:
            value = await self._json("GET", path)
        except ServiceUnreachableError as error:
            saved = self._snapshots.load(resource) if self._snapshots is not None else None
            if saved is None:
                raise
            _log.warning(
                "service unreachable; serving snapshot",
                url=self.base_url,
                resource=resource,
                fetched_at=datetime.fromtimestamp(saved.fetched_at, UTC).isoformat(),
                error=str(error),
            )
            return Snapshot(saved.value, saved.fetched_at, SnapshotSource.DISK, str(error))
        snapshot: Snapshot[Any] = Snapshot(value, self._clock.timestamp(), SnapshotSource.LIVE)
        self._cache[resource] = _CacheEntry(self._clock.monotonic(), snapshot)
        if self._snapshots is not None:
            self._snapshots.save(resource, value, snapshot.fetched_at)
        return snapshot

    async def _object(self, method: str, path: str, **options: Any) -> JsonObject:
        value = await self._json(method, path, **options)
        if not isinstance(value, dict):
            raise ServiceError(
                f"{method} {path}: expected a JSON object, got {type(value).__name__}",
                status=200,
                code="unexpected_body",
            )
        return value

    async def _array(self, method: str, path: str, **options: Any) -> list[JsonObject]:
        value = await self._json(method, path, **options)
        if not isinstance(value, list):
            raise ServiceError(
                f"{method} {path}: expected a JSON array, got {type(value).__name__}",
                status=200,
                code="unexpected_body",
            )
        return value

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        body: JsonObject | None = None,
        retry_safe: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        response = await self._request(
            method,
            path,
            params=params,
            body=body,
            retry_safe=method == "GET" if retry_safe is None else retry_safe,
            idempotency_key=idempotency_key,
        )
        return response.json()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        body: JsonObject | None = None,
        retry_safe: bool,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        try:
            return await self._retrier.call(
                self._attempt, method, path, params, body, retry_safe, idempotency_key
            )
        except RetryExhausted as error:
            raise ServiceUnreachableError(
                f"service at {self.base_url} unreachable after {error.attempts} attempt(s): "
                f"{error.last_error}",
                url=self.base_url,
                attempts=error.attempts,
            ) from error

    async def _attempt(
        self,
        method: str,
        path: str,
        params: Query | None,
        body: JsonObject | None,
        retry_safe: bool,
        idempotency_key: str | None,
    ) -> httpx.Response:
        target = f"{method} {self.base_url}{path}"
        try:
            response = await self._http.request(method, path, params=params, json=body)
        except _NOT_SENT as error:
            raise ServiceUnreachableError(
                f"cannot connect to {self.base_url} ({type(error).__name__}: {error})",
                url=self.base_url,
            ) from error
        except _LOST as error:
            if not retry_safe:
                raise UnknownOutcomeError(
                    f"{target}: connection lost after sending ({type(error).__name__}); the "
                    "service may have acted on it: check before trying again",
                    idempotency_key=idempotency_key,
                ) from error
            raise ServiceUnreachableError(
                f"{target}: {type(error).__name__}: {error}", url=self.base_url
            ) from error
        if response.status_code in _UNAVAILABLE:
            # 503 says the request was not handled; a 502/504 from a proxy may hide one that was.
            if not retry_safe and response.status_code != 503:
                raise UnknownOutcomeError(
                    f"{target}: {response.status_code} after sending; the service may have acted "
                    "on it: check before trying again",
                    idempotency_key=idempotency_key,
                )
            raise ServiceUnreachableError(
                f"{target}: {response.status_code} {response.reason_phrase}", url=self.base_url
            )
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def _log_retry(self, event: RetryEvent) -> None:
        _log.warning(
            "service call failed; retrying",
            url=self.base_url,
            attempt=event.attempt,
            delay=round(event.delay, 3),
            error=str(event.error),
        )


def error_from_response(response: httpx.Response) -> LegatoError:
    """Turn an error answer (the service's envelope, or anything else) into a Legato error."""
    status = response.status_code
    code = "http_error"
    message = f"{status} {response.reason_phrase}"
    details: dict[str, Any] = {}
    request_id = response.headers.get("x-request-id")
    try:
        envelope = response.json()["error"]
        code = str(envelope["code"])
        message = str(envelope["message"])
        details = dict(envelope.get("details") or {})
        request_id = envelope.get("request_id") or request_id
    except (ValueError, KeyError, TypeError):
        pass  # not our envelope (a proxy's page): status and reason are all we know
    if status == 422 or code == "validation_error":
        problems = details.get("problems") or [{}]
        expected = details.get("expected") or problems[0].get("expected") or message
        return ValidationError(
            str(details.get("field") or "request"),
            details.get("value"),
            str(expected),
            request_id=request_id,
        )
    error_type: type[ServiceError] = {
        401: UnauthorizedError,
        403: UnauthorizedError,
        404: NotFoundError,
        409: ConflictError,
    }.get(status, ServiceError)
    return error_type(message, status=status, code=code, request_id=request_id, details=details)


def _segment(value: str) -> str:
    # Worker ids hold ':' and may hold '/': escape them so they stay one path segment.
    if not value:
        raise ValidationError("worker_id", value, "a non-empty worker id")
    return urllib.parse.quote(value, safe=":")
