"""Backtest speed: the EMA(12)/EMA(26) crossover with a 2%/4% bracket, Legato and its peers.

Run: ``python -m benchmarks.backtest``. Prints one JSON object.

Every engine runs the same strategy on the same recorded file (Binance BTC/USDT perpetual,
5-minute bars, 10,999 of them): when EMA(12) of the closes crosses above EMA(26) and the
account is flat, buy 1 BTC at the market with a stop-loss 2% and a take-profit 4% from the
signal bar's close; when it crosses back below while long, close. Fees are 4 bps per fill,
no slippage, 100,000 USDT to start. The EMAs are seeded with the simple average of their
first `period` closes in every engine (backtrader's own EMA does that; for backtesting.py
and NautilusTrader the same values are computed with Legato's EMA and fed in).

- Legato, research path: `backtest(EmaCrossover(), bars, instrument)`
  (`DirectBracketExecutor` on the paper venue, simulated clock; no risk engine, no store).
- Legato, production path: `production_backtest(...)`, the same strategy through the
  `RiskManagementEngine`, the `OrderExecutionManager` and the paper venue, with a SQLite
  store (a temporary file), as `legato backtest --strategy ema` runs it.
- Legato, full desk: `desk_backtest(DeskConfig(), bars, ...)`, the agents, coordinator,
  risk engine, execution manager and paper venue with a SQLite store, as `legato backtest`
  runs it (its own decisions, not the EMA crossover: its figures are speed only).
  `agents_alone_bars_per_cpu_second` is the floor under it: the same agents computing the
  same readings and decisions with nothing else (no bus, store, risk, execution or venue).
- Legato, desk with the EMA crossover: `desk_backtest(config, bars, strategy=EmaCrossover())`,
  the strategy in the agents' place, as `legato run --strategy ema` trades it: the desk's
  coordinator, decision log, bus and loops around the production path's risk engine,
  execution manager and venue (same settings, so the same trades: checked in the output).
- backtesting.py, backtrader, NautilusTrader: when installed (test and benchmark
  dependencies only); an engine that is missing is reported as such.

Speed is bars per second of wall time for the run itself (data already loaded and
converted; the median of `REPEATS` runs), plus bars per CPU second (median too), which is
steadier on a shared machine. Agreement: for each peer, how many of Legato's entries have
a peer entry within one bar, and the entry counts. Fill conventions differ (see
docs/backtesting.md), so exact equality is not expected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from legato.kernel.logs import configure_logging
from legato.trading.agents.decision import DecisionSettings, TradingDecisionAgent
from legato.trading.agents.indicators import EMA
from legato.trading.agents.models import DecisionContext
from legato.trading.agents.regime import RegimeDetectionAgent
from legato.trading.agents.snapshot import IndicatorSet
from legato.trading.agents.technical import TechnicalAnalysisAgent
from legato.trading.backtest import EmaCrossover, backtest
from legato.trading.backtest.desk_backtest import desk_backtest
from legato.trading.backtest.production import production_backtest
from legato.trading.backtest.runner import BacktestResult
from legato.trading.desk_config import DeskConfig
from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.market_data import Bar, default_market_data_dir, load_bars
from legato.trading.matching import MatchingRules

DATA_FILE = default_market_data_dir() / "binance_BTC-USDT-PERP_5m_2023-01.csv"
FAST, SLOW = 12, 26
STOP, TARGET = 0.02, 0.04
FEE_RATE = 0.0004
CASH = 100_000.0
QUANTITY = 1
BAR = timedelta(minutes=5)
REPEATS = 3

INSTRUMENT = Instrument(
    symbol="BTC-USDT-PERP",
    base_asset="BTC",
    quote_asset="USDT",
    tick_size=Decimal("0.1"),
    lot_size=Decimal("0.001"),
    kind=InstrumentKind.PERPETUAL,
    max_leverage=Decimal(10),
)
RULES = MatchingRules(slippage_bps=Decimal(0))


@dataclass(frozen=True, slots=True)
class EngineRun:
    """One engine's figures: timing and the entry times of its trades."""

    name: str
    version: str
    wall_seconds: float
    cpu_seconds: float
    entries: list[datetime]
    exits: list[datetime]
    net_pnl: float


Trades = tuple[list[datetime], list[datetime], float]  # entry times, exit times, net PnL


def _timed(run: Callable[[], Trades]) -> tuple[float, float, Trades]:
    walls: list[float] = []
    cpus: list[float] = []
    trades: Trades = ([], [], 0.0)
    for _ in range(REPEATS):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        trades = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), trades


def ema_series(closes: Sequence[float], period: int) -> list[float]:
    """Legato's EMA (seeded with the first `period` closes' average) over `closes`; NaN first."""
    ema = EMA(period)
    return [value if (value := ema.update(c)) is not None else float("nan") for c in closes]


def _legato_engine(version: str, run: Callable[[Path], BacktestResult]) -> EngineRun:
    """Time `run` (given a fresh directory for its store, if it keeps one) as Legato's run."""

    def once() -> Trades:
        with tempfile.TemporaryDirectory() as directory:
            closed = run(Path(directory)).trades
        net = float(sum((t.net_pnl for t in closed), Decimal(0)))
        return [t.entry_time for t in closed], [t.exit_time for t in closed], net

    wall, cpu, (entries, exits, net) = _timed(once)
    return EngineRun("legato", version, wall, cpu, entries, exits, net)


def run_legato(bars: list[Bar]) -> EngineRun:
    """The EMA crossover through Legato's runner, research path (no store: the directory goes
    unused, and making and removing it is about a thousandth of the run)."""
    return _legato_engine(
        "research path",
        lambda _: backtest(EmaCrossover(Decimal(QUANTITY)), bars, INSTRUMENT, rules=RULES),
    )


def run_legato_production(bars: list[Bar]) -> EngineRun:
    """The EMA crossover through the risk engine, execution manager and paper venue."""
    return _legato_engine(
        "production path",
        lambda directory: production_backtest(
            EmaCrossover(Decimal(QUANTITY)),
            bars,
            INSTRUMENT,
            rules=RULES,
            store=directory / "backtest.db",
        ),
    )


def run_legato_desk(bars: list[Bar]) -> EngineRun:
    """The full desk (agents, coordinator, risk, execution, venue, SQLite) on the same bars."""
    config = DeskConfig()
    symbol_bars = [dataclasses.replace(bar, symbol=config.symbols[0]) for bar in bars]
    return _legato_engine(
        "full desk",
        lambda directory: desk_backtest(config, symbol_bars, store=directory / "desk.db"),
    )


def run_legato_desk_strategy(bars: list[Bar]) -> EngineRun:
    """The EMA crossover through the desk in the agents' place, as `legato run --strategy ema`.

    The same risk engine, execution manager and paper venue as the production path, with the
    desk's coordinator, decision log, bus and supervised loops around them; the venue's
    settings are the benchmark's (no slippage), so the trades are the production path's.
    """
    default = DeskConfig()
    config = dataclasses.replace(
        default,
        instruments=(INSTRUMENT,),
        venue=dataclasses.replace(default.venue, slippage_bps=Decimal(0)),
    )
    return _legato_engine(
        "desk, EMA crossover",
        lambda directory: desk_backtest(
            config, bars, store=directory / "desk.db", strategy=EmaCrossover(Decimal(QUANTITY))
        ),
    )


def run_desk_agents_alone(bars: list[Bar]) -> float:
    """Bars per CPU second of the desk's agents alone: the floor under the full desk's cost.

    What the coordinator computes on every bar, built as it builds it for the default
    config's first strategy: the indicators, the technical and regime readings and the
    six-model decision. No bus, store, risk engine, execution, venue or event-loop turns:
    whatever the rest of the desk costs comes on top of this.
    """
    config = DeskConfig()
    strategy, instrument = config.strategies[0], config.instruments[0]
    symbol = instrument.symbol
    symbol_bars = [dataclasses.replace(bar, symbol=symbol) for bar in bars]
    settings = DecisionSettings(
        min_consensus=strategy.min_consensus,
        stop_atr=strategy.stop_atr,
        target_atr=strategy.target_atr,
        tick_size=instrument.tick_size,
    )

    async def decide_all() -> int:
        indicators = IndicatorSet(symbol)
        technical_agent = TechnicalAnalysisAgent(symbol)
        regime_agent = RegimeDetectionAgent(symbol)
        agent = TradingDecisionAgent(None, settings)
        decided = 0
        for bar in symbol_bars:
            snapshot = indicators.update(bar)
            technical = technical_agent.analyze(snapshot)
            regime = regime_agent.analyze(snapshot)
            if technical is None or regime is None:
                continue
            context = DecisionContext(
                symbol=symbol,
                timestamp=snapshot.timestamp,
                indicators=snapshot,
                technical=technical,
                regime=regime,
            )
            await agent.decide(context)
            decided += 1
        return decided

    cpus: list[float] = []
    for _ in range(REPEATS):
        gc.collect()
        cpu = time.process_time()
        asyncio.run(decide_all())
        cpus.append(time.process_time() - cpu)
    return len(bars) / statistics.median(cpus)


def _frame(bars: list[Bar]) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {
            "Open": [float(b.open) for b in bars],
            "High": [float(b.high) for b in bars],
            "Low": [float(b.low) for b in bars],
            "Close": [float(b.close) for b in bars],
            "Volume": [float(b.volume) for b in bars],
        },
        index=pd.DatetimeIndex([b.timestamp for b in bars]).tz_convert(None),
    )


def run_backtesting_py(bars: list[Bar]) -> EngineRun | str:
    """The same strategy on backtesting.py (indicators precomputed, as it prefers)."""
    # backtesting.py draws a tqdm progress bar on stderr; this run has no one to show it to.
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        import backtesting
        from backtesting import Backtest, Strategy
    except ImportError:
        return "not installed"
    frame = _frame(bars)

    class EmaCross(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            self.fast = self.I(ema_series, self.data.Close, FAST)
            self.slow = self.I(ema_series, self.data.Close, SLOW)
            self.above: bool | None = None

        def next(self) -> None:
            fast, slow = self.fast[-1], self.slow[-1]
            if fast != fast or slow != slow:  # NaN: still warming up
                return
            above, before = fast > slow, self.above
            self.above = above
            # The stop-loss and take-profit are orders too; only a pending entry blocks.
            if before is None or above == before or any(not o.is_contingent for o in self.orders):
                return
            close = self.data.Close[-1]
            if above and not self.position:
                self.buy(size=QUANTITY, sl=close * (1 - STOP), tp=close * (1 + TARGET))
            elif not above and self.position.is_long:
                self.position.close()

    def once() -> Trades:
        engine = Backtest(frame, EmaCross, cash=CASH, commission=FEE_RATE)
        closed = engine.run()["_trades"]
        return (
            [t.to_pydatetime().replace(tzinfo=UTC) for t in closed["EntryTime"]],
            [t.to_pydatetime().replace(tzinfo=UTC) for t in closed["ExitTime"]],
            float(closed["PnL"].sum()),
        )

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wall, cpu, (entries, exits, net) = _timed(once)
    return EngineRun("backtesting.py", backtesting.__version__, wall, cpu, entries, exits, net)


def run_backtrader(bars: list[Bar]) -> EngineRun | str:
    """The same strategy on backtrader (its own SMA-seeded EMA, bracket orders)."""
    try:
        import backtrader as bt
    except ImportError:
        return "not installed"
    frame = _frame(bars)

    class EmaCross(bt.Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            self.fast = bt.ind.EMA(period=FAST)
            self.slow = bt.ind.EMA(period=SLOW)
            self.above: bool | None = None
            self.bracket: list[Any] = []
            self.entries: list[datetime] = []
            self.exits: list[datetime] = []
            self.net_pnl = 0.0

        def notify_order(self, order: Any) -> None:
            # Notifications carry a copy of the order: compare references, not objects.
            if (
                order.status == order.Completed
                and self.bracket
                and order.ref == self.bracket[0].ref
            ):
                self.entries.append(bt.num2date(order.executed.dt).replace(tzinfo=UTC))

        def notify_trade(self, trade: Any) -> None:
            if trade.isclosed:
                self.exits.append(bt.num2date(trade.dtclose).replace(tzinfo=UTC))
                self.net_pnl += trade.pnlcomm

        def next(self) -> None:
            fast, slow = self.fast[0], self.slow[0]
            above, before = fast > slow, self.above
            self.above = above
            if before is None or above == before:
                return
            if self.bracket and self.bracket[0].alive():
                return  # the entry is still pending
            close = self.data.close[0]
            if above and not self.position:
                self.bracket = self.buy_bracket(
                    size=QUANTITY,
                    exectype=bt.Order.Market,
                    stopprice=close * (1 - STOP),
                    limitprice=close * (1 + TARGET),
                )
            elif not above and self.position.size > 0:
                for order in self.bracket[1:]:
                    if order.alive():
                        self.cancel(order)
                self.close()

    def once() -> Trades:
        cerebro = bt.Cerebro(stdstats=False)
        cerebro.adddata(bt.feeds.PandasData(dataname=frame))
        cerebro.addstrategy(EmaCross)
        cerebro.broker.setcash(CASH)
        cerebro.broker.setcommission(commission=FEE_RATE)
        [strategy] = cerebro.run()
        # Entries still open at the end have no exit: count closed round trips only.
        closed = len(strategy.exits)
        return list(strategy.entries[:closed]), list(strategy.exits), strategy.net_pnl

    wall, cpu, (entries, exits, net) = _timed(once)
    return EngineRun("backtrader", bt.__version__, wall, cpu, entries, exits, net)


def run_nautilus(bars: list[Bar]) -> EngineRun | str:
    """The same strategy on NautilusTrader: market entry, stop-market, market-if-touched target."""
    try:
        import nautilus_trader
        from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
        from nautilus_trader.config import LoggingConfig
        from nautilus_trader.model.currencies import USDT
        from nautilus_trader.model.data import BarType
        from nautilus_trader.model.enums import AccountType, OmsType, OrderSide, OrderType
        from nautilus_trader.model.identifiers import TraderId, Venue
        from nautilus_trader.model.instruments import CryptoPerpetual
        from nautilus_trader.model.objects import Money
        from nautilus_trader.persistence.wranglers import BarDataWrangler
        from nautilus_trader.test_kit.providers import TestInstrumentProvider
        from nautilus_trader.trading.strategy import Strategy
    except ImportError:
        return "not installed"
    definition = CryptoPerpetual.to_dict(TestInstrumentProvider.btcusdt_perp_binance())
    definition.update(maker_fee=str(FEE_RATE), taker_fee=str(FEE_RATE))
    instrument = CryptoPerpetual.from_dict(definition)
    bar_type = BarType.from_str(f"{instrument.id}-5-MINUTE-LAST-EXTERNAL")
    nautilus_bars = BarDataWrangler(bar_type, instrument).process(
        _frame(bars).rename(columns=str.lower)
    )

    class EmaCross(Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.fast, self.slow = EMA(FAST), EMA(SLOW)
            self.above: bool | None = None
            self.entry: Any = None

        def on_start(self) -> None:
            self.subscribe_bars(bar_type)

        def on_bar(self, bar: Any) -> None:
            close = bar.close.as_double()
            fast, slow = self.fast.update(close), self.slow.update(close)
            if fast is None or slow is None:
                return
            above, before = fast > slow, self.above
            self.above = above
            if before is None or above == before:
                return
            pending = self.entry is not None and not self.entry.is_closed
            if above and self.portfolio.is_flat(instrument.id) and not pending:
                bracket = self.order_factory.bracket(
                    instrument_id=instrument.id,
                    order_side=OrderSide.BUY,
                    quantity=instrument.make_qty(QUANTITY),
                    sl_trigger_price=instrument.make_price(close * (1 - STOP)),
                    # A triggered market order, as Legato's take-profit (a resting limit
                    # would fill as a maker, at the limit).
                    tp_order_type=OrderType.MARKET_IF_TOUCHED,
                    tp_trigger_price=instrument.make_price(close * (1 + TARGET)),
                )
                self.entry = bracket.first
                self.submit_order_list(bracket)
            elif not above and self.portfolio.is_net_long(instrument.id):
                self.cancel_all_orders(instrument.id)
                self.close_all_positions(instrument.id)

    walls: list[float] = []
    cpus: list[float] = []
    report: Any = None
    for _ in range(REPEATS):
        engine = BacktestEngine(
            config=BacktestEngineConfig(
                trader_id=TraderId("BENCH-001"), logging=LoggingConfig(bypass_logging=True)
            )
        )
        engine.add_venue(
            venue=Venue("BINANCE"),
            oms_type=OmsType.NETTING,
            account_type=AccountType.MARGIN,
            starting_balances=[Money(CASH, USDT)],
        )
        engine.add_instrument(instrument)
        engine.add_data(nautilus_bars)
        engine.add_strategy(EmaCross())
        gc.collect()
        started, started_cpu = time.perf_counter(), time.process_time()
        engine.run()  # only the run is timed, as for the other engines
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - started_cpu)
        report = engine.trader.generate_positions_report()
        engine.dispose()
    closed = report[report["ts_closed"].notna()]
    # Nautilus takes a bar's timestamp as its close, so a fill at a bar's open carries the
    # timestamp of the bar before; one bar later is the same bar in Legato's labels.
    entries = [t.to_pydatetime() + BAR for t in closed["ts_opened"]]
    exits = [t.to_pydatetime() + BAR for t in closed["ts_closed"]]
    net = sum(float(str(p).split()[0]) for p in closed["realized_pnl"])
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return EngineRun("nautilus_trader", nautilus_trader.__version__, wall, cpu, entries, exits, net)


def _matched(ours: list[datetime], theirs: list[datetime], tolerance: timedelta) -> int:
    """How many of `ours` pair off with a distinct one of `theirs` within `tolerance`."""
    pool = sorted(theirs)
    used: set[int] = set()
    for moment in ours:
        for index, other in enumerate(pool):
            if index not in used and abs(other - moment) <= tolerance:
                used.add(index)
                break
    return len(used)


def agreement(ours: EngineRun, theirs: EngineRun) -> dict[str, object]:
    """Closed-trade counts, entries and exits paired within one bar (and on the same bar)."""
    return {
        "legato_trades": len(ours.entries),
        "peer_trades": len(theirs.entries),
        "entries_same_bar": _matched(ours.entries, theirs.entries, timedelta(0)),
        "entries_within_one_bar": _matched(ours.entries, theirs.entries, BAR),
        "exits_same_bar": _matched(ours.exits, theirs.exits, timedelta(0)),
        "exits_within_one_bar": _matched(ours.exits, theirs.exits, BAR),
        "legato_net_pnl": round(ours.net_pnl, 2),
        "peer_net_pnl": round(theirs.net_pnl, 2),
    }


def _figures(run: EngineRun, bars: int) -> dict[str, object]:
    return {
        "version": run.version,
        "closed_trades": len(run.entries),
        "net_pnl": round(run.net_pnl, 2),
        "wall_seconds": round(run.wall_seconds, 4),
        "bars_per_second": round(bars / run.wall_seconds),
        "bars_per_cpu_second": round(bars / run.cpu_seconds) if run.cpu_seconds else None,
    }


def main() -> None:
    """Run every engine and print one JSON object."""
    # The store's and the desk's logs would only measure the terminal.
    configure_logging("warning", "console")
    bars = list(load_bars(DATA_FILE))
    legato = run_legato(bars)
    production = run_legato_production(bars)
    desk = run_legato_desk(bars)
    desk_strategy = run_legato_desk_strategy(bars)
    agents_alone = run_desk_agents_alone(bars)
    peers: dict[str, object] = {}
    agreements: dict[str, object] = {}
    runners: dict[str, Callable[[list[Bar]], EngineRun | str]] = {
        "backtesting.py": run_backtesting_py,
        "backtrader": run_backtrader,
        "nautilus_trader": run_nautilus,
    }
    for name, runner in runners.items():
        outcome = runner(bars)
        if isinstance(outcome, str):
            peers[name] = {"skipped": outcome}
            continue
        peers[name] = _figures(outcome, len(bars))
        agreements[name] = agreement(legato, outcome)
    print(
        json.dumps(
            {
                "benchmark": "backtest",
                "data": DATA_FILE.name,
                "bars": len(bars),
                "strategy": f"EMA({FAST})/EMA({SLOW}) crossover, long only, "
                f"{STOP:.0%} stop-loss, {TARGET:.0%} take-profit, {QUANTITY} BTC",
                "costs": {"fee_rate": FEE_RATE, "slippage_bps": 0},
                "legato": {
                    **_figures(legato, len(bars)),
                    "path": "research: DirectBracketExecutor on the paper venue, simulated clock",
                },
                "legato_production": {
                    **_figures(production, len(bars)),
                    "path": "production: risk engine, execution manager, paper venue, SQLite",
                    "trades_also_on_research_path": _matched(
                        production.entries, legato.entries, timedelta(0)
                    ),
                    "goal_bars_per_second": 120_000,
                },
                "legato_desk": {
                    **_figures(desk, len(bars)),
                    "path": "full desk: agents, coordinator, risk engine, execution manager, "
                    "paper venue, SQLite (its own strategy)",
                    "goal_bars_per_second": 20_000,
                    "agents_alone_bars_per_cpu_second": round(agents_alone),
                },
                "legato_desk_strategy": {
                    **_figures(desk_strategy, len(bars)),
                    "path": "the desk with the EMA crossover in the agents' place (legato run "
                    "--strategy ema): coordinator, decision log, bus, supervised loops, risk "
                    "engine, execution manager, paper venue, SQLite",
                    "same_trades_as_production_path": (
                        desk_strategy.entries,
                        desk_strategy.exits,
                        desk_strategy.net_pnl,
                    )
                    == (production.entries, production.exits, production.net_pnl),
                },
                "peers": peers,
                "agreement": agreements,
                "goal_bars_per_second": 120_000,
                "python": sys.version.split()[0],
                "machine": platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
