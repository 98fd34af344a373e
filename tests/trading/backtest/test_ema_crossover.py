"""The example strategy: buy with a 2%/4% bracket on the cross up, close on the cross down."""

from __future__ import annotations

from decimal import Decimal

from legato.trading.backtest.ema_crossover import EmaCrossover
from legato.trading.instruments import Instrument, PriceRounding
from legato.trading.market_data import Bar
from legato.trading.orders import OrderSide
from legato.trading.proposals import TradeProposal
from legato.trading.strategy import StrategyContext

from ..conftest import BarMaker


def closes_to_bars(bar: BarMaker, closes: list[str]) -> list[Bar]:
    return [bar(i, close, close, close, close) for i, close in enumerate(closes)]


FALLING = [str(200 - i) for i in range(40)]
RISING = [str(161 + 2 * i) for i in range(30)]


class Recorder:
    """A context whose proposals are kept, numbered by the bar that made them."""

    def __init__(self, perp: Instrument) -> None:
        self.made: list[tuple[int, TradeProposal]] = []
        self.index = 0
        self.ctx = StrategyContext(perp, lambda proposal: self.made.append((self.index, proposal)))

    def feed(self, strategy: EmaCrossover, bars: list[Bar]) -> list[tuple[int, TradeProposal]]:
        for one in bars:
            self.ctx.begin_bar(one)
            strategy.on_bar(one, self.ctx)
            self.index += 1
        return self.made


def test_a_cross_up_while_flat_buys_with_a_2_percent_stop_and_4_percent_target(
    perp: Instrument, bar: BarMaker
) -> None:
    made = Recorder(perp).feed(EmaCrossover(Decimal("0.5")), closes_to_bars(bar, FALLING + RISING))
    [(index, proposal)] = made
    assert index >= len(FALLING)
    close = Decimal(RISING[index - len(FALLING)])
    assert proposal.side is OrderSide.BUY
    assert proposal.quantity == Decimal("0.5")
    # Rounded to the tick away from the entry: never tighter than asked.
    assert proposal.stop_loss == perp.round_price(close * Decimal("0.98"), PriceRounding.DOWN)
    assert proposal.take_profit == perp.round_price(close * Decimal("1.04"), PriceRounding.UP)


def test_a_cross_down_while_long_closes(perp: Instrument, bar: BarMaker) -> None:
    strategy = EmaCrossover()
    recorder = Recorder(perp)
    recorder.feed(strategy, closes_to_bars(bar, FALLING + RISING))
    recorder.ctx.position = Decimal(1)
    top = int(RISING[-1])
    falling_again = [str(top - 3 * i) for i in range(1, 30)]
    bars = closes_to_bars(bar, FALLING + RISING + falling_again)[len(FALLING) + len(RISING) :]
    _, (_, proposal) = recorder.feed(strategy, bars)
    assert proposal.reduce_only
    assert proposal.side is OrderSide.SELL


def test_no_trade_while_an_earlier_proposal_is_pending(perp: Instrument, bar: BarMaker) -> None:
    recorder = Recorder(perp)
    recorder.ctx.pending = True
    assert recorder.feed(EmaCrossover(), closes_to_bars(bar, FALLING + RISING)) == []


def test_a_cross_down_closes_even_while_the_entrys_protection_is_pending(
    perp: Instrument, bar: BarMaker
) -> None:
    strategy = EmaCrossover()
    recorder = Recorder(perp)
    recorder.feed(strategy, closes_to_bars(bar, FALLING + RISING))
    recorder.ctx.position = Decimal(1)
    recorder.ctx.pending = True
    top = int(RISING[-1])
    bars = closes_to_bars(bar, [str(top - 3 * i) for i in range(1, 30)])
    _, (_, proposal) = recorder.feed(strategy, bars)
    assert proposal.reduce_only
