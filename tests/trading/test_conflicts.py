"""Conflict detection and resolution: the rules, and the LLM path against a fake chat API."""

from __future__ import annotations

import random
from dataclasses import replace
from decimal import Decimal

from legato.kernel.clock import Clock
from legato.trading.agents.decision import TradingDecisionAgent
from legato.trading.agents.llm import LLMClient, LLMSettings
from legato.trading.agents.models import DecisionContext
from legato.trading.agents.regime import Regime
from legato.trading.agents.technical import Bias
from legato.trading.conflicts import (
    Conflict,
    ConflictCase,
    ConflictKind,
    LLMResolver,
    ResolutionAction,
    RuleResolver,
    detect_conflicts,
)

from .agents.fake_chat_server import FakeChatServer, Reply, completion
from .agents.scripted_bars import contexts, trend


async def uptrend_case(
    kinds: tuple[ConflictKind, ...] = (ConflictKind.WEAK_CONSENSUS,),
) -> ConflictCase:
    context: DecisionContext = contexts(trend(80, drift=0.003))[-1]
    decision = await TradingDecisionAgent().decide(context)
    conflicts = tuple(Conflict(kind, kind.value) for kind in kinds)
    return ConflictCase(decision, context.technical, context.regime, conflicts)


async def test_an_agreed_long_in_a_bull_trend_has_no_conflict() -> None:
    case = await uptrend_case(())
    assert detect_conflicts(case.decision, case.technical, case.regime) == ()


async def test_an_entry_in_a_high_volatility_regime_against_the_trend_is_flagged() -> None:
    case = await uptrend_case(())
    wild = replace(case.regime, regime=Regime.HIGH_VOLATILITY)
    bear = replace(case.regime, regime=Regime.TRENDING_BEAR)
    short_bias = replace(case.technical, bias=Bias.SHORT)
    assert [c.kind for c in detect_conflicts(case.decision, case.technical, wild)] == [
        ConflictKind.HIGH_VOLATILITY
    ]
    assert [c.kind for c in detect_conflicts(case.decision, short_bias, bear)] == [
        ConflictKind.AGAINST_BIAS,
        ConflictKind.AGAINST_REGIME,
    ]


async def test_a_weak_consensus_just_under_the_threshold_does_not_read_as_equal_to_it() -> None:
    case = await uptrend_case(())
    weak = replace(case.decision, consensus=0.596)
    [conflict] = detect_conflicts(weak, case.technical, case.regime)
    assert conflict.kind is ConflictKind.WEAK_CONSENSUS
    assert "59.6% of the weight, under 60%" in conflict.description


def test_the_rules_wait_on_a_split_vote_abort_against_the_trend_and_cut_size_otherwise() -> None:
    rules = RuleResolver()

    def action(*kinds: ConflictKind) -> tuple[ResolutionAction, Decimal]:
        resolution = rules.resolve_now([Conflict(kind, "") for kind in kinds])
        return resolution.action, resolution.size_factor

    assert action(ConflictKind.SPLIT_VOTE) == (ResolutionAction.WAIT, Decimal(0))
    assert action(ConflictKind.AGAINST_REGIME, ConflictKind.SPLIT_VOTE)[0] is ResolutionAction.ABORT
    assert action(ConflictKind.HIGH_VOLATILITY, ConflictKind.AGAINST_BIAS) == (
        ResolutionAction.MODIFY_SIZE,
        Decimal("0.25"),
    )
    assert action() == (ResolutionAction.PROCEED, Decimal(1))


async def test_the_llm_answer_is_parsed_into_a_resolution(clock: Clock) -> None:
    case = await uptrend_case()
    async with FakeChatServer() as server:
        server.script(
            completion('{"action": "wait", "size_factor": 1, "confidence": 0.9, "reasoning": "r"}')
        )
        settings = LLMSettings(base_url=server.base_url, model="m", timeout=5, deadline=5)
        async with LLMClient(settings, clock=clock, rng=random.Random(1)) as client:
            resolution = await LLMResolver(client, timeout=5).resolve(case)
    assert (resolution.action, resolution.size_factor, resolution.source) == (
        ResolutionAction.WAIT,
        Decimal(0),
        "llm",
    )
    assert resolution.fallback_reason is None
    assert "weak_consensus" in server.requests[0].body["messages"][1]["content"]


async def test_a_slow_llm_falls_back_to_the_rules(clock: Clock) -> None:
    case = await uptrend_case()
    async with FakeChatServer() as server:
        slow = completion(
            '{"action": "proceed", "size_factor": 1, "confidence": 1, "reasoning": "r"}'
        )
        server.script(Reply(slow.status, slow.body, delay=60.0))
        settings = LLMSettings(base_url=server.base_url, model="m", timeout=30, deadline=30)
        async with LLMClient(settings, clock=clock, rng=random.Random(1)) as client:
            resolution = await LLMResolver(client, timeout=2).resolve(case)
    assert (resolution.source, resolution.action) == ("rules", ResolutionAction.MODIFY_SIZE)
    assert resolution.fallback_reason == "no answer within 2s"


async def test_a_malformed_llm_answer_falls_back_to_the_rules(clock: Clock) -> None:
    case = await uptrend_case()
    async with FakeChatServer() as server:
        server.script(completion("certainly! proceed."))
        settings = LLMSettings(base_url=server.base_url, model="m", timeout=5, deadline=5)
        async with LLMClient(settings, clock=clock, rng=random.Random(1)) as client:
            resolution = await LLMResolver(client, timeout=5).resolve(case)
    assert resolution.source == "rules"
    assert resolution.fallback_reason is not None
    assert "not JSON" in resolution.fallback_reason
    assert resolution.prompt_tokens == 120
