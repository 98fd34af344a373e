"""Indicators: values against talipp (an independent library) on recorded data, and warm-up."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import pytest

# talipp ships no type information; it is only the oracle here.
from talipp.indicators import ADX as OracleADX  # type: ignore[import-untyped]
from talipp.indicators import ATR as OracleATR
from talipp.indicators import BB as OracleBB
from talipp.indicators import EMA as OracleEMA
from talipp.indicators import MACD as OracleMACD
from talipp.indicators import RSI as OracleRSI
from talipp.indicators import SMA as OracleSMA
from talipp.indicators import DonchianChannels as OracleDonchian
from talipp.indicators import StdDev as OracleStdDev
from talipp.ohlcv import OHLCV  # type: ignore[import-untyped]

from legato.kernel.errors import ValidationError
from legato.trading.agents.indicators import (
    ADX,
    ATR,
    EMA,
    MACD,
    RSI,
    SMA,
    BollingerBands,
    DonchianChannel,
    RealizedVolatility,
)
from legato.trading.market_data import default_market_data_dir, load_bars

DATA = default_market_data_dir()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"recorded data not found at {DATA}")
BAR_FILES = (
    "binance_BTC-USDT-PERP_5m_2023-01.csv",
    "binance_ETH-BTC_5m_2018-01.csv",
    "binance_XRP-ETH_1m_2019-10.csv",
)


class Series:
    """One recorded file as float columns, plus talipp's OHLCV input."""

    def __init__(self, name: str) -> None:
        bars = list(load_bars(DATA / name))
        self.high = [float(bar.high) for bar in bars]
        self.low = [float(bar.low) for bar in bars]
        self.close = [float(bar.close) for bar in bars]
        self.ohlcv = [
            OHLCV(float(bar.open), high, low, close, float(bar.volume))
            for bar, high, low, close in zip(bars, self.high, self.low, self.close, strict=True)
        ]
        # Indicator values are compared relative to the price scale (ETH-BTC trades near 0.1).
        self.scale = statistics.fmean(self.close)


_series: dict[str, Series] = {}


@pytest.fixture(params=BAR_FILES)
def recorded(request: pytest.FixtureRequest) -> Series:
    """A recorded bar file, loaded once per test session."""
    name: str = request.param
    if not DATA.is_dir():
        pytest.skip(f"recorded data not found at {DATA}")
    if name not in _series:
        _series[name] = Series(name)
    return _series[name]


def assert_same(
    ours: Sequence[float | None],
    theirs: Sequence[Any],
    *,
    tolerance: float,
    start: int = 0,
) -> None:
    """Same readiness on every bar, and values within `tolerance` from bar `start` on."""
    assert len(ours) == len(theirs)
    compared = 0
    for index, (mine, oracle) in enumerate(zip(ours, theirs, strict=True)):
        assert (mine is None) == (oracle is None), f"readiness differs at bar {index}"
        if mine is None or index < start:
            continue
        assert mine == pytest.approx(oracle, abs=tolerance), f"value differs at bar {index}"
        compared += 1
    assert compared > 1000


def field(values: Sequence[Any], name: str) -> list[Any]:
    return [None if value is None else getattr(value, name) for value in values]


def run(indicator: Callable[..., Any], *columns: Sequence[float]) -> list[Any]:
    return [indicator(*row) for row in zip(*columns, strict=True)]


@needs_data
def test_sma_and_ema_match_the_oracle(recorded: Series) -> None:
    tolerance = recorded.scale * 1e-12
    assert_same(
        run(SMA(50).update, recorded.close),
        list(OracleSMA(50, recorded.close)),
        tolerance=tolerance,
    )
    assert_same(
        run(EMA(12).update, recorded.close),
        list(OracleEMA(12, recorded.close)),
        tolerance=tolerance,
    )


@needs_data
def test_rsi_matches_the_oracle_once_the_seed_is_forgotten(recorded: Series) -> None:
    # talipp seeds its first averages from period-1 changes, Wilder from `period`; the seed's
    # weight decays by 13/14 a bar, so by bar 300 the two agree to far below a rounding error.
    assert_same(
        run(RSI(14).update, recorded.close),
        list(OracleRSI(14, recorded.close)),
        tolerance=1e-6,
        start=300,
    )


@needs_data
def test_macd_matches_the_oracle(recorded: Series) -> None:
    ours = run(MACD(12, 26, 9).update, recorded.close)
    theirs = [
        None if value is None or value.signal is None else value
        for value in OracleMACD(12, 26, 9, recorded.close)
    ]
    tolerance = recorded.scale * 1e-11
    for name in ("line", "signal", "histogram"):
        oracle_name = "macd" if name == "line" else name
        assert_same(field(ours, name), field(theirs, oracle_name), tolerance=tolerance)


@needs_data
def test_atr_matches_the_oracle(recorded: Series) -> None:
    assert_same(
        run(ATR(14).update, recorded.high, recorded.low, recorded.close),
        list(OracleATR(14, recorded.ohlcv)),
        tolerance=recorded.scale * 1e-12,
    )


@needs_data
def test_bollinger_bands_match_the_oracle(recorded: Series) -> None:
    ours = run(BollingerBands(20, 2.0).update, recorded.close)
    theirs = list(OracleBB(20, 2.0, recorded.close))
    tolerance = recorded.scale * 1e-10
    assert_same(field(ours, "lower"), field(theirs, "lb"), tolerance=tolerance)
    assert_same(field(ours, "middle"), field(theirs, "cb"), tolerance=tolerance)
    assert_same(field(ours, "upper"), field(theirs, "ub"), tolerance=tolerance)


@needs_data
def test_adx_and_directional_indices_match_the_oracle(recorded: Series) -> None:
    ours = run(ADX(14, 14).update, recorded.high, recorded.low, recorded.close)
    theirs = [
        None if value is None or value.adx is None else value
        for value in OracleADX(14, 14, recorded.ohlcv)
    ]
    assert_same(field(ours, "adx"), field(theirs, "adx"), tolerance=1e-9)
    assert_same(field(ours, "plus_di"), field(theirs, "plus_di"), tolerance=1e-9)
    assert_same(field(ours, "minus_di"), field(theirs, "minus_di"), tolerance=1e-9)


@needs_data
def test_realized_volatility_matches_the_oracle_on_log_returns(recorded: Series) -> None:
    returns = [math.log(b / a) for a, b in itertools.pairwise(recorded.close)]
    theirs = [None, *OracleStdDev(20, returns)]
    assert_same(run(RealizedVolatility(20).update, recorded.close), theirs, tolerance=1e-12)


@needs_data
def test_donchian_channel_matches_the_oracle(recorded: Series) -> None:
    ours = run(DonchianChannel(20).update, recorded.high, recorded.low)
    theirs = list(OracleDonchian(20, recorded.ohlcv))
    assert_same(field(ours, "upper"), field(theirs, "ub"), tolerance=0.0)
    assert_same(field(ours, "lower"), field(theirs, "lb"), tolerance=0.0)


def test_rsi_seed_is_wilders_plain_average_of_the_first_changes() -> None:
    rsi = RSI(3)
    # Changes +2, -1, +3: average gain 5/3, average loss 1/3, RS 5, RSI 100 - 100/6.
    assert [rsi.update(close) for close in (10.0, 12.0, 11.0)] == [None, None, None]
    assert rsi.update(14.0) == pytest.approx(100 - 100 / 6)
    # Then Wilder smoothing: change -2 gives gain (5/3*2)/3, loss (1/3*2 + 2)/3.
    gain, loss = (5 / 3 * 2) / 3, (1 / 3 * 2 + 2) / 3
    assert rsi.update(12.0) == pytest.approx(100 - 100 / (1 + gain / loss))


def test_rsi_of_a_flat_series_is_neutral_and_of_a_rising_one_is_100() -> None:
    flat = RSI(5)
    rising = RSI(5)
    for step in range(10):
        flat.update(50.0)
        rising.update(50.0 + step)
    assert flat.value == 50.0
    assert rising.value == 100.0


@pytest.mark.parametrize(
    ("make", "ready_after"),
    [
        (lambda: SMA(5), 5),
        (lambda: EMA(5), 5),
        (lambda: RSI(5), 6),
        (lambda: MACD(3, 6, 4), 9),
        (lambda: BollingerBands(5), 5),
        (lambda: RealizedVolatility(5), 6),
    ],
)
def test_close_indicators_are_not_ready_until_they_have_enough_bars(
    make: Callable[[], Any], ready_after: int
) -> None:
    indicator = make()
    closes = [100 + math.sin(step) for step in range(ready_after)]
    values = [indicator.update(close) for close in closes]
    assert values[:-1] == [None] * (ready_after - 1)
    assert values[-1] is not None
    assert indicator.value == values[-1]


@pytest.mark.parametrize(
    ("make", "ready_after"),
    [(lambda: ATR(5), 5), (lambda: ADX(4, 3), 7), (lambda: DonchianChannel(5), 5)],
)
def test_bar_indicators_are_not_ready_until_they_have_enough_bars(
    make: Callable[[], Any], ready_after: int
) -> None:
    indicator = make()
    values = []
    for step in range(ready_after):
        close = 100 + 3 * math.sin(step)
        high, low = close + 1 + step % 3, close - 1
        values.append(
            indicator.update(high, low)
            if isinstance(indicator, DonchianChannel)
            else indicator.update(high, low, close)
        )
    assert values[:-1] == [None] * (ready_after - 1)
    assert values[-1] is not None


def test_windowed_statistics_do_not_drift_over_a_long_series() -> None:
    rng = random.Random(11)
    closes = [20_000 + rng.uniform(-500, 500) for _ in range(50_000)]
    sma = SMA(20)
    bands = BollingerBands(20, 2.0)
    for close in closes:
        sma.update(close)
        bands.update(close)
    window = closes[-20:]
    assert sma.value == pytest.approx(statistics.fmean(window), rel=1e-13)
    assert bands.value is not None
    expected_spread = 2 * statistics.pstdev(window)
    assert bands.value.upper - bands.value.middle == pytest.approx(expected_spread, rel=1e-9)


def test_bollinger_percent_b_places_the_close_between_the_bands() -> None:
    bands = BollingerBands(4, 1.0)
    for close in (10.0, 12.0, 10.0, 12.0):
        value = bands.update(close)
    assert value is not None
    # Mean 11, population deviation 1: bands 10..12, the last close on the upper band.
    assert (value.lower, value.middle, value.upper) == pytest.approx((10.0, 11.0, 12.0))
    assert value.percent_b == pytest.approx(1.0)
    assert value.bandwidth == pytest.approx(2 / 11)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SMA(0),
        lambda: EMA(-1),
        lambda: RSI(0),
        lambda: MACD(26, 12, 9),
        lambda: ATR(0),
        lambda: BollingerBands(1),
        lambda: BollingerBands(20, 0.0),
        lambda: ADX(0, 14),
        lambda: RealizedVolatility(1),
        lambda: DonchianChannel(0),
    ],
)
def test_bad_periods_are_refused_with_a_validation_error(make: Callable[[], Any]) -> None:
    with pytest.raises(ValidationError):
        make()
