"""Synthetic market data: seeded bars with volatility clustering and occasional jumps.

Returns follow a GARCH(1,1)-style process: each bar's variance is `omega + alpha × (last
return)² + beta × (last variance)`, so calm stretches and turbulent stretches cluster as in
real markets. With probability `jump_probability` a bar also carries a jump (a normal shock
`jump_scale` times the current volatility), the fat tails real data show; jumps do not feed
the variance, so one jump cannot set off a runaway. Inside each bar the
price takes `steps_per_bar` sub-steps, which set the high and the low. Volume grows with the
size of the move. All randomness comes from the `random.Random` passed in: the same seed
yields the same bars, value for value.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from legato.kernel.errors import ValidationError
from legato.trading.market_data import Bar

__all__ = ["SyntheticMarketConfig", "synthetic_bars"]


@dataclass(frozen=True, slots=True)
class SyntheticMarketConfig:
    """Parameters of the synthetic price process (per bar; log returns)."""

    omega: float = 2e-7
    alpha: float = 0.08
    beta: float = 0.9
    jump_probability: float = 0.01
    jump_scale: float = 6.0
    steps_per_bar: int = 4
    base_volume: float = 100.0
    tick_size: Decimal = Decimal("0.01")
    lot_size: Decimal = Decimal("0.001")

    def __post_init__(self) -> None:
        if self.omega <= 0:
            raise ValidationError("omega", self.omega, "a number > 0")
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta >= 1:
            raise ValidationError(
                "alpha", self.alpha, "alpha >= 0, beta >= 0 and alpha + beta < 1 (stationary)"
            )
        if not 0 <= self.jump_probability <= 1:
            raise ValidationError("jump_probability", self.jump_probability, "a number in [0, 1]")
        if self.jump_scale < 0:
            raise ValidationError("jump_scale", self.jump_scale, "a number >= 0")
        if self.steps_per_bar < 1:
            raise ValidationError("steps_per_bar", self.steps_per_bar, "an integer >= 1")
        if self.base_volume <= 0:
            raise ValidationError("base_volume", self.base_volume, "a number > 0")
        for field in ("tick_size", "lot_size"):
            value = getattr(self, field)
            if not isinstance(value, Decimal) or value <= 0:
                raise ValidationError(field, value, "a Decimal > 0")

    @property
    def long_run_variance(self) -> float:
        """The variance per bar the process returns to: omega / (1 - alpha - beta)."""
        return self.omega / (1 - self.alpha - self.beta)


def synthetic_bars(
    rng: random.Random,
    *,
    symbol: str,
    start: datetime,
    interval: timedelta,
    start_price: Decimal,
    config: SyntheticMarketConfig | None = None,
    count: int | None = None,
) -> Iterator[Bar]:
    """Yield synthetic bars of `symbol` every `interval` from `start` (forever if no `count`)."""
    cfg = config if config is not None else SyntheticMarketConfig()
    if start.utcoffset() is None:
        raise ValidationError("start", start, "an aware UTC datetime")
    if interval <= timedelta(0):
        raise ValidationError("interval", interval, "a positive timedelta")
    if not isinstance(start_price, Decimal) or start_price <= 0:
        raise ValidationError("start_price", start_price, "a Decimal > 0")
    if count is not None and count < 0:
        raise ValidationError("count", count, "an integer >= 0 or None")

    def to_price(value: float) -> Decimal:
        ticks = (Decimal(repr(value)) / cfg.tick_size).to_integral_value(ROUND_HALF_EVEN)
        return max(ticks, Decimal(1)) * cfg.tick_size

    variance = cfg.long_run_variance
    last_return = 0.0
    price = float(start_price)
    emitted = 0
    while count is None or emitted < count:
        variance = cfg.omega + cfg.alpha * last_return**2 + cfg.beta * variance
        sigma = math.sqrt(variance)
        step_sigma = sigma / math.sqrt(cfg.steps_per_bar)
        path = [price]
        for _ in range(cfg.steps_per_bar):
            path.append(path[-1] * math.exp(rng.gauss(0.0, step_sigma)))
        diffusion_return = math.log(path[-1] / price)
        if rng.random() < cfg.jump_probability:
            # A jump lands on the close: the bar's range stretches to cover it.
            path[-1] *= math.exp(rng.gauss(0.0, cfg.jump_scale * sigma))
        bar_return = math.log(path[-1] / price)
        move = abs(bar_return) / sigma if sigma > 0 else 0.0
        volume = cfg.base_volume * (1.0 + move) * rng.lognormvariate(0.0, 0.25)
        lots = (Decimal(repr(volume)) / cfg.lot_size).to_integral_value(ROUND_FLOOR)
        yield Bar(
            symbol=symbol,
            timestamp=start + interval * emitted,
            open=to_price(path[0]),
            high=to_price(max(path)),
            low=to_price(min(path)),
            close=to_price(path[-1]),
            volume=lots * cfg.lot_size,
        )
        # Only the diffusive move feeds the variance: fed back, jumps would compound into a
        # runaway volatility instead of the brief shocks they stand for.
        last_return = diffusion_return
        price = float(to_price(path[-1]))
        emitted += 1
