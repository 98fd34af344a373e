"""The regime-detection agent: trending bull, trending bear, ranging, or high volatility.

Rules, checked in this order on every bar:

1. HIGH_VOLATILITY when realised volatility is at least `burst_ratio` times its own baseline
   (an EMA of itself), or the ATR is at least `high_atr_share` of the price. Volatility comes
   first because it changes what every other reading is worth.
2. TRENDING_BULL / TRENDING_BEAR when ADX is at least `trend_adx`; +DI above -DI is bull.
3. RANGING otherwise.

Confidence grows linearly from 0.5 at the threshold to 1.0 at a clear reading: ADX at
`strong_adx` for a trend, ADX at `calm_adx` for a range, volatility at twice `burst_ratio`
(or ATR at twice `high_atr_share`) for high volatility.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from legato.kernel.errors import ValidationError
from legato.trading.agents.records import slot_init
from legato.trading.agents.snapshot import IndicatorSet, IndicatorSettings, IndicatorSnapshot
from legato.trading.market_data import Bar

__all__ = ["Regime", "RegimeAssessment", "RegimeDetectionAgent", "RegimeSettings"]


class Regime(enum.Enum):
    """The kind of market a symbol is in."""

    TRENDING_BULL = "trending_bull"
    TRENDING_BEAR = "trending_bear"
    RANGING = "ranging"
    HIGH_VOLATILITY = "high_volatility"


@dataclass(frozen=True, slots=True)
class RegimeSettings:
    """Thresholds of the regime-detection agent (ADX points, ratios, shares of price)."""

    trend_adx: float = 25.0
    strong_adx: float = 45.0
    calm_adx: float = 12.0
    burst_ratio: float = 2.0
    high_atr_share: float = 0.03

    def __post_init__(self) -> None:
        if not 0 < self.calm_adx < self.trend_adx < self.strong_adx <= 100:
            raise ValidationError(
                "trend_adx",
                (self.calm_adx, self.trend_adx, self.strong_adx),
                "0 < calm_adx < trend_adx < strong_adx <= 100",
            )
        if not self.burst_ratio > 1:
            raise ValidationError("burst_ratio", self.burst_ratio, "a ratio > 1")
        if not 0 < self.high_atr_share < 1:
            raise ValidationError("high_atr_share", self.high_atr_share, "a share in (0, 1)")


@slot_init
@dataclass(frozen=True, slots=True)
class RegimeAssessment:
    """The regime of `symbol` at `timestamp`, how sure the agent is, and the readings used."""

    symbol: str
    timestamp: datetime
    regime: Regime
    confidence: float
    adx: float
    plus_di: float
    minus_di: float
    atr_share: float
    volatility: float
    volatility_ratio: float
    reasons: tuple[str, ...]


def _ramp(value: float, start: float, full: float) -> float:
    """0.5 at `start`, 1.0 at `full` (either direction), clamped to [0.5, 1]."""
    if full == start:
        return 1.0
    progress = (value - start) / (full - start)
    return 0.5 + 0.5 * min(1.0, max(0.0, progress))


class RegimeDetectionAgent:
    """Classifies the market regime of one symbol from ADX, ATR share and realised volatility.

    `analyze(snapshot)` is pure; `on_bar(bar)` feeds the agent's own `IndicatorSet` first.
    Both return None until ADX, ATR and the volatility baseline are warmed up.
    """

    __slots__ = ("_indicators", "_settings")

    def __init__(
        self,
        symbol: str,
        settings: RegimeSettings | None = None,
        indicator_settings: IndicatorSettings | None = None,
    ) -> None:
        self._settings = settings if settings is not None else RegimeSettings()
        self._indicators = IndicatorSet(symbol, indicator_settings)

    @property
    def settings(self) -> RegimeSettings:
        """Return the agent's thresholds."""
        return self._settings

    def on_bar(self, bar: Bar) -> RegimeAssessment | None:
        """Feed the next bar into the agent's own indicators and assess the result."""
        return self.analyze(self._indicators.update(bar))

    def analyze(self, snapshot: IndicatorSnapshot) -> RegimeAssessment | None:
        """Return the regime at `snapshot`, or None while its indicators are warming up."""
        adx = snapshot.adx
        atr_share = snapshot.atr_share
        ratio = snapshot.volatility_ratio
        volatility = snapshot.volatility
        if adx is None or atr_share is None or ratio is None or volatility is None:
            return None
        cfg = self._settings
        reasons: list[str] = []
        vol_burst = ratio >= cfg.burst_ratio
        wide_range = atr_share >= cfg.high_atr_share
        if vol_burst or wide_range:
            regime = Regime.HIGH_VOLATILITY
            confidence = max(
                _ramp(ratio, cfg.burst_ratio, 2 * cfg.burst_ratio) if vol_burst else 0.0,
                _ramp(atr_share, cfg.high_atr_share, 2 * cfg.high_atr_share) if wide_range else 0.0,
            )
            if vol_burst:
                reasons.append(f"volatility {ratio:.2f}x its baseline (>= {cfg.burst_ratio})")
            if wide_range:
                reasons.append(f"ATR {atr_share:.2%} of price (>= {cfg.high_atr_share:.2%})")
        elif adx.adx >= cfg.trend_adx:
            bull = adx.plus_di >= adx.minus_di
            regime = Regime.TRENDING_BULL if bull else Regime.TRENDING_BEAR
            confidence = _ramp(adx.adx, cfg.trend_adx, cfg.strong_adx)
            reasons.append(f"ADX {adx.adx:.1f} >= {cfg.trend_adx}")
            reasons.append(f"+DI {adx.plus_di:.1f} {'>=' if bull else '<'} -DI {adx.minus_di:.1f}")
        else:
            regime = Regime.RANGING
            confidence = _ramp(adx.adx, cfg.trend_adx, cfg.calm_adx)
            reasons.append(f"ADX {adx.adx:.1f} < {cfg.trend_adx}")
        return RegimeAssessment(
            symbol=snapshot.symbol,
            timestamp=snapshot.timestamp,
            regime=regime,
            confidence=confidence,
            adx=adx.adx,
            plus_di=adx.plus_di,
            minus_di=adx.minus_di,
            atr_share=atr_share,
            volatility=volatility,
            volatility_ratio=ratio,
            reasons=tuple(reasons),
        )
