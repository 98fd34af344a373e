"""Technical indicators, each updated in O(1) per bar from the new bar alone.

Every indicator is a small stateful object: `update(...)` takes the newest value (a close, or
a bar's high, low and close) and returns the indicator's value, or `None` while it has not yet
seen enough bars to mean anything (its warm-up). Nothing re-scans history: rolling windows keep
running sums, and the windowed statistics re-sum their window exactly once every `period`
updates so that floating-point drift cannot build up over a long replay (still O(1) amortised).

Indicators work in `float`. They are measurements that feed thresholds, not money: prices,
stops and targets stay `Decimal` everywhere an order can see them (`legato.trading.agents
.decision` converts back). Definitions follow the usual references:

- EMA is seeded with the simple average of its first `period` values, then smoothed with
  `2 / (period + 1)`.
- RSI, ATR and ADX use Wilder's smoothing (`1 / period`), seeded with simple averages.
- Bollinger bands and realised volatility use the population standard deviation.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from legato.kernel.errors import ValidationError
from legato.trading.agents.records import slot_init

__all__ = [
    "ADX",
    "ATR",
    "EMA",
    "MACD",
    "RSI",
    "SMA",
    "ADXValue",
    "BollingerBands",
    "BollingerValue",
    "DonchianChannel",
    "DonchianValue",
    "MACDValue",
    "RealizedVolatility",
]


def _check_period(field: str, period: int, minimum: int = 1) -> int:
    if isinstance(period, bool) or not isinstance(period, int) or period < minimum:
        raise ValidationError(field, period, f"an integer >= {minimum}")
    return period


class _RollingMoments:
    """Mean and population variance of the last `period` values (rolling Welford)."""

    __slots__ = ("_m2", "_mean", "_period", "_since_resum", "_window")

    def __init__(self, period: int) -> None:
        self._period = period
        self._window: deque[float] = deque()
        self._mean = 0.0
        self._m2 = 0.0
        self._since_resum = 0

    @property
    def full(self) -> bool:
        return len(self._window) == self._period

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def variance(self) -> float:
        # Cancellation can leave a tiny negative M2 on a constant window.
        return max(self._m2, 0.0) / len(self._window)

    def push(self, value: float) -> None:
        window = self._window
        if len(window) < self._period:
            window.append(value)
            delta = value - self._mean
            self._mean += delta / len(window)
            self._m2 += delta * (value - self._mean)
            return
        oldest = window.popleft()
        window.append(value)
        self._since_resum += 1
        if self._since_resum >= self._period:
            # Once per window length, re-sum exactly: drift never outlives one window.
            self._since_resum = 0
            self._mean = math.fsum(window) / self._period
            self._m2 = math.fsum((item - self._mean) ** 2 for item in window)
            return
        old_mean = self._mean
        delta = value - oldest
        self._mean = old_mean + delta / self._period
        self._m2 += delta * (value - self._mean + oldest - old_mean)


class SMA:
    """Simple moving average of the last `period` values; ready after `period` values."""

    __slots__ = ("_moments", "_value")

    def __init__(self, period: int) -> None:
        self._moments = _RollingMoments(_check_period("period", period))
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        """Return the current average, or None during warm-up."""
        return self._value

    def update(self, value: float) -> float | None:
        """Add the newest value and return the average (None until `period` values)."""
        self._moments.push(value)
        if self._moments.full:
            self._value = self._moments.mean
        return self._value


class EMA:
    """Exponential moving average, seeded with the SMA of the first `period` values."""

    __slots__ = ("_alpha", "_count", "_period", "_seed_sum", "_value")

    def __init__(self, period: int) -> None:
        self._period = _check_period("period", period)
        self._alpha = 2.0 / (period + 1.0)
        self._count = 0
        self._seed_sum = 0.0
        self._value: float | None = None

    @property
    def period(self) -> int:
        """Return the number of values the seed average needs."""
        return self._period

    @property
    def value(self) -> float | None:
        """Return the current average, or None during warm-up."""
        return self._value

    def update(self, value: float) -> float | None:
        """Add the newest value and return the average (None until `period` values)."""
        if self._value is not None:
            self._value += self._alpha * (value - self._value)
            return self._value
        self._count += 1
        self._seed_sum += value
        if self._count == self._period:
            self._value = self._seed_sum / self._period
        return self._value


class RSI:
    """Wilder's relative strength index (0..100); ready after `period + 1` closes.

    The first average gain and loss are plain means of the first `period` changes; later ones
    are Wilder-smoothed. With no losses the RSI is 100, with neither gains nor losses 50.
    """

    __slots__ = ("_avg_gain", "_avg_loss", "_changes", "_period", "_previous", "_value")

    def __init__(self, period: int = 14) -> None:
        self._period = _check_period("period", period)
        self._previous: float | None = None
        self._changes = 0
        self._avg_gain = 0.0
        self._avg_loss = 0.0
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        """Return the current RSI, or None during warm-up."""
        return self._value

    def update(self, close: float) -> float | None:
        """Add the newest close and return the RSI (None until `period + 1` closes)."""
        previous = self._previous
        self._previous = close
        if previous is None:
            return None
        change = close - previous
        gain = change if change > 0 else 0.0
        loss = -change if change < 0 else 0.0
        period = self._period
        self._changes += 1
        if self._changes < period:
            self._avg_gain += gain
            self._avg_loss += loss
            return None
        if self._changes == period:
            self._avg_gain = (self._avg_gain + gain) / period
            self._avg_loss = (self._avg_loss + loss) / period
        else:
            self._avg_gain = (self._avg_gain * (period - 1) + gain) / period
            self._avg_loss = (self._avg_loss * (period - 1) + loss) / period
        if self._avg_loss == 0:
            self._value = 100.0 if self._avg_gain > 0 else 50.0
        else:
            self._value = 100.0 - 100.0 / (1.0 + self._avg_gain / self._avg_loss)
        return self._value


@slot_init
@dataclass(frozen=True, slots=True)
class MACDValue:
    """MACD line (fast EMA - slow EMA), its signal EMA, and the histogram (line - signal)."""

    line: float
    signal: float
    histogram: float


class MACD:
    """Moving average convergence/divergence; ready after `slow + signal - 1` closes."""

    __slots__ = ("_fast", "_signal", "_slow", "_value")

    def __init__(self, fast: int = 12, slow: int = 26, signal: int = 9) -> None:
        _check_period("fast", fast)
        _check_period("signal", signal)
        if _check_period("slow", slow) <= fast:
            raise ValidationError("slow", slow, f"a period longer than fast ({fast})")
        self._fast = EMA(fast)
        self._slow = EMA(slow)
        self._signal = EMA(signal)
        self._value: MACDValue | None = None

    @property
    def value(self) -> MACDValue | None:
        """Return the current MACD, or None during warm-up."""
        return self._value

    def update(self, close: float) -> MACDValue | None:
        """Add the newest close and return the MACD (None until the signal line is ready)."""
        fast = self._fast.update(close)
        slow = self._slow.update(close)
        if fast is None or slow is None:
            return None
        line = fast - slow
        signal = self._signal.update(line)
        if signal is not None:
            self._value = MACDValue(line, signal, line - signal)
        return self._value


class ATR:
    """Wilder's average true range; ready after `period` bars.

    The first bar's true range is its high - low (there is no previous close); the first ATR
    is the mean of the first `period` true ranges.
    """

    __slots__ = ("_count", "_period", "_previous_close", "_seed_sum", "_value")

    def __init__(self, period: int = 14) -> None:
        self._period = _check_period("period", period)
        self._previous_close: float | None = None
        self._count = 0
        self._seed_sum = 0.0
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        """Return the current ATR, or None during warm-up."""
        return self._value

    def update(self, high: float, low: float, close: float) -> float | None:
        """Add the newest bar and return the ATR (None until `period` bars)."""
        previous = self._previous_close
        self._previous_close = close
        if previous is None:
            true_range = high - low
        else:
            true_range = max(high - low, abs(high - previous), abs(low - previous))
        period = self._period
        if self._value is not None:
            self._value = (self._value * (period - 1) + true_range) / period
            return self._value
        self._count += 1
        self._seed_sum += true_range
        if self._count == period:
            self._value = self._seed_sum / period
        return self._value


@slot_init
@dataclass(frozen=True, slots=True)
class BollingerValue:
    """Bollinger bands around an SMA, with bandwidth and %B of the close that made them.

    `bandwidth` is (upper - lower) / middle; `percent_b` is where the close sits, 0 at the
    lower band and 1 at the upper (0.5 when the bands have no width).
    """

    lower: float
    middle: float
    upper: float
    bandwidth: float
    percent_b: float


class BollingerBands:
    """SMA(`period`) ± `width` population standard deviations; ready after `period` closes."""

    __slots__ = ("_moments", "_value", "_width")

    def __init__(self, period: int = 20, width: float = 2.0) -> None:
        self._moments = _RollingMoments(_check_period("period", period, minimum=2))
        if not math.isfinite(width) or width <= 0:
            raise ValidationError("width", width, "a number of standard deviations > 0")
        self._width = width
        self._value: BollingerValue | None = None

    @property
    def value(self) -> BollingerValue | None:
        """Return the current bands, or None during warm-up."""
        return self._value

    def update(self, close: float) -> BollingerValue | None:
        """Add the newest close and return the bands (None until `period` closes)."""
        moments = self._moments
        moments.push(close)
        if not moments.full:
            return None
        middle = moments.mean
        spread = self._width * math.sqrt(moments.variance)
        lower = middle - spread
        upper = middle + spread
        span = upper - lower
        percent_b = (close - lower) / span if span > 0 else 0.5
        bandwidth = span / middle if middle != 0 else 0.0
        self._value = BollingerValue(lower, middle, upper, bandwidth, percent_b)
        return self._value


@slot_init
@dataclass(frozen=True, slots=True)
class ADXValue:
    """Average directional index (trend strength, 0..100) and the two directional indices."""

    adx: float
    plus_di: float
    minus_di: float


class ADX:
    """Wilder's ADX with +DI and -DI; ready after `di_period + adx_period` bars.

    Directional movement starts at the second bar. The smoothed movements are seeded with the
    mean of the first `di_period` of them, and divided by an ATR(`di_period`) of the same bars;
    the ADX is the mean of the first `adx_period` DX values, then Wilder-smoothed. A bar with no
    range at all (ATR 0) carries the previous DIs forward: it says nothing about direction.
    """

    __slots__ = (
        "_adx",
        "_adx_period",
        "_atr",
        "_di_period",
        "_dx_count",
        "_dx_seed_sum",
        "_minus_di",
        "_minus_dm",
        "_plus_di",
        "_plus_dm",
        "_previous",
        "_seed_count",
        "_value",
    )

    def __init__(self, di_period: int = 14, adx_period: int = 14) -> None:
        self._di_period = _check_period("di_period", di_period)
        self._adx_period = _check_period("adx_period", adx_period)
        self._atr = ATR(di_period)
        self._previous: tuple[float, float] | None = None
        self._seed_count = 0
        self._plus_dm = 0.0
        self._minus_dm = 0.0
        self._plus_di = 0.0
        self._minus_di = 0.0
        self._dx_count = 0
        self._dx_seed_sum = 0.0
        self._adx: float | None = None
        self._value: ADXValue | None = None

    @property
    def value(self) -> ADXValue | None:
        """Return the current ADX, or None during warm-up."""
        return self._value

    def update(self, high: float, low: float, close: float) -> ADXValue | None:
        """Add the newest bar and return the ADX (None until it is ready)."""
        atr = self._atr.update(high, low, close)
        previous = self._previous
        self._previous = (high, low)
        if previous is None:
            return None
        up_move = high - previous[0]
        down_move = previous[1] - low
        plus_dm = up_move if up_move > down_move and up_move > 0 else 0.0
        minus_dm = down_move if down_move > up_move and down_move > 0 else 0.0
        period = self._di_period
        if self._seed_count < period:
            self._seed_count += 1
            self._plus_dm += plus_dm
            self._minus_dm += minus_dm
            if self._seed_count < period:
                return None
            self._plus_dm /= period
            self._minus_dm /= period
        else:
            self._plus_dm = (self._plus_dm * (period - 1) + plus_dm) / period
            self._minus_dm = (self._minus_dm * (period - 1) + minus_dm) / period
        if atr is not None and atr != 0:
            self._plus_di = 100.0 * self._plus_dm / atr
            self._minus_di = 100.0 * self._minus_dm / atr
        di_sum = self._plus_di + self._minus_di
        dx = 100.0 * abs(self._plus_di - self._minus_di) / di_sum if di_sum != 0 else 0.0
        adx_period = self._adx_period
        if self._adx is None:
            self._dx_count += 1
            self._dx_seed_sum += dx
            if self._dx_count < adx_period:
                return None
            self._adx = self._dx_seed_sum / adx_period
        else:
            self._adx = (self._adx * (adx_period - 1) + dx) / adx_period
        self._value = ADXValue(self._adx, self._plus_di, self._minus_di)
        return self._value


class RealizedVolatility:
    """Population standard deviation of the last `period` log returns, per bar (not annualised).

    Ready after `period + 1` closes.
    """

    __slots__ = ("_moments", "_previous", "_value")

    def __init__(self, period: int = 20) -> None:
        self._moments = _RollingMoments(_check_period("period", period, minimum=2))
        self._previous: float | None = None
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        """Return the current volatility, or None during warm-up."""
        return self._value

    def update(self, close: float) -> float | None:
        """Add the newest close and return the volatility (None until `period + 1` closes)."""
        if close <= 0:
            raise ValidationError("close", close, "a price > 0")
        previous = self._previous
        self._previous = close
        if previous is None:
            return None
        self._moments.push(math.log(close / previous))
        if self._moments.full:
            self._value = math.sqrt(self._moments.variance)
        return self._value


@slot_init
@dataclass(frozen=True, slots=True)
class DonchianValue:
    """Highest high and lowest low of a window of bars, and their midpoint."""

    upper: float
    lower: float

    @property
    def middle(self) -> float:
        """Return the midpoint of the channel."""
        return (self.upper + self.lower) / 2


class DonchianChannel:
    """Highest high and lowest low of the last `period` bars (the current one included).

    Monotonic queues keep each update O(1) amortised: a value leaves the queue once it can
    never again be the extreme.
    """

    __slots__ = ("_count", "_highs", "_lows", "_period", "_value")

    def __init__(self, period: int = 20) -> None:
        self._period = _check_period("period", period)
        self._count = 0
        self._highs: deque[tuple[int, float]] = deque()
        self._lows: deque[tuple[int, float]] = deque()
        self._value: DonchianValue | None = None

    @property
    def value(self) -> DonchianValue | None:
        """Return the current channel, or None during warm-up."""
        return self._value

    def update(self, high: float, low: float) -> DonchianValue | None:
        """Add the newest bar and return the channel (None until `period` bars)."""
        index = self._count
        self._count += 1
        highs = self._highs
        lows = self._lows
        while highs and highs[-1][1] <= high:
            highs.pop()
        highs.append((index, high))
        while lows and lows[-1][1] >= low:
            lows.pop()
        lows.append((index, low))
        oldest = index - self._period + 1
        if highs[0][0] < oldest:
            highs.popleft()
        if lows[0][0] < oldest:
            lows.popleft()
        if self._count >= self._period:
            self._value = DonchianValue(highs[0][1], lows[0][1])
        return self._value
