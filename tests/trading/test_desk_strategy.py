"""A strategy of the user's on the desk: the same trades as the production path, stored,
announced and protected as the agents' trades are, and a failing strategy alerted."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.trading.alerts import AlertCode
from legato.trading.backtest import EmaCrossover, production_backtest
from legato.trading.backtest.desk_backtest import desk_backtest
from legato.trading.coordinator import RunDisposition
from legato.trading.decision_log import DecisionLog, DecisionRecord, PipelineStatus
from legato.trading.desk import STOP_GRACE_SECONDS, Desk
from legato.trading.desk_config import DataSettings, DataSource, DeskConfig
from legato.trading.ledger import LedgerOrder, OrderRole, TradingLedger
from legato.trading.market_data import Bar, default_market_data_dir, load_bars
from legato.trading.orders import OrderStatus, OrderType
from legato.trading.positions import Position
from legato.trading.proposals import TradeProposal
from legato.trading.strategy import StrategyContext, strategy_label

from .agents.scripted_bars import SYMBOL, trend
from .backtest.scripted_strategy import Action, ScriptedStrategy, buy, close
from .desk_harness import INSTRUMENT, desk_parts, empty_desk_tables, scripted_desk_config

# A bar a virtual second, as in the desk's own tests.
CONFIG = scripted_desk_config(speed=300.0)
BTC_FILE = default_market_data_dir() / "binance_BTC-USDT-PERP_5m_2023-01.csv"
STAGES = ["signal", "decision", "proposal", "risk", "execution", "outcome"]


@pytest.fixture
def desk_url(store_url: str) -> str:
    """An empty, migrated store on each backend."""
    empty_desk_tables(store_url)
    return store_url


class Watching(EmaCrossover):
    """The EMA crossover, noting what its context showed on every bar."""

    def __init__(self) -> None:
        super().__init__(Decimal("0.5"))
        self.seen: list[tuple[object, ...]] = []

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> None:
        self.seen.append((bar.timestamp, ctx.position, ctx.pending, ctx.equity))
        super().on_bar(bar, ctx)


def test_a_strategy_makes_the_same_trades_on_the_desk_as_on_the_production_path(
    tmp_path: Path,
) -> None:
    # `legato run --strategy` trades through the desk, `legato backtest --strategy` through
    # the production path: on the same bars and settings, the two agree to the last decimal.
    bars = list(load_bars(BTC_FILE))[:2_000]
    config = DeskConfig()
    venue = config.venue
    produced, desked = Watching(), Watching()
    production = production_backtest(
        produced,
        bars,
        config.instrument(SYMBOL_OF_FILE),
        store=tmp_path / "production.db",
        initial_cash=venue.starting_balance,
        rules=venue.matching_rules(),
        limits=config.risk,
        seed=config.data.seed,
    )
    desk = desk_backtest(config, bars, store=tmp_path / "desk.db", strategy=desked)
    assert len(production.trades) == 27
    assert desk.trades == production.trades
    assert desk.refusals == production.refusals
    assert len(desk.refusals) == 5
    assert desk.equity == production.equity
    # Position, pending proposal and equity, as the strategy saw them on each of the bars.
    assert len(desked.seen) == len(bars)
    assert desked.seen == produced.seen


SYMBOL_OF_FILE = "BTC-USDT-PERP"


def test_a_strategy_that_raises_in_a_desk_backtest_ends_it_naming_the_bar(
    tmp_path: Path,
) -> None:
    def fail(bar: Bar, ctx: StrategyContext) -> object:
        raise ZeroDivisionError("division by zero")

    bars = list(load_bars(BTC_FILE))[:10]
    with pytest.raises(ZeroDivisionError) as raised:
        desk_backtest(
            DeskConfig(), bars, store=tmp_path / "desk.db", strategy=ScriptedStrategy({4: fail})
        )
    assert raised.value.__notes__ == [f"raised by the strategy on the bar of {bars[4].timestamp}"]


async def test_a_strategys_proposal_is_stored_announced_risk_checked_and_executed(
    clock: Clock, desk_url: str
) -> None:
    bars = trend(6, drift=0.003)
    proposals: list[TradeProposal] = []
    ctx = StrategyContext(INSTRUMENT, proposals.append, strategy_id="mine")
    async with desk_parts(desk_url, clock) as parts:
        for bar in bars[:3]:
            parts.venue.process_bar(bar)
            await clock.sleep(1)
        decided = bars[2]
        signal = await parts.coordinator.publish_bar(decided)
        ctx.begin_bar(decided)
        ctx.buy(
            Decimal(1),
            stop_loss=decided.close * Decimal("0.98"),
            take_profit=decided.close * Decimal("0.04") + decided.close,
        )
        run = asyncio.create_task(
            parts.coordinator.run_proposal(
                proposals[0], bar_time=decided.timestamp, signal=signal, source="mine:Mine"
            )
        )
        for bar in bars[3:]:
            await clock.sleep(1)
            parts.venue.process_bar(bar)
        outcome = await run
        again = await parts.coordinator.run_proposal(
            proposals[0], bar_time=decided.timestamp, signal=signal, source="mine:Mine"
        )
        stored = await parts.decisions.decision(outcome.key)
        votes = await parts.decisions.votes(outcome.key)
        position = await parts.ledger.position(SYMBOL)
        chain = parts.bus.trace(signal.correlation_id)
    assert outcome.status is PipelineStatus.EXECUTED, outcome.detail
    assert outcome.key == f"{SYMBOL}@{decided.timestamp.isoformat()}"
    assert outcome.decision is None
    assert outcome.proposal is not None
    assert outcome.proposal.correlation_id == signal.correlation_id
    assert outcome.execution is not None
    assert outcome.execution.success
    assert again.disposition is RunDisposition.DUPLICATE
    assert stored is not None
    assert stored.status is PipelineStatus.EXECUTED
    assert stored.strategy == "mine:Mine"
    assert stored.action.value == "BUY"
    assert stored.reasoning.startswith("mine:Mine asked to buy 1 at the market (stop ")
    assert stored.analysis == {"strategy": "mine:Mine"}
    assert stored.intent_id == outcome.execution.intent_id
    assert votes == []
    assert position is not None
    assert position.quantity == Decimal(1)
    by_type = {order.type: order for order in outcome.execution.orders}
    assert position.stop_loss_order_id == by_type[OrderType.STOP].client_order_id
    assert position.take_profit_order_id == by_type[OrderType.TAKE_PROFIT].client_order_id
    # One correlation id from the bar's signal to the order, each caused by the one before.
    assert [message.topic.split(".")[1] for message in chain] == STAGES
    assert all(m.causation_id == p.id for p, m in itertools.pairwise(chain))


async def test_a_strategy_trades_on_the_running_desk_and_closes_what_it_opened(
    clock: Clock, desk_url: str
) -> None:
    strategy = ScriptedStrategy({3: buy("1"), 8: close()})
    desk = Desk(
        CONFIG,
        store_url=desk_url,
        clock=clock,
        bars=trend(12, drift=0.001),
        strategies={SYMBOL: strategy},
    )
    assert desk.strategies == {SYMBOL: strategy_label(strategy)}
    await desk.run()
    decisions, orders, closed = await stored(desk_url, clock)
    assert [(d.action.value, d.status) for d in decisions] == [
        ("BUY", PipelineStatus.EXECUTED),
        ("CLOSE", PipelineStatus.CLOSE_REQUESTED),
    ]
    assert {d.strategy for d in decisions} == {strategy_label(strategy)}
    # It saw its position from the bar that filled the entry to the bar that filled the close.
    assert strategy.positions == [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    assert len(closed) == 1
    roles = {record.role: record.order.status for record in orders}
    assert roles[OrderRole.CLOSE] is OrderStatus.FILLED
    assert roles[OrderRole.STOP_LOSS] is OrderStatus.CANCELLED
    assert roles[OrderRole.TAKE_PROFIT] is OrderStatus.CANCELLED


async def stored(
    url: str, clock: Clock
) -> tuple[list[DecisionRecord], list[LedgerOrder], list[Position]]:
    """After a run: its decisions (oldest first), its orders and its closed positions."""
    ledger = await TradingLedger.open(url, upgrade=False, clock=clock)
    try:
        decisions = await DecisionLog(ledger.database).decisions()
        return (
            sorted(decisions, key=lambda d: d.key),
            await ledger.orders(symbol=SYMBOL),
            await ledger.closed_positions(),
        )
    finally:
        await ledger.close()


def failing_on(*indexes: int) -> dict[int, Action]:
    def fail(bar: Bar, ctx: StrategyContext) -> object:
        raise KeyError("close")

    return dict.fromkeys(indexes, fail)


async def test_a_failing_strategy_is_alerted_once_a_run_of_failures_and_the_desk_trades_on(
    clock: Clock, desk_url: str
) -> None:
    # Bars 2-4 fail (one alert), bar 5 succeeds, bar 7 fails again (a second alert), and
    # the trade asked for on bar 6 is made all the same.
    strategy = ScriptedStrategy({**failing_on(2, 3, 4, 7), 6: buy("1")})
    desk = Desk(
        CONFIG,
        store_url=desk_url,
        clock=clock,
        bars=trend(10, drift=0.001),
        strategies={SYMBOL: strategy},
    )
    await desk.run()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        alerts = await ledger.alerts()
        position = await ledger.position(SYMBOL)
    finally:
        await ledger.close()
    failed = [alert for alert in alerts if alert.code is AlertCode.STRATEGY_FAILED]
    assert [alert.level.value for alert in failed] == ["high", "high"]
    bars = trend(10, drift=0.001)
    assert [alert.message for alert in failed] == [
        f"{strategy_label(strategy)} raised KeyError: 'close' on the bar of "
        f"{bars[index].timestamp.isoformat()}; that bar's trades were not asked for (later "
        "failures are logged, and alerted again after a bar that succeeds)"
        for index in (2, 7)
    ]
    assert {alert.symbol for alert in failed} == {SYMBOL}
    assert len(strategy.seen) == 10
    assert position is not None


async def test_a_paused_symbol_stores_a_strategys_proposals_and_trades_none(
    clock: Clock, desk_url: str
) -> None:
    def twice(bar: Bar, ctx: StrategyContext) -> object:
        buy("1")(bar, ctx)
        return buy("2")(bar, ctx)

    bars = trend(6, drift=0.001)
    desk = Desk(
        CONFIG,
        store_url=desk_url,
        clock=clock,
        bars=bars,
        strategies={SYMBOL: ScriptedStrategy({2: twice})},
    )
    await desk.start()
    desk.pause(SYMBOL)
    await desk.run()
    decisions, orders, _ = await stored(desk_url, clock)
    key = f"{SYMBOL}@{bars[2].timestamp.isoformat()}"
    assert [(d.key, d.status, d.entry is not None) for d in decisions] == [
        (key, PipelineStatus.PAUSED, True),
        (f"{key}#2", PipelineStatus.PAUSED, True),
    ]
    assert [d.reasoning.split(" at the market")[0].split(" asked to ")[1] for d in decisions] == [
        "buy 1",
        "buy 2",
    ]
    assert orders == []


async def test_a_restarted_desk_shows_the_strategy_the_position_it_holds(
    clock: Clock, desk_url: str
) -> None:
    # The strategy's own state starts afresh; what the account holds comes from the store.
    bars = trend(12, drift=0.001)
    first = ScriptedStrategy({2: buy("1")})
    await Desk(
        CONFIG, store_url=desk_url, clock=clock, bars=bars[:6], strategies={SYMBOL: first}
    ).run()
    second = ScriptedStrategy({})
    await Desk(
        CONFIG, store_url=desk_url, clock=clock, bars=bars[6:], strategies={SYMBOL: second}
    ).run()
    assert first.positions == [0, 0, 0, 1, 1, 1]
    assert second.positions == [1] * 6


def test_strategies_for_symbols_the_desk_does_not_trade_or_without_on_bar_are_refused() -> None:
    with pytest.raises(ValidationError) as unknown:
        Desk(CONFIG, store_url="sqlite:///unused.db", strategies={"ETH-USDT": ScriptedStrategy({})})
    with pytest.raises(ValidationError) as shapeless:
        Desk(CONFIG, store_url="sqlite:///unused.db", strategies={SYMBOL: object()})
    assert unknown.value.field == "strategies"
    assert unknown.value.value == "ETH-USDT"
    assert shapeless.value.field == f"strategies[{SYMBOL!r}]"
    assert "on_bar(bar, ctx)" in str(shapeless.value)


BUY_AT = """
from collections.abc import Iterator
from decimal import Decimal


class BuyAt:
    def __init__(self, at: int = 0, quantity: Decimal = Decimal("1")) -> None:
        self.at, self.quantity, self.bars = at, quantity, 0

    def on_bar(self, bar, ctx) -> None:
        self.bars += 1
        if self.bars == self.at:
            ctx.buy(self.quantity, stop_loss=bar.close * Decimal("0.98"),
                    take_profit=bar.close * Decimal("1.04"))
"""


@pytest.fixture
def buy_at_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`buy_at.py` in the working directory, where a config's `code` is looked for first."""
    (tmp_path / "buy_at.py").write_text(BUY_AT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield "buy_at"
    sys.modules.pop("buy_at", None)


def with_code(code: str, *params: tuple[str, str]) -> DeskConfig:
    strategy = dataclasses.replace(CONFIG.strategies[0], code=code, params=params)
    return dataclasses.replace(CONFIG, strategies=(strategy,))


async def test_a_strategy_the_config_names_trades_with_its_parameters(
    clock: Clock, desk_url: str, buy_at_module: str
) -> None:
    config = with_code(f"{buy_at_module}:BuyAt", ("at", "4"), ("quantity", "2"))
    desk = Desk(config, store_url=desk_url, clock=clock, bars=trend(8, drift=0.001))
    assert desk.strategies == {SYMBOL: "buy_at:BuyAt"}
    await desk.run()
    decisions, _, _ = await stored(desk_url, clock)
    assert [(d.strategy, d.status) for d in decisions] == [
        ("buy_at:BuyAt", PipelineStatus.EXECUTED)
    ]
    # The texts of `params`, converted to the types of the class's defaults.
    assert decisions[0].reasoning.startswith("buy_at:BuyAt asked to buy 2 at the market")


def test_a_strategy_given_to_the_desk_takes_the_place_of_the_one_the_config_names(
    buy_at_module: str,
) -> None:
    mine = ScriptedStrategy({})
    desk = Desk(
        with_code(f"{buy_at_module}:BuyAt"),
        store_url="sqlite:///unused.db",
        strategies={SYMBOL: mine},
    )
    assert desk.strategies == {SYMBOL: strategy_label(mine)}


@pytest.mark.parametrize(
    ("config", "field", "expected"),
    [
        (with_code("missing_module:BuyAt"), "strategies[consensus].code", "an importable module"),
        (with_code("buy_at:Nope"), "strategies[consensus].code", "buy_at to define 'Nope'"),
        (
            with_code("buy_at:BuyAt", ("at", "soon")),
            "strategies[consensus].params at",
            "a int, as its default 0",
        ),
        (
            with_code("buy_at:BuyAt", ("size", "2")),
            "strategies[consensus].params",
            "parameters BuyAt takes",
        ),
    ],
)
def test_a_strategy_the_config_names_badly_is_refused_naming_the_field(
    buy_at_module: str, config: DeskConfig, field: str, expected: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        Desk(config, store_url="sqlite:///unused.db")
    assert refused.value.field == field
    assert expected in str(refused.value)


async def test_the_agents_and_a_strategy_of_yours_trade_side_by_side_on_one_desk(
    clock: Clock, desk_url: str
) -> None:
    # The agents keep the BTC perpetual; your strategy trades a second market on the same
    # desk, store and risk engine.
    eth = dataclasses.replace(INSTRUMENT, symbol="ETH-USDT-PERP", base_asset="ETH")
    config = dataclasses.replace(
        CONFIG,
        instruments=(INSTRUMENT, eth),
        strategies=(
            CONFIG.strategies[0],
            dataclasses.replace(CONFIG.strategies[0], name="mine", symbols=(eth.symbol,)),
        ),
    )
    btc_bars = trend(80, drift=0.003)
    eth_bars = [dataclasses.replace(bar, symbol=eth.symbol) for bar in trend(80, drift=0.001)]
    mine = ScriptedStrategy({3: buy("1")})
    desk = Desk(
        config,
        store_url=desk_url,
        clock=clock,
        bars=[bar for pair in zip(btc_bars, eth_bars, strict=True) for bar in pair],
        strategies={eth.symbol: mine},
    )
    assert desk.strategies == {eth.symbol: strategy_label(mine)}
    await desk.run()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        decisions = await DecisionLog(ledger.database).decisions(limit=1_000)
        eth_closed = await ledger.closed_positions(eth.symbol)
    finally:
        await ledger.close()
    by_symbol: dict[str, list[DecisionRecord]] = {SYMBOL: [], eth.symbol: []}
    for decision in decisions:
        by_symbol[decision.symbol].append(decision)
    # Your strategy: one decision, its own, executed; the agents: a decision a bar once warm.
    assert [(d.strategy, d.status) for d in by_symbol[eth.symbol]] == [
        (strategy_label(mine), PipelineStatus.EXECUTED)
    ]
    assert {d.strategy for d in by_symbol[SYMBOL]} == {"consensus"}
    assert len(by_symbol[SYMBOL]) > 1
    assert len(mine.seen) == 80
    # Its bracket worked: the market rose 4% and the take-profit closed the position.
    (closed,) = eth_closed
    assert closed.realized_pnl > 0


async def test_a_desk_replaying_a_file_resumes_after_the_last_bar_it_matched(
    clock: Clock, desk_url: str, tmp_path: Path
) -> None:
    # Your strategy stores a decision only when it asks for a trade: a restart must carry on
    # after the last bar the venue matched, not replay bars since that decision (the open
    # position's stop-loss would be matched against bars already gone by).
    recorded = tmp_path / "bars.csv"
    recorded.write_text(
        "timestamp,open,high,low,close,volume\n"
        + "".join(
            f"{bar.timestamp.isoformat()},{bar.open},{bar.high},{bar.low},{bar.close},"
            f"{bar.volume}\n"
            for bar in trend(30, drift=0.001)
        )
    )

    def replay(count: int) -> DeskConfig:
        data = DataSettings(source=DataSource.CSV, path=str(recorded), speed=300.0, bars=count)
        return dataclasses.replace(CONFIG, data=data)

    first, second = ScriptedStrategy({2: buy("1")}), ScriptedStrategy({})
    await Desk(replay(12), store_url=desk_url, clock=clock, strategies={SYMBOL: first}).run()
    await Desk(replay(5), store_url=desk_url, clock=clock, strategies={SYMBOL: second}).run()
    bars = trend(30, drift=0.001)
    assert [bar.timestamp for bar in first.seen] == [bar.timestamp for bar in bars[:12]]
    assert [bar.timestamp for bar in second.seen] == [bar.timestamp for bar in bars[12:17]]


async def test_a_strategys_short_is_protected_and_the_kill_switch_refuses_its_next_trade(
    clock: Clock, desk_url: str
) -> None:
    def sell(bar: Bar, ctx: StrategyContext) -> object:
        return ctx.sell(
            Decimal(1),
            stop_loss=bar.close * Decimal("1.02"),
            take_profit=bar.close * Decimal("0.96"),
        )

    strategy = ScriptedStrategy({2: sell, 9: buy("1")})
    bars = trend(12, drift=-0.0005)
    desk: Desk

    def feed() -> Iterator[Bar]:
        for index, bar in enumerate(bars):
            if index == 8:
                desk.kill_switch()
            yield bar

    desk = Desk(CONFIG, store_url=desk_url, clock=clock, bars=feed(), strategies={SYMBOL: strategy})
    await desk.run()
    decisions, orders, _ = await stored(desk_url, clock)
    assert [(d.action.value, d.status) for d in decisions] == [
        ("SELL", PipelineStatus.EXECUTED),
        ("BUY", PipelineStatus.REJECTED),
    ]
    assert "kill switch" in (decisions[1].detail or "")
    # The short carried its stop-loss above and its take-profit below, both reduce-only buys.
    protective = [r.order for r in orders if r.role in (OrderRole.STOP_LOSS, OrderRole.TAKE_PROFIT)]
    assert {(o.type, o.side.value, o.reduce_only) for o in protective} == {
        (OrderType.STOP, "buy", True),
        (OrderType.TAKE_PROFIT, "buy", True),
    }
    assert strategy.positions[3] == Decimal(-1)


@pytest.mark.parametrize("stop_at_end", [True, False])
async def test_at_the_end_of_the_data_legato_run_stops_and_a_backtest_lets_runs_finish(
    clock: Clock, desk_url: str, stop_at_end: bool
) -> None:
    # A trade asked for on the last bar waits for a fill no bar will bring. `legato run`
    # (stop_at_end_of_data) stops as on Ctrl-C: the stop's grace, and the execution resumes at
    # the next start. A backtest waits for the run's own end: the entry's timeout.
    live = dataclasses.replace(CONFIG, data=DataSettings(speed=1.0))  # 300 virtual s a bar
    bars = trend(4, drift=0.001)
    desk = Desk(
        live,
        store_url=desk_url,
        clock=clock,
        bars=bars,
        strategies={SYMBOL: ScriptedStrategy({3: buy("1")})},
        stop_at_end_of_data=stop_at_end,
    )
    await desk.run()
    waited = (clock.now() - bars[-1].timestamp).total_seconds()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        (intent,) = await ledger.intents()
    finally:
        await ledger.close()
    if stop_at_end:
        assert waited < STOP_GRACE_SECONDS + 30
        assert not intent.stage.is_final  # durable: the next start resumes it
    else:
        assert waited >= 300  # the entry's timeout on simulated time
        assert intent.stage.is_final
