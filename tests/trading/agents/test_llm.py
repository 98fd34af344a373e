"""LLMClient against a real local fake of an OpenAI-compatible server (real sockets)."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pydantic
import pytest
import structlog

from legato.kernel.errors import (
    DeadlineExceeded,
    PermanentError,
    RateLimitedError,
    TransientError,
    ValidationError,
)
from legato.kernel.retry import Jitter, RetryExhausted, RetryPolicy
from legato.trading.agents.llm import (
    ChatMessage,
    InvalidAnswerError,
    LLMClient,
    LLMSettings,
)

from .fake_chat_server import FakeChatServer, Reply, completion

pytestmark = pytest.mark.realtime

KEY = "sk-test-0123456789-secret"
FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05, jitter=Jitter.NONE)
QUESTION = [ChatMessage("system", "answer in JSON"), ChatMessage("user", "go")]


class Verdict(pydantic.BaseModel):
    """A tiny answer schema for the client tests."""

    model_config = pydantic.ConfigDict(extra="forbid")

    verdict: str
    score: float = pydantic.Field(ge=0, le=1)


def settings(server: FakeChatServer, **overrides: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "base_url": server.base_url,
        "model": "fake-model",
        "api_key": KEY,
        "timeout": 2.0,
        "deadline": 5.0,
        "prompt_price_per_1k": Decimal("0.5"),
        "completion_price_per_1k": Decimal("1.5"),
        "retry": FAST_RETRY,
    }
    values.update(overrides)
    return LLMSettings(**values)


async def test_a_good_answer_is_parsed_and_its_tokens_and_cost_accounted() -> None:
    async with FakeChatServer() as server:
        server.script(completion('{"verdict": "up", "score": 0.75}', prompt_tokens=120))
        async with LLMClient(settings(server)) as client:
            answer = await client.complete_json(QUESTION, Verdict)
            usage = client.usage
    assert answer.value == Verdict(verdict="up", score=0.75)
    assert answer.attempts == 1
    # 120 prompt tokens at 0.5 per 1k, 30 completion tokens at 1.5 per 1k.
    assert answer.usage.prompt_tokens == 120
    assert answer.usage.completion_tokens == 30
    assert answer.usage.cost == Decimal("0.105")
    assert (usage.requests, usage.answers, usage.failures) == (1, 1, 0)
    assert usage.cost == Decimal("0.105")


async def test_the_request_is_an_openai_chat_completion_with_the_key_as_bearer() -> None:
    async with FakeChatServer() as server:
        server.script(completion('{"verdict": "up", "score": 0.5}'))
        async with LLMClient(settings(server, temperature=0.2, max_tokens=99)) as client:
            await client.complete_json(QUESTION, Verdict)
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "answer in JSON"},
            {"role": "user", "content": "go"},
        ],
        "temperature": 0.2,
        "max_tokens": 99,
        "response_format": {"type": "json_object"},
    }


async def test_an_answer_in_a_markdown_fence_is_accepted() -> None:
    async with FakeChatServer() as server:
        server.script(completion('```json\n{"verdict": "down", "score": 0.1}\n```'))
        async with LLMClient(settings(server)) as client:
            answer = await client.complete_json(QUESTION, Verdict)
    assert answer.value.verdict == "down"


async def test_a_malformed_answer_is_refused_at_once_but_still_paid_for() -> None:
    async with FakeChatServer() as server:
        server.script(completion("Sure! I think it goes up.", prompt_tokens=100))
        async with LLMClient(settings(server)) as client:
            with pytest.raises(InvalidAnswerError) as raised:
                await client.complete_json(QUESTION, Verdict)
            usage = client.usage
    assert "not JSON" in raised.value.reason
    assert raised.value.usage.prompt_tokens == 100
    assert len(server.requests) == 1
    assert (usage.requests, usage.answers, usage.failures) == (1, 0, 1)
    assert usage.prompt_tokens == 100


async def test_a_schema_violating_answer_names_the_field_and_is_not_retried() -> None:
    async with FakeChatServer() as server:
        server.script(completion('{"verdict": "up", "score": 1.7}'))
        async with LLMClient(settings(server)) as client:
            with pytest.raises(InvalidAnswerError) as raised:
                await client.complete_json(QUESTION, Verdict)
    assert "score" in raised.value.reason
    assert "Verdict" in raised.value.reason
    assert len(server.requests) == 1


async def test_a_body_without_choices_is_an_invalid_answer() -> None:
    async with FakeChatServer() as server:
        server.script(Reply(body={"usage": {"prompt_tokens": 5, "completion_tokens": 0}}))
        async with LLMClient(settings(server)) as client:
            with pytest.raises(InvalidAnswerError) as raised:
                await client.complete_json(QUESTION, Verdict)
    assert "choices" in raised.value.reason
    assert raised.value.usage.prompt_tokens == 5


async def test_a_429_waits_at_least_retry_after_then_succeeds() -> None:
    async with FakeChatServer() as server:
        server.script(
            Reply(429, {"error": "slow down"}, headers={"retry-after": "0.2"}),
            completion('{"verdict": "up", "score": 0.5}'),
        )
        with structlog.testing.capture_logs() as logs:
            async with LLMClient(settings(server)) as client:
                answer = await client.complete_json(QUESTION, Verdict)
    assert answer.attempts == 2
    (retry,) = [line for line in logs if line["event"] == "llm.retry"]
    assert retry["kind"] == "rate_limited"
    assert retry["delay"] >= 0.2


async def test_a_429_that_persists_gives_up_with_the_rate_limit_and_its_hint() -> None:
    async with FakeChatServer() as server:
        limited = Reply(429, {"error": "slow down"}, headers={"retry-after": "0"})
        server.script(limited, limited, limited)
        async with LLMClient(settings(server)) as client:
            with pytest.raises(RetryExhausted) as raised:
                await client.complete_json(QUESTION, Verdict)
    assert isinstance(raised.value.last_error, RateLimitedError)
    assert raised.value.last_error.retry_after == 0.0
    assert len(server.requests) == 3


async def test_a_retry_after_date_in_the_past_means_no_wait() -> None:
    async with FakeChatServer() as server:
        limited = Reply(429, {}, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
        server.script(limited, completion('{"verdict": "up", "score": 0.5}'))
        with structlog.testing.capture_logs() as logs:
            async with LLMClient(settings(server)) as client:
                await client.complete_json(QUESTION, Verdict)
    (retry,) = [line for line in logs if line["event"] == "llm.retry"]
    assert retry["delay"] == pytest.approx(0.01)  # the policy's own backoff, nothing added


async def test_a_500_is_transient_and_retried() -> None:
    async with FakeChatServer() as server:
        server.script(Reply(500, {"error": "boom"}), completion('{"verdict": "up", "score": 0.5}'))
        async with LLMClient(settings(server)) as client:
            answer = await client.complete_json(QUESTION, Verdict)
            assert client.usage.requests == 2
    assert answer.attempts == 2


async def test_a_500_that_persists_exhausts_the_retries() -> None:
    async with FakeChatServer() as server:
        server.script(*[Reply(503, {"error": "down"})] * 3)
        async with LLMClient(settings(server)) as client:
            with pytest.raises(RetryExhausted) as raised:
                await client.complete_json(QUESTION, Verdict)
    assert isinstance(raised.value.last_error, TransientError)
    assert raised.value.last_error.context["status"] == 503
    assert len(server.requests) == 3


async def test_a_4xx_is_permanent_and_never_retried() -> None:
    async with FakeChatServer() as server:
        server.script(Reply(401, {"error": f"Incorrect API key provided: {KEY}"}))
        async with LLMClient(settings(server)) as client:
            with pytest.raises(PermanentError) as raised:
                await client.complete_json(QUESTION, Verdict)
    assert not isinstance(raised.value, InvalidAnswerError)
    assert raised.value.context["status"] == 401
    assert len(server.requests) == 1
    assert KEY not in str(raised.value)


async def test_a_slow_answer_times_out_each_attempt_and_gives_up() -> None:
    async with FakeChatServer() as server:
        slow = completion('{"verdict": "up", "score": 0.5}')
        server.script(*[Reply(200, slow.body, delay=2.0)] * 2)
        policy = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=Jitter.NONE)
        async with LLMClient(settings(server, timeout=0.2, deadline=1.0, retry=policy)) as client:
            with pytest.raises(RetryExhausted) as raised:
                await client.complete_json(QUESTION, Verdict)
    assert isinstance(raised.value.last_error, DeadlineExceeded)
    assert len(server.requests) == 2


async def test_an_unreachable_server_is_transient() -> None:
    async with FakeChatServer() as server:
        base_url = server.base_url
    # The server is closed now: nothing listens on its port.
    policy = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=Jitter.NONE)
    unreachable = LLMSettings(base_url=base_url, timeout=1.0, deadline=2.0, retry=policy)
    async with LLMClient(unreachable) as client:
        with pytest.raises(RetryExhausted) as raised:
            await client.complete_json(QUESTION, Verdict)
    assert isinstance(raised.value.last_error, TransientError)


async def test_the_key_never_reaches_a_log_line_a_repr_or_an_error() -> None:
    async with FakeChatServer() as server:
        server.script(
            Reply(500, {"error": f"upstream echoed {KEY}"}),
            completion("not json"),
        )
        config = settings(server)
        with structlog.testing.capture_logs() as logs:
            async with LLMClient(config, rng=random.Random(1)) as client:
                with pytest.raises(InvalidAnswerError) as raised:
                    await client.complete_json(QUESTION, Verdict)
    assert KEY not in repr(config)
    assert KEY not in str(raised.value)
    assert logs
    assert KEY not in json.dumps(logs, default=str)


def test_a_jittered_policy_needs_a_seeded_generator() -> None:
    jittered = LLMSettings(retry=RetryPolicy(jitter=Jitter.FULL))
    with pytest.raises(ValidationError) as raised:
        LLMClient(jittered)
    assert raised.value.field == "rng"


@pytest.mark.parametrize(
    "overrides",
    [
        {"base_url": "ftp://example.com"},
        {"base_url": ""},
        {"base_url": "http://[::1"},
        {"model": ""},
        {"timeout": 0.0},
        {"timeout": 5.0, "deadline": 1.0},
        {"temperature": 3.0},
        {"max_tokens": 0},
        {"prompt_price_per_1k": Decimal(-1)},
    ],
)
def test_bad_llm_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LLMSettings(**overrides)


def test_cost_is_priced_per_thousand_tokens() -> None:
    config = LLMSettings(
        prompt_price_per_1k=Decimal("0.15"), completion_price_per_1k=Decimal("0.6")
    )
    assert config.cost(2000, 500) == Decimal("0.6")
