"""Every indicator of one symbol, updated together per bar, and the frozen snapshot they give.

An `IndicatorSet` owns one instance of each indicator for one symbol. `update(bar)` converts the
bar's prices to float once, feeds every indicator, and returns an `IndicatorSnapshot`: a frozen
value holding everything the agents read, with `None` for whatever is still warming up. The
agents are pure functions of snapshots, so one `IndicatorSet` can feed all of them, and a
stored snapshot replays the same analysis.

Bars must arrive in time order for their symbol: a bar at or before the last one is refused
(a replayed or out-of-order bar would silently corrupt every running average).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from legato.kernel.errors import ValidationError
from legato.trading.agents.indicators import (
    ADX,
    ATR,
    EMA,
    MACD,
    RSI,
    SMA,
    ADXValue,
    BollingerBands,
    BollingerValue,
    DonchianChannel,
    DonchianValue,
    MACDValue,
    RealizedVolatility,
)
from legato.trading.agents.records import slot_init
from legato.trading.market_data import Bar

__all__ = ["IndicatorSet", "IndicatorSettings", "IndicatorSnapshot"]


@dataclass(frozen=True, slots=True)
class IndicatorSettings:
    """The periods of every indicator in an `IndicatorSet` (bars, not seconds)."""

    ema_fast: int = 12
    ema_slow: int = 26
    sma: int = 50
    rsi: int = 14
    macd_signal: int = 9
    atr: int = 14
    bollinger: int = 20
    bollinger_width: float = 2.0
    adx: int = 14
    volatility: int = 20
    volatility_baseline: int = 50
    donchian: int = 20

    def __post_init__(self) -> None:
        for field in (
            "ema_fast",
            "ema_slow",
            "sma",
            "rsi",
            "macd_signal",
            "atr",
            "bollinger",
            "adx",
            "volatility",
            "volatility_baseline",
            "donchian",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValidationError(field, value, "a period of at least 2 bars")
        if self.ema_slow <= self.ema_fast:
            raise ValidationError(
                "ema_slow", self.ema_slow, f"a period longer than ema_fast ({self.ema_fast})"
            )
        if not self.bollinger_width > 0:
            raise ValidationError(
                "bollinger_width", self.bollinger_width, "a number of standard deviations > 0"
            )

    @property
    def warm_up(self) -> int:
        """Return how many bars it takes until every indicator in the set is ready."""
        return max(
            self.ema_slow + self.macd_signal - 1,
            self.sma,
            self.rsi + 1,
            self.atr,
            self.bollinger,
            2 * self.adx,
            self.volatility + self.volatility_baseline,
            self.donchian + 1,
        )


@slot_init
@dataclass(frozen=True, slots=True)
class IndicatorSnapshot:
    """The indicators of `symbol` as of the bar that closed at `timestamp`.

    Prices are floats (measurements, not money), except `close_price`, the bar's exact close.
    `donchian` is the channel of the `donchian` bars *before* this one, so a close beyond it
    is a breakout. `volatility_baseline` is an EMA of `volatility`, the level it is compared to.
    """

    symbol: str
    timestamp: datetime
    bars_seen: int
    close_price: Decimal
    close: float
    high: float
    low: float
    ema_fast: float | None
    ema_slow: float | None
    sma: float | None
    rsi: float | None
    macd: MACDValue | None
    atr: float | None
    bollinger: BollingerValue | None
    adx: ADXValue | None
    volatility: float | None
    volatility_baseline: float | None
    donchian: DonchianValue | None

    @property
    def atr_share(self) -> float | None:
        """Return the ATR as a share of the close (0.01 is 1%), or None during warm-up."""
        return None if self.atr is None else self.atr / self.close

    @property
    def volatility_ratio(self) -> float | None:
        """Return realised volatility over its baseline (2.0: twice as volatile as usual)."""
        if self.volatility is None or not self.volatility_baseline:
            return None
        return self.volatility / self.volatility_baseline


class IndicatorSet:
    """Every indicator for one symbol; `update(bar)` feeds them and returns a snapshot."""

    __slots__ = (
        "_adx",
        "_atr",
        "_bars_seen",
        "_baseline",
        "_bollinger",
        "_donchian",
        "_ema_fast",
        "_ema_slow",
        "_last_timestamp",
        "_macd",
        "_rsi",
        "_settings",
        "_sma",
        "_symbol",
        "_volatility",
    )

    def __init__(self, symbol: str, settings: IndicatorSettings | None = None) -> None:
        if not symbol:
            raise ValidationError("symbol", symbol, "a non-empty market symbol")
        cfg = settings if settings is not None else IndicatorSettings()
        self._symbol = symbol
        self._settings = cfg
        self._ema_fast = EMA(cfg.ema_fast)
        self._ema_slow = EMA(cfg.ema_slow)
        self._sma = SMA(cfg.sma)
        self._rsi = RSI(cfg.rsi)
        self._macd = MACD(cfg.ema_fast, cfg.ema_slow, cfg.macd_signal)
        self._atr = ATR(cfg.atr)
        self._bollinger = BollingerBands(cfg.bollinger, cfg.bollinger_width)
        self._adx = ADX(cfg.adx, cfg.adx)
        self._volatility = RealizedVolatility(cfg.volatility)
        self._baseline = EMA(cfg.volatility_baseline)
        self._donchian = DonchianChannel(cfg.donchian)
        self._bars_seen = 0
        self._last_timestamp: datetime | None = None

    @property
    def symbol(self) -> str:
        """Return the symbol this set follows."""
        return self._symbol

    @property
    def settings(self) -> IndicatorSettings:
        """Return the indicator periods."""
        return self._settings

    @property
    def bars_seen(self) -> int:
        """Return how many bars have been fed in."""
        return self._bars_seen

    def update(self, bar: Bar) -> IndicatorSnapshot:
        """Feed `bar` (the next one in time for this symbol) and return the new snapshot."""
        if bar.symbol != self._symbol:
            raise ValidationError("bar.symbol", bar.symbol, f"bars of {self._symbol}")
        if self._last_timestamp is not None and bar.timestamp <= self._last_timestamp:
            raise ValidationError(
                "bar.timestamp",
                bar.timestamp,
                f"a time after the last bar's ({self._last_timestamp.isoformat()})",
                symbol=self._symbol,
            )
        self._last_timestamp = bar.timestamp
        self._bars_seen += 1
        high = float(bar.high)
        low = float(bar.low)
        close = float(bar.close)
        # The breakout channel is read before this bar joins it.
        prior_channel = self._donchian.value
        self._donchian.update(high, low)
        volatility = self._volatility.update(close)
        baseline = self._baseline.update(volatility) if volatility is not None else None
        return IndicatorSnapshot(
            symbol=self._symbol,
            timestamp=bar.timestamp,
            bars_seen=self._bars_seen,
            close_price=bar.close,
            close=close,
            high=high,
            low=low,
            ema_fast=self._ema_fast.update(close),
            ema_slow=self._ema_slow.update(close),
            sma=self._sma.update(close),
            rsi=self._rsi.update(close),
            macd=self._macd.update(close),
            atr=self._atr.update(high, low, close),
            bollinger=self._bollinger.update(close),
            adx=self._adx.update(high, low, close),
            volatility=volatility,
            volatility_baseline=baseline,
            donchian=prior_channel,
        )
