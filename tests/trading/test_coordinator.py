"""The coordinator's decision pipeline with the real agents, risk engine and execution manager.

Runs on simulated time against the paper venue and both store backends. The market is
scripted (tests/trading/agents/scripted_bars.py): a steady uptrend, where the technical
bias is long, the regime trending bull and the rule panel votes BUY.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from decimal import Decimal

import pytest

from legato.kernel.clock import Clock
from legato.trading.agents.llm import LLMClient, LLMSettings
from legato.trading.agents.snapshot import IndicatorSnapshot
from legato.trading.conflicts import ConflictKind, LLMResolver, ResolutionAction
from legato.trading.coordinator import (
    LATENCY_BUCKETS,
    CoordinatorAgent,
    PipelineOutcome,
    RunDisposition,
    decision_key,
)
from legato.trading.decision_log import PipelineStatus
from legato.trading.desk_config import ResolverKind, StrategyConfig
from legato.trading.market_data import Bar
from legato.trading.orders import OrderType
from legato.trading.risk import RiskLimits, RiskManagementEngine

from .agents.fake_chat_server import FakeChatServer, completion, decision
from .agents.scripted_bars import SYMBOL, trend
from .desk_harness import INSTRUMENT, START, DeskParts, desk_parts, empty_desk_tables

BAR_SECONDS = 300.0
STAGES = ["signal", "analysis", "regime", "decision", "proposal", "risk", "execution", "outcome"]


@pytest.fixture
def desk_url(store_url: str) -> str:
    """An empty, migrated store on each backend."""
    empty_desk_tables(store_url)
    return store_url


async def drive(parts: DeskParts, bars: Sequence[Bar], clock: Clock) -> list[PipelineOutcome]:
    """Feed `bars` one every 5 virtual minutes, a pipeline run per bar; return the outcomes."""
    runs: list[asyncio.Task[PipelineOutcome]] = []
    async with asyncio.TaskGroup() as group:
        for bar in bars:
            parts.venue.process_bar(bar)
            snapshot = parts.coordinator.observe(bar)
            runs.append(group.create_task(parts.coordinator.run(SYMBOL, snapshot)))
            await clock.sleep(BAR_SECONDS)
    return [run.result() for run in runs]


def executed(outcomes: Sequence[PipelineOutcome]) -> list[PipelineOutcome]:
    return [o for o in outcomes if o.status is PipelineStatus.EXECUTED]


async def test_a_long_signal_becomes_a_position_protected_by_stop_loss_and_take_profit(
    clock: Clock, desk_url: str
) -> None:
    bars = trend(75, drift=0.003)
    async with desk_parts(desk_url, clock) as parts:
        outcomes = await drive(parts, bars, clock)
        trades = executed(outcomes)
        assert len(trades) == 1, [(o.disposition, o.status, o.detail) for o in outcomes]
        trade = trades[0]
        stored = await parts.decisions.decision(trade.key)
        votes = await parts.decisions.votes(trade.key)
        position = await parts.ledger.position(SYMBOL)
        chain = parts.bus.trace(trade.correlation_id or "")
    assert trade.decision is not None
    assert trade.decision.action.value == "BUY"
    assert stored is not None
    assert stored.analysis["technical"]["bias"] == "long"
    assert stored.analysis["regime"]["regime"] == "trending_bull"
    assert stored.status is PipelineStatus.EXECUTED
    assert [vote.model for vote in votes] == [vote.model for vote in trade.decision.votes]
    assert trade.risk is not None
    assert trade.risk.approved
    assert trade.execution is not None
    assert trade.execution.success
    by_type = {order.type: order for order in trade.execution.orders}
    assert {OrderType.MARKET, OrderType.STOP, OrderType.TAKE_PROFIT} <= set(by_type)
    assert stored.intent_id == trade.execution.intent_id
    assert position is not None
    assert position.stop_loss_order_id == by_type[OrderType.STOP].client_order_id
    assert position.take_profit_order_id == by_type[OrderType.TAKE_PROFIT].client_order_id
    # One correlation id from signal to order, each message caused by the one before.
    assert [message.topic.split(".")[1] for message in chain] == STAGES
    assert all(m.causation_id == p.id for p, m in itertools.pairwise(chain))
    assert chain[0].causation_id is None


async def warm_up(parts: DeskParts, clock: Clock, count: int) -> IndicatorSnapshot:
    """Feed `count` trend bars without deciding; return the last snapshot."""
    snapshot = None
    for bar in trend(count, drift=0.003):
        parts.venue.process_bar(bar)
        snapshot = parts.coordinator.observe(bar)
        await clock.sleep(1)
    assert snapshot is not None
    return snapshot


async def test_twelve_concurrent_runs_for_one_bar_complete_and_trade_once(
    clock: Clock, desk_url: str
) -> None:
    async with desk_parts(desk_url, clock) as parts:
        # A second coordinator on the same store stands for another process.
        other = CoordinatorAgent(
            instruments=[INSTRUMENT],
            strategies=[StrategyConfig(symbols=(SYMBOL,))],
            risk_engine=RiskManagementEngine([INSTRUMENT], RiskLimits()),
            executor=parts.manager,
            tracker=parts.tracker,
            decision_log=parts.decisions,
            bus=parts.bus,
            quote_asset="USDT",
            clock=clock,
        )
        bars = trend(80, drift=0.003)
        snapshot = None
        for bar in bars:
            parts.venue.process_bar(bar)
            snapshot = parts.coordinator.observe(bar)
            other.observe(bar)
        assert snapshot is not None
        last = bars[-1]

        async def market() -> None:
            # Later bars (not observed by the desk) fill the entry while the runs contend.
            for step in range(1, 20):
                await clock.sleep(5)
                parts.venue.process_bar(
                    Bar(
                        SYMBOL,
                        last.timestamp + step * (bars[1].timestamp - bars[0].timestamp),
                        last.close,
                        last.close + Decimal("0.05"),
                        last.close - Decimal("0.05"),
                        last.close,
                        Decimal(100),
                    )
                )

        async with asyncio.timeout(600):
            async with asyncio.TaskGroup() as group:
                group.create_task(market())
                runs = [
                    group.create_task((parts.coordinator if n % 2 else other).run(SYMBOL, snapshot))
                    for n in range(12)
                ]
        outcomes = [run.result() for run in runs]
        entries = [
            record
            for record in await parts.ledger.orders(symbol=SYMBOL)
            if record.order.type is OrderType.MARKET
        ]
        stored = await parts.decisions.decisions(symbol=SYMBOL)
        history = parts.bus.history("desk.>")
    decided = [o for o in outcomes if o.disposition is RunDisposition.DECIDED]
    assert len(decided) == 1
    assert decided[0].status is PipelineStatus.EXECUTED
    assert [o.disposition for o in outcomes].count(RunDisposition.DUPLICATE) == 11
    assert len(entries) == 1
    assert [record.key for record in stored] == [decision_key(SYMBOL, snapshot.timestamp)]
    # Every message of the bus history belongs to the one run, in causal order.
    assert {message.correlation_id for message in history} == {decided[0].correlation_id}
    assert all(m.causation_id == p.id for p, m in itertools.pairwise(history))


async def test_a_conflict_resolved_by_the_llm_is_applied_to_the_size_and_stored(
    clock: Clock, desk_url: str
) -> None:
    # Consensus 0.6 under a 0.9 bar: every BUY of the uptrend is a weak-consensus conflict.
    strategy = StrategyConfig(symbols=(SYMBOL,), weak_consensus=0.9, resolver=ResolverKind.LLM)
    async with FakeChatServer() as server:
        answer = '{"action": "modify_size", "size_factor": 0.25, "confidence": 0.7, '
        answer += '"reasoning": "agreement is thin: trade a quarter"}'
        server.script(*[completion(answer) for _ in range(5)])
        settings = LLMSettings(base_url=server.base_url, model="fake", timeout=5, deadline=5)
        async with LLMClient(settings, clock=clock, rng=random.Random(1)) as client:
            resolver = LLMResolver(client, timeout=5)
            async with desk_parts(
                desk_url, clock, strategy=strategy, resolvers={strategy.name: resolver}
            ) as parts:
                outcomes = await drive(parts, trend(75, drift=0.003), clock)
                trade = executed(outcomes)[0]
                conflicts = await parts.decisions.conflicts(key=trade.key)
    assert trade.resolution is not None
    assert (trade.resolution.source, trade.resolution.action) == (
        "llm",
        ResolutionAction.MODIFY_SIZE,
    )
    assert trade.resolution.size_factor == Decimal("0.25")
    assert trade.proposal is not None
    assert trade.risk is not None
    entry, stop = trade.proposal.entry_price, trade.proposal.stop_loss
    assert stop is not None
    # The loss at the stop is a quarter of the 0.5% budget (to within one lot).
    loss = trade.proposal.quantity * (entry - stop)
    budget = START * Decimal("0.005") * Decimal("0.25")
    assert budget - (entry - stop) * INSTRUMENT.lot_size <= loss <= budget
    assert len(conflicts) == 1
    assert [c.kind for c in conflicts[0].conflicts] == [ConflictKind.WEAK_CONSENSUS]
    assert conflicts[0].resolution.source == "llm"
    assert conflicts[0].resolution.prompt_tokens == 120
    assert server.requests[0].body["model"] == "fake"


async def test_a_malformed_llm_answer_falls_back_to_the_rules_and_says_why(
    clock: Clock, desk_url: str
) -> None:
    strategy = StrategyConfig(symbols=(SYMBOL,), weak_consensus=0.9, resolver=ResolverKind.LLM)
    async with FakeChatServer() as server:
        server.script(*[decision("BUY") for _ in range(5)])  # the wrong schema
        settings = LLMSettings(base_url=server.base_url, model="fake", timeout=5, deadline=5)
        async with LLMClient(settings, clock=clock, rng=random.Random(1)) as client:
            resolver = LLMResolver(client, timeout=5)
            async with desk_parts(
                desk_url, clock, strategy=strategy, resolvers={strategy.name: resolver}
            ) as parts:
                outcomes = await drive(parts, trend(75, drift=0.003), clock)
                trade = executed(outcomes)[0]
                conflicts = await parts.decisions.conflicts(key=trade.key)
    stored = conflicts[0].resolution
    assert (stored.source, stored.action, stored.size_factor) == (
        "rules",
        ResolutionAction.MODIFY_SIZE,
        Decimal("0.5"),
    )
    assert stored.fallback_reason is not None
    assert "LLMResolutionAnswer" in stored.fallback_reason


def test_a_stage_run_is_counted_in_the_first_bucket_whose_bound_it_fits() -> None:
    from legato.trading.coordinator import _StageTimer

    samples = [0.0, 0.0005, 0.001, 0.0010001, 0.05, 0.7, 10.0, 30.0, 30.5, 1e9]
    timer = _StageTimer()
    for seconds in samples:
        timer.add(seconds)
    # The definition, spelled out: each run in the first bucket with seconds <= bound.
    expected = [0] * len(LATENCY_BUCKETS)
    for seconds in samples:
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                expected[index] += 1
                break
    assert timer.buckets == expected
    assert timer.count == len(samples)


@pytest.mark.parametrize(("level", "logged"), [("info", True), ("warning", False)])
async def test_each_decided_run_is_logged_at_info_and_only_when_info_is_on(
    clock: Clock, desk_url: str, level: str, logged: bool
) -> None:
    import io
    import json
    import logging

    import structlog

    from legato.kernel.logs import configure_logging

    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    output = io.StringIO()
    configure_logging(level, "json", output)
    try:
        async with desk_parts(desk_url, clock) as parts:
            outcomes = await drive(parts, trend(75, drift=0.003), clock)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(root_level)
    decided = [o for o in outcomes if o.disposition is RunDisposition.DECIDED]
    lines = [json.loads(line) for line in output.getvalue().splitlines()]
    logged_keys = [line["key"] for line in lines if line.get("event") == "desk_decision"]
    assert decided
    assert logged_keys == ([o.key for o in decided] if logged else [])
