"""An example strategy: EMA(12)/EMA(26) crossover, long only, with a 2% stop and 4% target.

When the fast EMA crosses above the slow one, the account is flat and no earlier proposal is
pending, buy `quantity` with a stop-loss 2% below the close and a take-profit 4% above it.
When the fast EMA crosses back below while long, close, even if the entry's protection is
still being placed. This is the strategy the benchmark runs against other engines.
"""

from __future__ import annotations

from decimal import Decimal

from legato.trading.agents.indicators import EMA
from legato.trading.market_data import Bar
from legato.trading.strategy import StrategyContext

__all__ = ["EmaCrossover"]


class EmaCrossover:
    """Long when the fast EMA crosses above the slow one (bracketed); out when it crosses back."""

    def __init__(
        self,
        quantity: Decimal = Decimal(1),
        *,
        fast: int = 12,
        slow: int = 26,
        stop_loss: Decimal = Decimal("0.02"),
        take_profit: Decimal = Decimal("0.04"),
    ) -> None:
        self.quantity = quantity
        self.stop_loss = stop_loss
        self.take_profit = take_profit
        self._fast = EMA(fast)
        self._slow = EMA(slow)
        self._fast_above: bool | None = None

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> None:
        """Trade the cross of the two EMAs of the closes."""
        close = float(bar.close)
        fast, slow = self._fast.update(close), self._slow.update(close)
        if fast is None or slow is None:
            return
        above, before = fast > slow, self._fast_above
        self._fast_above = above
        if before is None or above == before:
            return
        if above and ctx.is_flat and not ctx.pending:
            ctx.buy(
                self.quantity,
                stop_loss=bar.close * (1 - self.stop_loss),
                take_profit=bar.close * (1 + self.take_profit),
            )
        elif not above and ctx.position > 0:
            ctx.close()
