"""The backtest runner over scripted bars and the recorded BTC/USDT 5-minute file.

- Orders asked for on a bar fill only on later bars, and the strategy is called once per
  bar, in time order, never with a bar ahead of the one being matched.
- No look-ahead: replacing every bar after a cut with a different future changes nothing
  before the cut (decisions, trades, equity).
- Deterministic: two runs over the recorded file, one in a fresh interpreter, write the same
  report, byte for byte.
- The PnL equals a recomputation from the fills, and the venue's own balance.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from legato.kernel.errors import ValidationError
from legato.kernel.simulation import SimulatedClock, run_simulated
from legato.trading.backtest.ema_crossover import EmaCrossover
from legato.trading.backtest.executor import BracketOutcome, DirectBracketExecutor
from legato.trading.backtest.report import BacktestReport
from legato.trading.backtest.report_files import REPORT_FILES, write_report
from legato.trading.backtest.runner import BacktestResult, backtest, run_backtest
from legato.trading.backtest.trades import ClosedTrade
from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.market_data import Bar, default_market_data_dir, load_bars
from legato.trading.orders import OrderSide
from legato.trading.paper_venue import PaperVenue
from legato.trading.positions import Position, PositionSide
from legato.trading.strategy import StrategyContext

from ..conftest import BarMaker
from .scripted_strategy import ScriptedStrategy, buy

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
# Written by a fresh interpreter, to show the bytes do not depend on process state.
REPORT_SCRIPT = """
import sys
from legato.trading.backtest import BacktestReport, EmaCrossover, backtest, write_report
from legato.trading.market_data import load_bars
from tests.trading.backtest.test_runner import BTC, RECORDED
result = backtest(EmaCrossover(), list(load_bars(RECORDED)), BTC)
write_report(BacktestReport.build("BTC/USDT 5m EMA", result.trades, result.equity), sys.argv[1])
"""


@pytest.fixture(scope="module")
def recorded() -> list[Bar]:
    if not RECORDED.is_file():
        pytest.skip(f"recorded market data not found at {RECORDED}")
    return list(load_bars(RECORDED))


@pytest.fixture(scope="module")
def ema_run(recorded: list[Bar]) -> BacktestResult:
    return backtest(EmaCrossover(), recorded, BTC)


def test_an_order_asked_for_on_a_bar_fills_at_the_next_bars_open(bar: BarMaker) -> None:
    bars = [bar(i, str(100 + i), str(102 + i), str(99 + i), str(101 + i)) for i in range(5)]
    strategy = ScriptedStrategy({1: buy()})
    result = backtest(strategy, bars, BTC)
    entry = result.fills[0]
    assert (entry.timestamp, entry.price) == (bars[2].timestamp, bars[2].open * Decimal("1.0005"))
    assert strategy.positions == [0, 0, 1, 1, 1]


class EquitySeen:
    """Records `ctx.equity` on every bar; buys on the bar given."""

    def __init__(self, buy_at: int) -> None:
        self.buy_at = buy_at
        self.equity: list[Decimal] = []

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> None:
        self.equity.append(ctx.equity)
        if len(self.equity) - 1 == self.buy_at:
            buy()(bar, ctx)


def test_the_strategy_reads_the_equity_curve_at_each_bars_close(bar: BarMaker) -> None:
    # What a strategy sizes from is what the report plots: the equity point of its bar.
    bars = [bar(i, str(100 + i), str(102 + i), str(99 + i), str(101 + i)) for i in range(6)]
    strategy = EquitySeen(buy_at=1)
    result = backtest(strategy, bars, BTC)
    assert strategy.equity == [point.equity for point in result.equity]
    assert strategy.equity[0] == result.initial_equity
    # Held from bar 2: the equity moves with the close (and paid the entry's fee).
    assert strategy.equity[2] != strategy.equity[1]
    assert strategy.equity[3] - strategy.equity[2] == bars[3].close - bars[2].close


def test_a_proposal_on_the_last_bar_is_returned_unexecuted(bar: BarMaker) -> None:
    bars = [bar(i, "100", "101", "99", "100") for i in range(3)]
    instrument = BTC
    result = backtest(ScriptedStrategy({2: buy()}), bars, instrument)
    assert [p.side for p in result.unexecuted] == [OrderSide.BUY]
    assert result.outcomes == ()


class _FailingStrategy:
    """Raises on its third bar, as a strategy with a bug would."""

    def __init__(self) -> None:
        self.bars = 0

    def on_bar(self, bar: Bar, ctx: object) -> None:
        self.bars += 1
        if self.bars == 3:
            raise ValidationError("threshold", -1, "a number >= 0")


def test_a_strategy_error_is_raised_as_itself(bar: BarMaker) -> None:
    bars = [bar(i, "100", "101", "99", "100") for i in range(5)]
    with pytest.raises(ValidationError, match="threshold") as raised:
        backtest(_FailingStrategy(), bars, BTC)
    # It says which bar: the strategy failed on its third.
    assert raised.value.__notes__ == [f"raised by the strategy on the bar of {bars[2].timestamp}"]


def test_the_strategy_sees_each_bar_once_in_order(recorded: list[Bar]) -> None:
    strategy = ScriptedStrategy({})
    backtest(strategy, recorded[:500], BTC)
    assert strategy.seen == recorded[:500]


def test_replacing_the_future_changes_no_past_decision_or_trade(
    recorded: list[Bar], ema_run: BacktestResult
) -> None:
    cut = len(recorded) // 2
    cut_time = recorded[cut].timestamp
    # A different future: every price after the cut 10% higher, so later trades differ.
    future = [
        dataclasses.replace(
            b,
            open=b.open * Decimal("1.1"),
            high=b.high * Decimal("1.1"),
            low=b.low * Decimal("1.1"),
            close=b.close * Decimal("1.1"),
        )
        for b in recorded[cut:]
    ]
    other = backtest(EmaCrossover(), [*recorded[:cut], *future], BTC)
    assert other.equity[:cut] == ema_run.equity[:cut]
    assert _trades_before(other, cut_time) == _trades_before(ema_run, cut_time)
    assert _decisions_before(other, cut_time) == _decisions_before(ema_run, cut_time)
    assert len(_decisions_before(ema_run, cut_time)) > 50
    assert other.trades != ema_run.trades  # the futures did differ


def _trades_before(result: BacktestResult, cut_time: datetime) -> list[ClosedTrade]:
    return [t for t in result.trades if t.exit_time < cut_time]


def _decisions_before(result: BacktestResult, cut_time: datetime) -> list[tuple[object, ...]]:
    """Every proposal sent before the cut: when its first order went out, and what it asked."""
    decisions = []
    for outcome in result.outcomes:
        assert isinstance(outcome, BracketOutcome)
        sent = outcome.orders[0].created_at
        assert sent is not None
        if sent < cut_time:
            p = outcome.proposal
            decisions.append((sent, p.side, p.quantity, p.entry_price, p.stop_loss, p.take_profit))
    return decisions


def test_pnl_equals_a_recomputation_from_the_fills(
    recorded: list[Bar], ema_run: BacktestResult
) -> None:
    assert len(ema_run.trades) > 100
    cash = ema_run.initial_equity
    held = Decimal(0)
    for fill in ema_run.fills:
        notional = fill.price * fill.quantity
        if fill.side is OrderSide.SELL:
            cash, held = cash + notional - fill.fee, held - fill.quantity
        else:
            cash, held = cash - notional - fill.fee, held + fill.quantity
    assert held == ema_run.final_position
    # Whatever is still held is worth its quantity at the last close.
    assert cash + held * recorded[-1].close == ema_run.final_equity
    closed = sum((t.net_pnl for t in ema_run.trades), Decimal(0))
    open_value = ema_run.final_equity - ema_run.initial_equity - closed
    if not held:
        assert open_value == 0
    for trade in ema_run.trades:
        sign = 1 if trade.side is PositionSide.LONG else -1
        assert trade.pnl == (trade.exit_price - trade.entry_price) * trade.quantity * sign


def test_the_venue_balance_agrees_with_the_recomputed_equity(recorded: list[Bar]) -> None:
    bars = recorded[:3000]
    clock = SimulatedClock(start=bars[0].timestamp)
    venue = PaperVenue([BTC], balances={"USDT": Decimal(100_000)}, clock=clock)
    result = run_simulated(
        run_backtest(
            EmaCrossover(), bars, venue=venue, executor=DirectBracketExecutor(venue), clock=clock
        ),
        clock=clock,
    )
    balance = venue.snapshot_balances()["USDT"].total
    unrealized = sum((p.unrealized_pnl for p in venue_positions(venue)), Decimal(0))
    assert balance + unrealized == result.final_equity


def venue_positions(venue: PaperVenue) -> list[Position]:
    return run_simulated(_positions(venue), clock=SimulatedClock())


async def _positions(venue: PaperVenue) -> list[Position]:
    return list(await venue.positions())


def test_two_runs_over_the_recorded_file_write_the_same_report_bytes(
    ema_run: BacktestResult, tmp_path: Path
) -> None:
    report = BacktestReport.build("BTC/USDT 5m EMA", ema_run.trades, ema_run.equity)
    here = write_report(report, tmp_path / "here")
    # The second run in a fresh interpreter: nothing cached in this process can help it.
    root = Path(__file__).resolve().parents[3]
    subprocess.run(
        [sys.executable, "-c", REPORT_SCRIPT, str(tmp_path / "fresh")],
        check=True,
        cwd=root,
        timeout=120,
    )
    for name in REPORT_FILES:
        assert here[name].read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


def test_sleeping_on_every_bar_gives_the_same_result(recorded: list[Bar]) -> None:
    bars = recorded[:2000]

    def run(sleep_every_bar: bool) -> BacktestResult:
        clock = SimulatedClock(start=bars[0].timestamp)
        venue = PaperVenue([BTC], balances={"USDT": Decimal(100_000)}, clock=clock)
        executor = DirectBracketExecutor(venue)
        return run_simulated(
            run_backtest(
                EmaCrossover(),
                bars,
                venue=venue,
                executor=executor,
                clock=clock,
                sleep_every_bar=sleep_every_bar,
            ),
            clock=clock,
        )

    fast, paced = run(False), run(True)
    assert fast.trades
    assert fast.trades == paced.trades
    assert fast.fills == paced.fills
    assert fast.equity == paced.equity


def test_bad_bars_are_refused(bar: BarMaker, recorded: list[Bar]) -> None:
    with pytest.raises(ValidationError) as raised:
        backtest(EmaCrossover(), [], BTC)
    assert raised.value.field == "bars"
    with pytest.raises(ValidationError) as raised:
        backtest(EmaCrossover(), [recorded[1], recorded[0]], BTC)
    assert raised.value.field == "bars[1].timestamp"
    with pytest.raises(ValidationError) as raised:
        backtest(EmaCrossover(), [recorded[0], bar(10**6, "1", "1", "1", "1", symbol="ETH")], BTC)
    assert raised.value.field == "bars[1].symbol"


def test_a_clock_other_than_the_venues_or_past_the_first_bar_is_refused(
    recorded: list[Bar],
) -> None:
    bars = recorded[:10]
    clock = SimulatedClock(start=bars[0].timestamp)
    venue = PaperVenue([BTC], balances={"USDT": Decimal(1000)}, clock=clock)
    other = SimulatedClock(start=bars[0].timestamp)
    late = SimulatedClock(start=bars[1].timestamp)
    late_venue = PaperVenue([BTC], balances={"USDT": Decimal(1000)}, clock=late)
    for chosen, used_venue in ((other, venue), (late, late_venue)):
        with pytest.raises(ValidationError) as raised:
            run_simulated(
                run_backtest(
                    EmaCrossover(),
                    bars,
                    venue=used_venue,
                    executor=DirectBracketExecutor(used_venue),
                    clock=chosen,
                ),
                clock=chosen,
            )
        assert raised.value.field == "clock"
