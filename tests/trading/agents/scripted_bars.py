"""Scripted markets for the agent tests: seeded trends, ranges and volatility bursts as bars,
and the decision contexts the agents build from them."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from legato.trading.agents.models import DecisionContext
from legato.trading.agents.regime import RegimeDetectionAgent
from legato.trading.agents.snapshot import IndicatorSet
from legato.trading.agents.technical import TechnicalAnalysisAgent
from legato.trading.market_data import Bar
from legato.trading.positions import PositionSide

SYMBOL = "BTC-USDT-PERP"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=5)


def _price(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")


def bars_from_closes(
    closes: list[float], *, seed: int = 7, wick: float = 0.002, start: int = 0
) -> list[Bar]:
    """Bars opening at the previous close, with seeded wicks up to `wick` of the price."""
    rng = random.Random(seed)
    bars = []
    previous = closes[0]
    for offset, close in enumerate(closes):
        open_ = previous
        high = max(open_, close) * (1 + wick * rng.random())
        low = min(open_, close) * (1 - wick * rng.random())
        bars.append(
            Bar(
                symbol=SYMBOL,
                timestamp=T0 + STEP * (start + offset),
                open=_price(open_),
                high=_price(high),
                low=_price(low),
                close=_price(close),
                volume=Decimal(100),
            )
        )
        previous = close
    return bars


def trend(count: int, *, drift: float, seed: int = 1, start_price: float = 100.0) -> list[Bar]:
    """A steady trend: each close `drift` (a share, e.g. 0.004) from the last, with small noise."""
    rng = random.Random(seed)
    closes = []
    price = start_price
    for _ in range(count):
        price *= 1 + drift + rng.gauss(0, 0.001)
        closes.append(price)
    return bars_from_closes(closes, seed=seed)


def flat(count: int, *, noise: float = 0.003, seed: int = 2, level: float = 100.0) -> list[Bar]:
    """A range: closes scattered around `level` with no memory, so no trend can form."""
    rng = random.Random(seed)
    return bars_from_closes([level * (1 + rng.gauss(0, noise)) for _ in range(count)], seed=seed)


def burst(calm: int, wild: int, *, seed: int = 3, level: float = 100.0) -> list[Bar]:
    """A calm range of `calm` bars, then `wild` bars ten times as volatile."""
    rng = random.Random(seed)
    closes = [level * (1 + rng.gauss(0, 0.003)) for _ in range(calm)]
    closes += [level * (1 + rng.gauss(0, 0.03)) for _ in range(wild)]
    bars = bars_from_closes(closes[:calm], seed=seed)
    bars += bars_from_closes(closes[calm - 1 :], seed=seed + 1, wick=0.02, start=calm - 1)[1:]
    return bars


def contexts(bars: list[Bar], position: PositionSide | None = None) -> list[DecisionContext]:
    """The decision contexts of every bar once the agents are warm, as the desk builds them."""
    indicators = IndicatorSet(SYMBOL)
    technical_agent = TechnicalAnalysisAgent(SYMBOL)
    regime_agent = RegimeDetectionAgent(SYMBOL)
    built = []
    for bar in bars:
        snapshot = indicators.update(bar)
        technical = technical_agent.analyze(snapshot)
        regime = regime_agent.analyze(snapshot)
        if technical is not None and regime is not None:
            built.append(
                DecisionContext(
                    symbol=SYMBOL,
                    timestamp=bar.timestamp,
                    indicators=snapshot,
                    technical=technical,
                    regime=regime,
                    position=position,
                )
            )
    return built
