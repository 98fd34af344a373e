"""The technical-analysis agent: trend, bias and confidence from a vote of indicator signals.

Six signals each vote bullish (+1), bearish (-1) or abstain (0) on every bar:

    ema_cross        fast EMA above / below slow EMA
    price_vs_sma     close above / below the long SMA
    macd_histogram   MACD line above / below its signal line
    rsi_momentum     RSI above 50 + band / below 50 - band (abstains in between)
    bollinger_side   close above / below the middle band
    directional      +DI above / below -DI, once ADX shows some trend (abstains below)

The score is (bullish - bearish) / 6, from -1 to 1. The bias is LONG at or above
`bias_threshold`, SHORT at or below minus it, NEUTRAL in between. Confidence is the share of
signals that voted for the chosen bias (for NEUTRAL: 1 - |score|, how balanced the vote was).
The trend is read from the EMA spread measured in ATRs, so it means the same on any price scale.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from legato.kernel.errors import ValidationError
from legato.trading.agents.records import slot_init
from legato.trading.agents.snapshot import IndicatorSet, IndicatorSettings, IndicatorSnapshot
from legato.trading.market_data import Bar

__all__ = [
    "Bias",
    "Signal",
    "TechnicalAnalysis",
    "TechnicalAnalysisAgent",
    "TechnicalSettings",
    "Trend",
]


class Trend(enum.Enum):
    """The direction prices have been moving in."""

    UP = "up"
    DOWN = "down"
    SIDEWAYS = "sideways"


class Bias(enum.Enum):
    """Which side the indicators favour for a new position."""

    LONG = "long"
    SHORT = "short"
    NEUTRAL = "neutral"


@slot_init
@dataclass(frozen=True, slots=True)
class Signal:
    """One indicator's vote: +1 bullish, -1 bearish, 0 abstain, and the numbers behind it."""

    name: str
    vote: int
    detail: str


@dataclass(frozen=True, slots=True)
class TechnicalSettings:
    """Thresholds of the technical-analysis agent."""

    bias_threshold: float = 0.5
    rsi_band: float = 5.0
    trend_spread_atr: float = 0.25
    directional_min_adx: float = 20.0

    def __post_init__(self) -> None:
        if not 0 < self.bias_threshold <= 1:
            raise ValidationError("bias_threshold", self.bias_threshold, "a score in (0, 1]")
        if not 0 <= self.rsi_band < 50:
            raise ValidationError("rsi_band", self.rsi_band, "RSI points in [0, 50)")
        if not self.trend_spread_atr >= 0:
            raise ValidationError("trend_spread_atr", self.trend_spread_atr, "ATRs >= 0")
        if not 0 <= self.directional_min_adx <= 100:
            raise ValidationError(
                "directional_min_adx", self.directional_min_adx, "an ADX level in [0, 100]"
            )


@slot_init
@dataclass(frozen=True, slots=True)
class TechnicalAnalysis:
    """The agent's reading of one bar: trend, bias, confidence, and every signal's vote."""

    symbol: str
    timestamp: datetime
    trend: Trend
    bias: Bias
    confidence: float
    score: float
    signals: tuple[Signal, ...]

    @property
    def agreeing(self) -> tuple[str, ...]:
        """Return the names of the signals that voted for the bias (all abstainers if NEUTRAL)."""
        wanted = {Bias.LONG: 1, Bias.SHORT: -1, Bias.NEUTRAL: 0}[self.bias]
        return tuple(signal.name for signal in self.signals if signal.vote == wanted)


def _side(value: float, reference: float) -> int:
    if value > reference:
        return 1
    if value < reference:
        return -1
    return 0


class TechnicalAnalysisAgent:
    """Reads trend, bias and confidence from indicator snapshots of one symbol.

    `analyze(snapshot)` is a pure function of the snapshot (share one `IndicatorSet` between
    agents); `on_bar(bar)` feeds the agent's own `IndicatorSet` first. Both return None until
    every indicator the agent reads is warmed up.
    """

    __slots__ = ("_indicators", "_settings")

    def __init__(
        self,
        symbol: str,
        settings: TechnicalSettings | None = None,
        indicator_settings: IndicatorSettings | None = None,
    ) -> None:
        self._settings = settings if settings is not None else TechnicalSettings()
        self._indicators = IndicatorSet(symbol, indicator_settings)

    @property
    def settings(self) -> TechnicalSettings:
        """Return the agent's thresholds."""
        return self._settings

    def on_bar(self, bar: Bar) -> TechnicalAnalysis | None:
        """Feed the next bar into the agent's own indicators and analyse the result."""
        return self.analyze(self._indicators.update(bar))

    def analyze(self, snapshot: IndicatorSnapshot) -> TechnicalAnalysis | None:
        """Return the analysis of `snapshot`, or None while its indicators are warming up."""
        ema_fast = snapshot.ema_fast
        ema_slow = snapshot.ema_slow
        sma = snapshot.sma
        rsi = snapshot.rsi
        macd = snapshot.macd
        atr = snapshot.atr
        bands = snapshot.bollinger
        adx = snapshot.adx
        if (
            ema_fast is None
            or ema_slow is None
            or sma is None
            or rsi is None
            or macd is None
            or atr is None
            or bands is None
            or adx is None
        ):
            return None
        cfg = self._settings
        close = snapshot.close
        if rsi >= 50 + cfg.rsi_band:
            rsi_vote = 1
        elif rsi <= 50 - cfg.rsi_band:
            rsi_vote = -1
        else:
            rsi_vote = 0
        directional_vote = (
            _side(adx.plus_di, adx.minus_di) if adx.adx >= cfg.directional_min_adx else 0
        )
        votes = (
            _side(ema_fast, ema_slow),
            _side(close, sma),
            _side(macd.histogram, 0.0),
            rsi_vote,
            _side(close, bands.middle),
            directional_vote,
        )
        signals = (
            Signal("ema_cross", votes[0], f"EMA fast {ema_fast:.6g} vs slow {ema_slow:.6g}"),
            Signal("price_vs_sma", votes[1], f"close {close:.6g} vs SMA {sma:.6g}"),
            Signal("macd_histogram", votes[2], f"histogram {macd.histogram:.4g}"),
            Signal("rsi_momentum", votes[3], f"RSI {rsi:.1f}"),
            Signal("bollinger_side", votes[4], f"%B {bands.percent_b:.2f}"),
            Signal(
                "directional",
                votes[5],
                f"ADX {adx.adx:.1f}, +DI {adx.plus_di:.1f}, -DI {adx.minus_di:.1f}",
            ),
        )
        # Every vote is exactly 1, -1 or 0: counting them is counting the signals for each side.
        bullish = votes.count(1)
        bearish = votes.count(-1)
        score = (bullish - bearish) / len(signals)
        if score >= cfg.bias_threshold:
            bias = Bias.LONG
            confidence = bullish / len(signals)
        elif score <= -cfg.bias_threshold:
            bias = Bias.SHORT
            confidence = bearish / len(signals)
        else:
            bias = Bias.NEUTRAL
            confidence = 1.0 - abs(score)
        # The EMA spread in ATRs: a gap of a quarter ATR is a trend on any price scale.
        spread = (ema_fast - ema_slow) / atr if atr > 0 else 0.0
        if spread >= cfg.trend_spread_atr and close > ema_slow:
            trend = Trend.UP
        elif spread <= -cfg.trend_spread_atr and close < ema_slow:
            trend = Trend.DOWN
        else:
            trend = Trend.SIDEWAYS
        return TechnicalAnalysis(
            symbol=snapshot.symbol,
            timestamp=snapshot.timestamp,
            trend=trend,
            bias=bias,
            confidence=confidence,
            score=score,
            signals=signals,
        )
