"""A strategy that does what a script says at given bars, and records every bar it saw."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal

from legato.trading.market_data import Bar
from legato.trading.strategy import StrategyContext

Action = Callable[[Bar, StrategyContext], object]


def buy(quantity: str = "1", stop: str = "0.02", target: str | None = "0.04") -> Action:
    """Buy at the bar's close with a stop and target as fractions of it."""

    def act(bar: Bar, ctx: StrategyContext) -> object:
        take_profit = None if target is None else bar.close * (1 + Decimal(target))
        return ctx.buy(
            Decimal(quantity), stop_loss=bar.close * (1 - Decimal(stop)), take_profit=take_profit
        )

    return act


def close() -> Action:
    """Close the whole position."""
    return lambda bar, ctx: ctx.close()


class ScriptedStrategy:
    """Runs `script[index]` on the bar with that index; records (timestamp, position) seen."""

    def __init__(self, script: Mapping[int, Action]) -> None:
        self.script = dict(script)
        self.seen: list[Bar] = []
        self.positions: list[Decimal] = []

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> None:
        index = len(self.seen)
        self.seen.append(bar)
        self.positions.append(ctx.position)
        action = self.script.get(index)
        if action is not None:
            action(bar, ctx)


BREAKOUT_MODULE = """
from decimal import Decimal


class Breakout:
    def __init__(self, window: int = 48) -> None:
        self.window = window
        self.closes = []

    def on_bar(self, bar, ctx) -> None:
        window = self.closes[-self.window:]
        self.closes = window + [bar.close]
        ready = len(window) == self.window and ctx.is_flat and not ctx.pending
        if ready and bar.close > max(window):
            ctx.buy(Decimal("0.5"), stop_loss=bar.close * Decimal("0.985"),
                    take_profit=bar.close * Decimal("1.03"))
"""
"""A user's own module, as the command line imports it: `breakout:Breakout` (`window=`)."""
