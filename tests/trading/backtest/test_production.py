"""The production path: the EMA crossover through the risk engine, execution manager and venue."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path

from legato.kernel.simulation import run_simulated
from legato.trading.backtest.ema_crossover import EmaCrossover
from legato.trading.backtest.production import ProductionOutcome, production_backtest
from legato.trading.backtest.runner import backtest
from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.ledger import TradingLedger
from legato.trading.market_data import Bar, default_market_data_dir, load_bars
from legato.trading.matching import MatchingRules
from legato.trading.positions import Position
from legato.trading.risk import RiskLimits

RECORDED = default_market_data_dir() / "binance_BTC-USDT-PERP_5m_2023-01.csv"
BTC = Instrument(
    symbol="BTC-USDT-PERP",
    base_asset="BTC",
    quote_asset="USDT",
    tick_size=Decimal("0.1"),
    lot_size=Decimal("0.001"),
    kind=InstrumentKind.PERPETUAL,
    max_leverage=Decimal(10),
)
RULES = MatchingRules(slippage_bps=Decimal(0))


def recorded(count: int) -> list[Bar]:
    return list(itertools.islice(load_bars(RECORDED), count))


def closed_positions(store: Path) -> list[Position]:
    async def read() -> list[Position]:
        ledger = await TradingLedger.open(f"sqlite:///{store}", upgrade=False)
        try:
            return await ledger.closed_positions()
        finally:
            await ledger.close()

    return run_simulated(read())


def test_every_production_trade_is_one_the_research_path_makes_too(tmp_path: Path) -> None:
    bars = recorded(1_500)
    research = backtest(EmaCrossover(), bars, BTC, rules=RULES)
    production = production_backtest(
        EmaCrossover(), bars, BTC, rules=RULES, store=tmp_path / "bt.db"
    )
    made = {(t.entry_time, t.exit_time, t.exit_reason) for t in research.trades}
    taken = [(t.entry_time, t.exit_time, t.exit_reason) for t in production.trades]
    assert len(taken) >= 5
    # The risk engine may refuse some (a losing streak's cooldown); it never invents one.
    assert set(taken) <= made


def test_the_store_books_every_trade_with_its_stop_loss(tmp_path: Path) -> None:
    bars = recorded(1_500)
    store = tmp_path / "bt.db"
    result = production_backtest(EmaCrossover(), bars, BTC, rules=RULES, store=store)
    positions = closed_positions(store)
    assert len(positions) == len(result.trades)
    assert all(position.stop_loss_order_id is not None for position in positions)
    booked = sum((p.realized_pnl - p.fees_paid for p in positions), Decimal(0))
    assert booked == sum((t.net_pnl for t in result.trades), Decimal(0))


def test_a_trade_the_risk_engine_refuses_is_never_sent(tmp_path: Path) -> None:
    bars = recorded(600)
    # The strategy's bracket is 4% over 2%: a reward-to-risk of 2, under this limit.
    strict = RiskLimits(min_reward_to_risk=Decimal(3))
    result = production_backtest(
        EmaCrossover(), bars, BTC, rules=RULES, limits=strict, store=tmp_path / "bt.db"
    )
    opening = [o for o in result.outcomes if isinstance(o, ProductionOutcome) and o.risk]
    assert opening
    assert result.trades == ()
    assert result.fills == ()
    assert all(not o.success and o.execution is None for o in opening)
    assert all("reward" in (o.reason or "") for o in opening)
    # Each refusal is in the result, for the report: when, and the rule that refused it.
    assert [r.code for r in result.refusals] == ["reward_to_risk"] * len(opening)
    assert all("reward" in r.message for r in result.refusals)
    assert [r.at for r in result.refusals] == sorted(r.at for r in result.refusals)
    assert {r.at for r in result.refusals} <= {bar.timestamp for bar in bars}
