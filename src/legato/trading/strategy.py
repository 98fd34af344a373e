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

import inspect
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Protocol, cast, runtime_checkable

from legato.kernel.errors import ValidationError
from legato.kernel.user_code import import_spec
from legato.trading.instruments import Instrument, PriceRounding
from legato.trading.market_data import Bar
from legato.trading.orders import OrderSide
from legato.trading.proposals import TradeProposal

__all__ = [
    "Strategy",
    "StrategyContext",
    "TradeExecutor",
    "TradeOutcome",
    "find_strategy",
    "is_strategy",
    "make_strategies",
    "name_the_bar",
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


def name_the_bar(error: BaseException, bar: Bar) -> None:
    """Note on `error` (raised by a strategy's `on_bar`) which bar it was raised on.

    The first thing the strategy's author asks; the CLI prints the note with the error.
    """
    error.add_note(f"raised by the strategy on the bar of {bar.timestamp}")


def strategy_label(strategy: object) -> str:
    """`strategy`'s class as MODULE:NAME ("breakout:Breakout"): how a desk names it.

    The name the decision log, the bus and the proposals' `strategy_id` carry for the
    strategy's trades, and the form `--strategy` takes on the command line.
    """
    kind = type(strategy)
    return f"{kind.__module__}:{kind.__qualname__}"


def find_strategy(spec: str, *, field: str, expected: str) -> object:
    """What `spec` ("MODULE:NAME") names in the user's code: a class, or an object.

    The working directory is searched first (`legato.kernel.user_code`). ValidationError
    names `field`, and says `expected` for a spec that is not MODULE:NAME.
    """
    if ":" not in spec:
        raise ValidationError(field, spec, expected)
    module, name = import_spec(field, spec, expected)
    found = getattr(module, name, None)
    if found is None:
        raise ValidationError(field, spec, f"{module.__name__} to define {name!r}")
    return found


def make_strategies(
    found: object,
    params: Mapping[str, str],
    count: int,
    *,
    spec: str,
    field: str,
    params_field: str,
) -> list[Strategy]:
    """`count` strategies from `found` (a class or an object, see `find_strategy`).

    A class is made `count` times with `params` as keyword arguments, each text converted to
    the type of that parameter's default (bool from true/false, int, float, Decimal, str; a
    parameter without such a default gets whichever of true/false, an integer, a decimal or
    the text reads it first). An object is itself, for one symbol only: its state would mix
    two markets'. ValidationError names `field` (for `spec`) or `params_field`.
    """
    name = getattr(found, "__name__", spec)
    if isinstance(found, type):
        made = [
            _made(found, params, spec=spec, field=field, params_field=params_field)
            for _ in range(max(count, 1))
        ]
    elif params:
        raise ValidationError(params_field, sorted(params), f"none: {spec} is not a class")
    elif count > 1:
        raise ValidationError(
            field,
            spec,
            f"a class, made once for each of the {count} symbols it trades ({spec} is one "
            "object, whose state would mix their markets)",
        )
    else:
        made = [found]
    if not is_strategy(made[0]):
        raise ValidationError(field, spec, f"{name} to have on_bar(bar, ctx)")
    return cast(list[Strategy], made)


def _made(
    cls: type, params: Mapping[str, str], *, spec: str, field: str, params_field: str
) -> object:
    """`cls(**params)`, each value converted to the type of the parameter's default."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    arguments = {
        name: _parameter_value(
            f"{params_field} {name}",
            text,
            signature.parameters.get(name) if signature is not None else None,
        )
        for name, text in params.items()
    }
    try:
        return cls(**arguments)
    except TypeError as error:
        if params:
            raise ValidationError(
                params_field, sorted(params), f"parameters {cls.__name__} takes ({error})"
            ) from error
        raise ValidationError(
            field, spec, f"a class made with no arguments, or parameters ({error})"
        ) from error


def _parameter_value(where: str, text: str, parameter: inspect.Parameter | None) -> object:
    default = parameter.default if parameter is not None else inspect.Parameter.empty
    kind = type(default)
    if kind in (bool, int, float, Decimal, str):
        try:
            return _converted(kind, text)
        except ValueError:
            raise ValidationError(
                where, text, f"a {kind.__name__}, as its default {default!r}"
            ) from None
    for guess in (bool, int, Decimal):
        try:
            return _converted(guess, text)
        except ValueError:
            continue
    return text


def _converted(kind: type, text: str) -> object:
    """`text` as `kind`; ValueError when it does not read as one."""
    if kind is bool:
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    if kind is Decimal:
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise ValueError(text) from None
        if not number.is_finite():
            raise ValueError(text)
        return number
    return kind(text)


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
