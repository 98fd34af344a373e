"""Changing a running desk's configuration on simulated time: what applies, what is refused."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal

import pytest

from legato.kernel.clock import Clock
from legato.trading.decision_log import DecisionLog, PipelineStatus
from legato.trading.desk import TELEMETRY_TOPIC, Desk
from legato.trading.desk_config import VenueSettings
from legato.trading.ledger import OrderRole, TradingLedger
from legato.trading.risk import ReasonCode

from .agents.scripted_bars import SYMBOL, trend
from .desk_harness import START, empty_desk_tables
from .test_desk import CONFIG

# The uptrend's one trade is decided around bar 69; the change lands well before it.
CHANGE_AT_BAR = 40


@pytest.fixture
def desk_url(store_url: str) -> str:
    """An empty, migrated store on each backend."""
    empty_desk_tables(store_url)
    return store_url


async def _at_bar(desk: Desk, clock: Clock, count: int) -> None:
    # A bar every virtual second (speed 300): check twice a bar.
    while desk.bars_processed < count:
        await clock.sleep(0.5)


async def test_a_risk_limit_lowered_at_runtime_cuts_the_next_proposal(
    clock: Clock, desk_url: str
) -> None:
    # The strategy budgets 0.5% of equity per trade; the running limit allows 1%.
    assert CONFIG.strategies[0].risk_per_trade == Decimal("0.005")
    lowered = dataclasses.replace(
        CONFIG, risk=dataclasses.replace(CONFIG.risk, max_risk_per_trade=Decimal("0.001"))
    )
    desk = Desk(CONFIG, store_url=desk_url, clock=clock, bars=trend(72, drift=0.003))
    changes = []

    async def operator() -> None:
        await _at_bar(desk, clock, CHANGE_AT_BAR)
        changes.append(await desk.apply_config(lowered))

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        await desk.run()
    [change] = changes
    assert change.applied
    assert [c.field for c in change.changes] == ["risk.max_risk_per_trade"]
    assert desk.config.risk.max_risk_per_trade == Decimal("0.001")
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        [executed] = await DecisionLog(ledger.database).decisions(status=PipelineStatus.EXECUTED)
        entries = [r for r in await ledger.orders(symbol=SYMBOL) if r.role is OrderRole.ENTRY]
    finally:
        await ledger.close()
    risk = executed.risk
    assert risk is not None
    assert risk["outcome"] == "modified"
    [cut] = [r for r in risk["reasons"] if r["code"] == ReasonCode.RISK_PER_TRADE.value]
    assert Decimal(cut["limit"]) == START * Decimal("0.001")
    proposed = Decimal(risk["proposal"]["quantity"])
    [entry] = entries
    # The order sent is the cut quantity, a fifth of what the 0.5% budget proposed.
    assert entry.order.quantity == Decimal(risk["quantity"]) < proposed
    assert entry.order.quantity <= proposed / 5


async def test_a_change_needing_a_restart_is_refused_and_changes_nothing(
    clock: Clock, desk_url: str
) -> None:
    # A tight risk limit that would cut the trade, with a venue change that needs a restart.
    mixed = dataclasses.replace(
        CONFIG,
        risk=dataclasses.replace(CONFIG.risk, max_risk_per_trade=Decimal("0.001")),
        venue=dataclasses.replace(CONFIG.venue, taker_fee_bps=Decimal(10)),
        telemetry_interval=5.0,
    )
    desk = Desk(CONFIG, store_url=desk_url, clock=clock, bars=trend(72, drift=0.003))
    changes = []

    async def operator() -> None:
        await _at_bar(desk, clock, CHANGE_AT_BAR)
        changes.append(await desk.apply_config(mixed))

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        await desk.run()
    [change] = changes
    assert not change.applied
    [refused] = change.refused
    assert (refused.field, refused.old, refused.new) == (
        "venue.taker_fee_bps",
        Decimal(4),
        Decimal(10),
    )
    assert refused.restart_reason
    assert {c.field for c in change.safe} == {"risk.max_risk_per_trade", "telemetry_interval"}
    assert desk.config is CONFIG
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        [executed] = await DecisionLog(ledger.database).decisions(status=PipelineStatus.EXECUTED)
    finally:
        await ledger.close()
    # The held-back limit never reached the risk engine: the trade went through uncut.
    assert executed.risk is not None
    assert executed.risk["outcome"] == "approved"


async def test_a_shorter_telemetry_interval_takes_effect_without_a_restart(
    clock: Clock, desk_url: str
) -> None:
    desk = Desk(CONFIG, store_url=desk_url, clock=clock, bars=[])
    await desk.start()
    try:
        await clock.sleep(1)
        before = len(desk.bus.history(TELEMETRY_TOPIC))
        change = await desk.apply_config(dataclasses.replace(CONFIG, telemetry_interval=5.0))
        await clock.sleep(52)
        after = len(desk.bus.history(TELEMETRY_TOPIC))
    finally:
        await desk.stop()
    assert change.applied
    # Every 60 s before: at most one more pass in 52 s; every 5 s now: ten of them.
    assert after - before >= 10


async def test_a_strategy_risk_budget_applies_to_the_next_decision_run(
    clock: Clock, desk_url: str
) -> None:
    halved = dataclasses.replace(
        CONFIG,
        strategies=(dataclasses.replace(CONFIG.strategies[0], risk_per_trade=Decimal("0.0025")),),
    )
    desk = Desk(CONFIG, store_url=desk_url, clock=clock, bars=trend(72, drift=0.003))

    async def operator() -> None:
        await _at_bar(desk, clock, CHANGE_AT_BAR)
        assert (await desk.apply_config(halved)).applied

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        await desk.run()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        [executed] = await DecisionLog(ledger.database).decisions(status=PipelineStatus.EXECUTED)
    finally:
        await ledger.close()
    assert executed.proposal is not None
    proposal = executed.proposal
    distance = abs(Decimal(proposal["entry_price"]) - Decimal(proposal["stop_loss"]))
    lot = Decimal("0.001")
    # No trade before this one: equity is the starting balance, sized at the new 0.25%.
    expected = (START * Decimal("0.0025") / distance / lot).to_integral_value(
        rounding="ROUND_FLOOR"
    ) * lot
    assert Decimal(proposal["quantity"]) == expected


async def test_a_stopped_desk_takes_a_safe_config_for_its_next_start(desk_url: str) -> None:
    desk = Desk(CONFIG, store_url=desk_url)
    refused = await desk.apply_config(
        dataclasses.replace(CONFIG, venue=VenueSettings(starting_balance=Decimal(1)))
    )
    applied = await desk.apply_config(dataclasses.replace(CONFIG, guard_interval=9.0))
    assert not refused.applied
    assert applied.applied
    assert desk.config.guard_interval == 9.0
