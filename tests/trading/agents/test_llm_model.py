"""LLMDecisionModel: the LLM's vote when it answers well, the fallback's when it does not."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.kernel.retry import Jitter, RetryPolicy
from legato.trading.agents.decision import TradingDecisionAgent
from legato.trading.agents.llm import LLMClient, LLMSettings
from legato.trading.agents.llm_model import LLMDecisionAnswer, LLMDecisionModel, decision_prompt
from legato.trading.agents.models import (
    DecisionContext,
    TradeAction,
    TrendFollowingModel,
    default_models,
)
from legato.trading.positions import PositionSide

from .fake_chat_server import FakeChatServer, Reply, completion, decision
from .scripted_bars import contexts, trend

FAST_RETRY = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02, jitter=Jitter.NONE)


def uptrend() -> DecisionContext:
    return contexts(trend(150, drift=0.004))[-1]


def client_for(server: FakeChatServer, *, timeout: float = 2.0) -> LLMClient:
    return LLMClient(
        LLMSettings(
            base_url=server.base_url,
            model="fake-model",
            api_key="sk-test",
            timeout=timeout,
            deadline=max(timeout, 3.0),
            prompt_price_per_1k=Decimal(1),
            completion_price_per_1k=Decimal(2),
            retry=FAST_RETRY,
        )
    )


@pytest.mark.realtime
async def test_a_good_answer_is_the_llms_vote_with_its_cost() -> None:
    async with FakeChatServer() as server, client_for(server) as client:
        server.script(decision("SELL", 0.65, "momentum fading"))
        vote = await LLMDecisionModel(client, TrendFollowingModel()).decide(uptrend())
    assert vote.model == "llm"
    assert (vote.action, vote.confidence) == (TradeAction.SELL, 0.65)
    assert vote.reasoning == "momentum fading"
    assert vote.fallback_reason is None
    assert (vote.prompt_tokens, vote.completion_tokens) == (120, 30)
    assert vote.cost == Decimal("0.18")


@pytest.mark.realtime
@pytest.mark.parametrize(
    ("replies", "reason"),
    [
        ([completion("BUY! definitely BUY")], "not JSON"),
        ([completion('{"action": "YOLO", "confidence": 0.9, "reasoning": "x"}')], "action"),
        ([completion('{"action": "BUY", "confidence": 2, "reasoning": "x"}')], "confidence"),
        ([Reply(429, {}, headers={"retry-after": "0"})] * 2, "rate_limited"),
        ([Reply(500, {"error": "boom"})] * 2, "transient"),
        ([Reply(400, {"error": "bad model"})], "permanent"),
        ([decision("CLOSE", 0.9)], "not one of the allowed"),
    ],
)
async def test_a_wrong_or_failed_answer_falls_back_to_the_rule_model_and_says_why(
    replies: list[Reply], reason: str
) -> None:
    context = uptrend()
    async with FakeChatServer() as server, client_for(server) as client:
        server.script(*replies)
        vote = await LLMDecisionModel(client, TrendFollowingModel()).decide(context)
    expected = TrendFollowingModel().decide_now(context)
    assert vote.model == "llm"
    assert (vote.action, vote.confidence) == (expected.action, expected.confidence)
    assert vote.reasoning.startswith("trend-follower: ")
    assert vote.fallback_reason is not None
    assert reason in vote.fallback_reason


@pytest.mark.realtime
async def test_a_wrong_answer_that_was_paid_for_keeps_its_tokens_on_the_fallback_vote() -> None:
    async with FakeChatServer() as server, client_for(server) as client:
        server.script(completion("no idea", prompt_tokens=200))
        vote = await LLMDecisionModel(client, TrendFollowingModel()).decide(uptrend())
    assert vote.fallback_reason is not None
    assert vote.prompt_tokens == 200
    assert vote.cost == Decimal("0.26")


@pytest.mark.realtime
async def test_a_slow_llm_falls_back_within_the_models_timeout() -> None:
    async with FakeChatServer() as server, client_for(server) as client:
        server.script(Reply(200, decision().body, delay=2.0))
        model = LLMDecisionModel(client, TrendFollowingModel(), timeout=0.2)
        vote = await model.decide(uptrend())
    assert vote.action is TradeAction.BUY  # the trend-follower's answer in an uptrend
    assert vote.fallback_reason == "no answer within 0.2s"


@pytest.mark.realtime
async def test_the_llm_votes_in_the_panel_alongside_the_rule_models() -> None:
    async with FakeChatServer() as server, client_for(server) as client:
        server.script(decision("BUY", 0.9, "clean trend"))
        panel = [*default_models(), LLMDecisionModel(client, TrendFollowingModel())]
        result = await TradingDecisionAgent(panel).decide(uptrend())
    assert result.action is TradeAction.BUY
    llm_vote = next(vote for vote in result.votes if vote.model == "llm")
    assert llm_vote.reasoning == "clean trend"
    assert len(result.votes) == 7


def test_the_prompt_carries_the_schema_the_allowed_actions_and_the_readings() -> None:
    context = contexts(trend(150, drift=0.004), position=PositionSide.LONG)[-1]
    system, user = decision_prompt(context)
    assert system.role == "system"
    assert json.dumps(LLMDecisionAnswer.model_json_schema(), sort_keys=True) in system.content
    readings = json.loads(user.content)
    assert readings["allowed_actions"] == ["CLOSE", "HOLD"]
    assert readings["position"] == "long"
    assert readings["close"] == str(context.indicators.close_price)
    assert readings["regime"]["regime"] == "trending_bull"


async def test_a_non_positive_timeout_is_refused() -> None:
    async with LLMClient(LLMSettings(retry=FAST_RETRY)) as client:
        with pytest.raises(ValidationError):
            LLMDecisionModel(client, TrendFollowingModel(), timeout=0.0)
