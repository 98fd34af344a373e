"""Pausing symbols from the config (`paused_symbols`): validated, applied at start and on reload."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ConfigError, ValidationError
from legato.trading.config_change import diff_desk_configs
from legato.trading.decision_log import DecisionLog, PipelineStatus
from legato.trading.desk import Desk
from legato.trading.desk_config import DataSettings, DeskConfig, desk_config_from_mapping
from legato.trading.ledger import OrderRole, TradingLedger

from .agents.scripted_bars import SYMBOL, trend
from .desk_harness import empty_desk_tables, paused_decisions_and_orders
from .test_desk import CONFIG

PAUSED = dataclasses.replace(CONFIG, paused_symbols=(SYMBOL,))


@pytest.fixture
def desk_url(store_url: str) -> str:
    """An empty, migrated store on each backend."""
    empty_desk_tables(store_url)
    return store_url


def test_paused_symbols_default_to_none() -> None:
    assert DeskConfig().paused_symbols == ()
    assert desk_config_from_mapping({}).paused_symbols == ()


def test_a_paused_symbol_the_desk_does_not_trade_is_refused_by_name() -> None:
    with pytest.raises(ValidationError) as raised:
        dataclasses.replace(CONFIG, paused_symbols=("ETH-USDT-PERP",))
    assert (raised.value.field, raised.value.value) == ("paused_symbols", "ETH-USDT-PERP")
    with pytest.raises(ConfigError) as from_toml:
        desk_config_from_mapping({"paused_symbols": ["BTC-USDT-PERP", "DOGE"]})
    assert from_toml.value.problems[0][:2] == ("paused_symbols", "DOGE")


def test_paused_symbols_must_be_a_list_of_strings() -> None:
    with pytest.raises(ConfigError) as raised:
        desk_config_from_mapping({"paused_symbols": "BTC-USDT-PERP"})
    assert raised.value.problems[0][:2] == ("paused_symbols", "BTC-USDT-PERP")
    parsed = desk_config_from_mapping({"paused_symbols": ["BTC-USDT-PERP"]})
    assert parsed.paused_symbols == ("BTC-USDT-PERP",)


def test_pausing_or_resuming_is_safe_at_runtime() -> None:
    change = diff_desk_configs(PAUSED, CONFIG)
    assert [c.field for c in change.changes] == ["paused_symbols"]
    assert change.applicable


async def test_a_symbol_paused_in_the_config_decides_but_never_trades(
    clock: Clock, desk_url: str
) -> None:
    desk = Desk(PAUSED, store_url=desk_url, clock=clock, bars=trend(90, drift=0.003))
    await desk.run()
    paused, orders = await paused_decisions_and_orders(desk_url, clock)
    assert paused
    assert orders == []


async def test_a_reload_without_the_symbol_resumes_its_trading(clock: Clock, desk_url: str) -> None:
    # Ten virtual seconds a bar: the reload lands between two bars.
    slower = dataclasses.replace(PAUSED, data=DataSettings(speed=30.0))
    resumed = dataclasses.replace(slower, paused_symbols=())
    desk = Desk(slower, store_url=desk_url, clock=clock, bars=trend(90, drift=0.003))
    await desk.start()
    reloaded_after: list[int] = []

    async def operator() -> None:
        while desk.bars_processed < 75:
            await clock.sleep(1)
        assert SYMBOL in (await desk.snapshot()).paused
        change = await desk.apply_config(resumed)
        assert change.applied
        reloaded_after.append(desk.bars_processed)

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        await desk.run()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        decisions = await DecisionLog(ledger.database).decisions(limit=1000)
        entries = [r for r in await ledger.orders(symbol=SYMBOL) if r.role is OrderRole.ENTRY]
    finally:
        await ledger.close()
    assert reloaded_after
    paused = [d.bar_time for d in decisions if d.status is PipelineStatus.PAUSED]
    executed = [d.bar_time for d in decisions if d.status is PipelineStatus.EXECUTED]
    # Paused before the reload (decided and stored, not acted on), trading after it.
    assert paused
    assert executed
    assert max(paused) < min(executed)
    assert entries
    assert desk.config.paused_symbols == ()
