"""A client for OpenAI-compatible chat-completions APIs that answers with validated JSON.

`LLMClient.complete_json(messages, schema)` posts to `{base_url}/chat/completions`, asks for a
JSON object, validates the reply's content against a pydantic model and returns it with the
tokens it cost. Every answer that carries a `usage` field is accounted, valid or not, because
a wrong answer is paid for too.

Failures map onto the kernel's error taxonomy, and only the retryable ones are retried (by a
`legato.kernel.retry.Retrier`, sleeping on the client's `Clock`)::

    HTTP 429                       RateLimitedError, waits at least the Retry-After header
    HTTP 408, 5xx                  TransientError
    connect / read / write errors  TransientError
    timeouts                       DeadlineExceeded
    other HTTP 4xx                 PermanentError (a bad key or request fails the same again)
    a reply that is not JSON, or
    does not match the schema      InvalidAnswerError (a PermanentError): not retried, the
                                   caller falls back

A chat completion has no effect beyond its cost, so a 5xx or a timeout after sending is safe
to repeat: unlike an order, it is never an unknown outcome.

The API key lives in `LLMSettings.api_key`, which is left out of the settings' repr, and is
sent only in the Authorization header; no log line or error carries it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Generic, Literal, TypeVar

import httpx
import pydantic

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import (
    DeadlineExceeded,
    PermanentError,
    RateLimitedError,
    TransientError,
    ValidationError,
)
from legato.kernel.logs import get_logger
from legato.kernel.retry import Jitter, Retrier, RetryEvent, RetryPolicy

__all__ = [
    "DEFAULT_RETRY",
    "ChatMessage",
    "InvalidAnswerError",
    "LLMAnswer",
    "LLMClient",
    "LLMSettings",
    "LLMUsage",
    "TokenUsage",
]

SchemaT = TypeVar("SchemaT", bound=pydantic.BaseModel)

_log = get_logger("legato.trading.llm")
_THOUSAND = Decimal(1000)
# Enough of a bad reply to see what went wrong, not enough to flood a log line.
_EXCERPT = 200


def _excerpt(text: str) -> str:
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "…"


DEFAULT_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.5, max_delay=4.0, jitter=Jitter.EQUAL)
"""Three attempts, half a second then a second apart (jittered): enough for a blip, no more."""


@dataclass(frozen=True, slots=True)
class LLMSettings:
    """Where the chat API is, which model to ask, and how long and how often to try.

    `timeout` bounds one HTTP attempt (connect, send, wait, read); `deadline` bounds the whole
    call, retries and their waits included. Prices are per 1,000 tokens, in the account's
    currency. `api_key` is never shown in repr.
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    deadline: float = 30.0
    temperature: float = 0.0
    max_tokens: int = 400
    json_mode: bool = True
    prompt_price_per_1k: Decimal = Decimal(0)
    completion_price_per_1k: Decimal = Decimal(0)
    retry: RetryPolicy = DEFAULT_RETRY

    def __post_init__(self) -> None:
        try:
            url = httpx.URL(self.base_url) if self.base_url else None
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValidationError("base_url", self.base_url, "an http:// or https:// URL")
        if not self.model:
            raise ValidationError("model", self.model, "a model name")
        if not self.timeout > 0:
            raise ValidationError("timeout", self.timeout, "seconds > 0")
        if not self.deadline >= self.timeout:
            raise ValidationError("deadline", self.deadline, f"seconds >= timeout ({self.timeout})")
        if not 0 <= self.temperature <= 2:
            raise ValidationError("temperature", self.temperature, "a number in [0, 2]")
        if isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValidationError("max_tokens", self.max_tokens, "an integer >= 1")
        for name in ("prompt_price_per_1k", "completion_price_per_1k"):
            price = getattr(self, name)
            if not isinstance(price, Decimal) or not price.is_finite() or price < 0:
                raise ValidationError(name, price, "a Decimal price per 1,000 tokens >= 0")

    @property
    def completions_url(self) -> str:
        """Return the chat-completions endpoint under `base_url`."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """Return what `prompt_tokens` in and `completion_tokens` out cost at these prices."""
        return (
            self.prompt_price_per_1k * prompt_tokens
            + self.completion_price_per_1k * completion_tokens
        ) / _THOUSAND


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat: who says it (`system`, `user`, `assistant`) and what."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens one answer used, as the API reported them, and what they cost."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)

    @property
    def total_tokens(self) -> int:
        """Return prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class LLMUsage:
    """A client's running totals: HTTP requests, answers, failures, tokens and cost."""

    requests: int = 0
    answers: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class LLMAnswer(Generic[SchemaT]):
    """A validated answer: the parsed value, its token usage, attempts and latency."""

    value: SchemaT
    usage: TokenUsage
    model: str
    attempts: int
    latency: float


class InvalidAnswerError(PermanentError):
    """The API answered, but not with what was asked: not JSON, or not the schema.

    Not retried: the same prompt tends to get the same wrong answer, and each try is paid
    for. `usage` is what the wrong answer cost; `content` an excerpt of it.
    """

    def __init__(self, reason: str, content: str, usage: TokenUsage) -> None:
        super().__init__(f"the model's answer was unusable: {reason}", content=_excerpt(content))
        self.reason = reason
        self.content = content
        self.usage = usage


class LLMClient:
    """An OpenAI-compatible chat client that returns schema-validated JSON answers.

    Use as an async context manager (or call `aclose()`) to release its connection pool.
    `rng` seeds the retry jitter; it is required unless the retry policy has no jitter.
    """

    __slots__ = ("_clock", "_http", "_retrier", "_settings", "_usage")

    def __init__(
        self,
        settings: LLMSettings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._clock: Clock = clock if clock is not None else RealClock()
        self._retrier = Retrier(
            settings.retry,
            self._clock,
            rng,
            on_retry=self._on_retry,
            deadline=settings.deadline,
        )
        headers = {"Content-Type": "application/json"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(settings.timeout))
        self._usage = LLMUsage()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    @property
    def settings(self) -> LLMSettings:
        """Return the client's settings."""
        return self._settings

    @property
    def usage(self) -> LLMUsage:
        """Return the running totals since the client was made."""
        return self._usage

    async def complete_json(
        self, messages: Sequence[ChatMessage], schema: type[SchemaT]
    ) -> LLMAnswer[SchemaT]:
        """Ask the model and return its answer parsed as `schema`.

        Raises `InvalidAnswerError` for an answer that is not a `schema` object,
        `PermanentError` for a refused request, and, once retries are spent,
        `RetryExhausted` or `DeadlineExceeded` wrapping the last transient error.
        """
        if not messages:
            raise ValidationError("messages", list(messages), "at least one chat message")
        body: dict[str, Any] = {
            "model": self._settings.model,
            "messages": [
                {"role": message.role, "content": message.content} for message in messages
            ],
            "temperature": self._settings.temperature,
            "max_tokens": self._settings.max_tokens,
        }
        if self._settings.json_mode:
            body["response_format"] = {"type": "json_object"}
        started = self._clock.monotonic()
        try:
            result = await self._retrier.run(self._attempt, body, schema)
        except Exception as error:
            self._usage = _add(self._usage, failures=1)
            _log.warning(
                "llm.failed",
                model=self._settings.model,
                error=str(error),
                error_type=type(error).__name__,
            )
            raise
        value, usage = result.value
        latency = self._clock.monotonic() - started
        self._usage = _add(self._usage, answers=1)
        _log.info(
            "llm.answer",
            model=self._settings.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=str(usage.cost),
            attempts=result.attempts,
            latency=round(latency, 4),
        )
        return LLMAnswer(
            value=value,
            usage=usage,
            model=self._settings.model,
            attempts=result.attempts,
            latency=latency,
        )

    async def _attempt(
        self, body: Mapping[str, Any], schema: type[SchemaT]
    ) -> tuple[SchemaT, TokenUsage]:
        self._usage = _add(self._usage, requests=1)
        try:
            response = await self._http.post(self._settings.completions_url, json=body)
        except httpx.TimeoutException as error:
            raise DeadlineExceeded(
                f"no answer from the chat API within {self._settings.timeout}s",
                timeout=self._settings.timeout,
            ) from error
        except httpx.TransportError as error:
            raise TransientError(
                f"could not reach the chat API: {type(error).__name__}",
                url=self._settings.completions_url,
            ) from error
        self._raise_for_status(response)
        return self._parse(response, schema)

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        # Some APIs echo the key back in their error text; it must not reach a log or an error.
        detail = _excerpt(self._redact(response.text))
        if status == 429:
            raise RateLimitedError(
                "the chat API is rate limiting us",
                retry_after=self._retry_after(response.headers.get("retry-after")),
                status=status,
            )
        if status == 408 or status >= 500:
            raise TransientError("the chat API failed", status=status, body=detail)
        raise PermanentError(
            "the chat API refused the request (check base_url, model and api_key)",
            status=status,
            body=detail,
        )

    def _redact(self, text: str) -> str:
        key = self._settings.api_key
        return text.replace(key, "<redacted>") if key else text

    def _retry_after(self, header: str | None) -> float | None:
        if header is None:
            return None
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        if when.utcoffset() is None:
            return None
        return max(0.0, (when - self._clock.now()).total_seconds())

    def _parse(self, response: httpx.Response, schema: type[SchemaT]) -> tuple[SchemaT, TokenUsage]:
        text = response.text
        try:
            payload = json.loads(text)
        except ValueError:
            raise InvalidAnswerError("the response body is not JSON", text, TokenUsage()) from None
        usage = self._account(payload.get("usage") if isinstance(payload, dict) else None)
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise InvalidAnswerError("no choices[0].message.content", text, usage) from None
        if not isinstance(content, str):
            raise InvalidAnswerError("the message content is not text", text, usage)
        try:
            data = json.loads(_strip_fence(content))
        except ValueError:
            raise InvalidAnswerError("the message content is not JSON", content, usage) from None
        try:
            value = schema.model_validate(data)
        except pydantic.ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc']) or 'answer'}: {problem['msg']}"
                for problem in error.errors()
            )
            raise InvalidAnswerError(
                f"does not match {schema.__name__}: {problems}", content, usage
            ) from None
        return value, usage

    def _account(self, reported: object) -> TokenUsage:
        if not isinstance(reported, dict):
            return TokenUsage()
        prompt = reported.get("prompt_tokens")
        completion = reported.get("completion_tokens")
        prompt_tokens = prompt if isinstance(prompt, int) and prompt >= 0 else 0
        completion_tokens = completion if isinstance(completion, int) and completion >= 0 else 0
        usage = TokenUsage(
            prompt_tokens,
            completion_tokens,
            self._settings.cost(prompt_tokens, completion_tokens),
        )
        self._usage = _add(
            self._usage,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=usage.cost,
        )
        return usage

    def _on_retry(self, event: RetryEvent) -> None:
        _log.warning(
            "llm.retry",
            model=self._settings.model,
            attempt=event.attempt,
            kind=event.kind.value,
            delay=round(event.delay, 4),
            error=str(event.error),
        )


def _strip_fence(content: str) -> str:
    # Some models wrap JSON in a Markdown code fence even when asked for a bare object.
    text = content.strip()
    if text.startswith("```") and text.endswith("```"):
        text = text[3:-3]
        newline = text.find("\n")
        if newline != -1 and not text[:newline].strip().startswith("{"):
            text = text[newline + 1 :]
    return text


def _add(
    usage: LLMUsage,
    *,
    requests: int = 0,
    answers: int = 0,
    failures: int = 0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: Decimal = Decimal(0),
) -> LLMUsage:
    return LLMUsage(
        requests=usage.requests + requests,
        answers=usage.answers + answers,
        failures=usage.failures + failures,
        prompt_tokens=usage.prompt_tokens + prompt_tokens,
        completion_tokens=usage.completion_tokens + completion_tokens,
        cost=usage.cost + cost,
    )
