"""The strategy API: a `Strategy` sees one closed bar at a time and asks for trades.

A strategy is any object with `on_bar(bar, ctx)`. It keeps its own indicators, reads the
account through `ctx` (`position`, `pending`, `equity`), and asks for trades with `ctx.buy`,
`ctx.sell` and `ctx.close`. Those calls do not touch a venue: they build `TradeProposal`
values that the runner hands to a `TradeExecutor` after `on_bar` returns. The executor is the
seam between research and production: `DirectBracketExecutor` places the bracket straight on
the paper venue; the desk's execution manager (behind the risk engine) takes the same
proposals. The same object trades on the running desk too (`Desk(strategies=...)`, `legato
run --strategy`): there the coordinator stores each proposal as a decision and carries it
through the risk engine and the execution manager.

The strategy never sees a bar before its turn: the context holds no history, and the runner
(or the desk) calls `on_bar` once per bar, in time order, after the venue has matched that bar.
`legato.trading.backtest.ema_crossover` is a complete example.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Protocol, runtime_checkable

from legato.kernel.errors import ValidationError
from legato.trading.instruments import Instrument, PriceRounding
from legato.trading.market_data import Bar
from legato.trading.orders import OrderSide
from legato.trading.proposals import TradeProposal

__all__ = [
    "Strategy",
    "StrategyContext",
    "TradeExecutor",
    "TradeOutcome",
    "is_strategy",
    "strategy_label",
]


@runtime_checkable
class TradeOutcome(Protocol):
    """What an executor says about one proposal: at least whether it succeeded."""

    @property
    def success(self) -> bool:
        """True when the trade's orders are working as asked (entry in, protection on)."""
        ...


class TradeExecutor(Protocol):
    """Carries out trade proposals: the research executor, or the desk's execution manager."""

    async def execute_trade(self, proposal: TradeProposal) -> TradeOutcome:
        """Place `proposal` (entry, stop-loss, take-profit; or a reduce-only close)."""
        ...


class Strategy(Protocol):
    """Trading logic called once per closed bar, in time order."""

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> None:
        """React to `bar` (just closed); ask for trades through `ctx`."""
        ...


def is_strategy(candidate: object) -> bool:
    """True when `candidate` has a callable `on_bar`: what makes an object a `Strategy`."""
    return callable(getattr(candidate, "on_bar", None))


def strategy_label(strategy: object) -> str:
    """`strategy`'s class as MODULE:NAME ("breakout:Breakout"): how a desk names it.

    The name the decision log, the bus and the proposals' `strategy_id` carry for the
    strategy's trades, and the form `--strategy` takes on the command line.
    """
    kind = type(strategy)
    return f"{kind.__module__}:{kind.__qualname__}"


class StrategyContext:
    """What a strategy may see and do on a bar: its position, and buy, sell and close.

    `submit` receives each proposal as it is made (the runner queues them for the executor).
    `buy` and `sell` take absolute stop-loss and take-profit prices, rounded here to the
    instrument's tick grid: a long's stop is rounded down and its target up (never tighter
    than asked), a short's the other way.
    """

    __slots__ = (
        "_bar",
        "_instrument",
        "_proposals",
        "_strategy_id",
        "_submit",
        "equity",
        "pending",
        "position",
    )

    def __init__(
        self,
        instrument: Instrument,
        submit: Callable[[TradeProposal], None],
        *,
        strategy_id: str = "backtest",
    ) -> None:
        self._instrument = instrument
        self._submit = submit
        self._strategy_id = strategy_id
        self._proposals = 0
        self._bar: Bar | None = None
        self.position = Decimal(0)
        """The signed quantity held: positive long, negative short, zero flat."""
        self.pending = False
        """True while an earlier proposal is still with the executor (research path: until its
        entry has filled and its protection is placed)."""
        self.equity = Decimal(0)
        """The account's equity at this bar's close: its quote balance after every fill so far,
        plus the position marked at the close (the report's equity curve at this bar)."""

    @property
    def instrument(self) -> Instrument:
        """The instrument the strategy trades (tick and lot sizes)."""
        return self._instrument

    @property
    def is_flat(self) -> bool:
        """True when no position is held."""
        return not self.position

    def begin_bar(self, bar: Bar) -> None:
        """Set the bar that `buy`, `sell` and `close` price from; the runner calls it first."""
        self._bar = bar

    def buy(
        self,
        quantity: Decimal,
        *,
        stop_loss: Decimal,
        take_profit: Decimal | None = None,
    ) -> TradeProposal:
        """Ask to go long `quantity` at the market, protected by a stop-loss (and target)."""
        return self._open(OrderSide.BUY, quantity, stop_loss, take_profit)

    def sell(
        self,
        quantity: Decimal,
        *,
        stop_loss: Decimal,
        take_profit: Decimal | None = None,
    ) -> TradeProposal:
        """Ask to go short `quantity` at the market, protected by a stop-loss (and target)."""
        return self._open(OrderSide.SELL, quantity, stop_loss, take_profit)

    def close(self) -> TradeProposal:
        """Ask to close the whole position at the market (a reduce-only proposal)."""
        if not self.position:
            raise ValidationError("position", self.position, "an open position to close")
        side = OrderSide.SELL if self.position > 0 else OrderSide.BUY
        proposal = TradeProposal(
            symbol=self._instrument.symbol,
            side=side,
            quantity=abs(self.position),
            entry_price=self._reference(),
            stop_loss=None,
            reduce_only=True,
            strategy_id=self._strategy_id,
            correlation_id=self._next_id(),
        )
        self._submit(proposal)
        return proposal

    def _open(
        self,
        side: OrderSide,
        quantity: Decimal,
        stop_loss: Decimal,
        take_profit: Decimal | None,
    ) -> TradeProposal:
        instrument = self._instrument
        if not isinstance(quantity, Decimal) or not quantity.is_finite() or quantity <= 0:
            raise ValidationError("quantity", quantity, "a finite Decimal > 0")
        instrument.validate_quantity(quantity)
        long = side is OrderSide.BUY
        stop_rounding = PriceRounding.DOWN if long else PriceRounding.UP
        target_rounding = PriceRounding.UP if long else PriceRounding.DOWN
        proposal = TradeProposal(
            symbol=instrument.symbol,
            side=side,
            quantity=quantity,
            entry_price=self._reference(),
            stop_loss=instrument.round_price(stop_loss, stop_rounding),
            take_profit=(
                None
                if take_profit is None
                else instrument.round_price(take_profit, target_rounding)
            ),
            strategy_id=self._strategy_id,
            correlation_id=self._next_id(),
        )
        self._submit(proposal)
        return proposal

    def _reference(self) -> Decimal:
        if self._bar is None:
            raise ValidationError("bar", None, "a bar first: trade from inside on_bar")
        return self._bar.close

    def _next_id(self) -> str:
        self._proposals += 1
        return f"{self._strategy_id}-{self._proposals}"
