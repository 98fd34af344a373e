"""RegimeDetectionAgent: trending bull and bear, ranging and high volatility on scripted bars."""

from __future__ import annotations

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.agents.regime import (
    Regime,
    RegimeAssessment,
    RegimeDetectionAgent,
    RegimeSettings,
)
from legato.trading.market_data import Bar

from .scripted_bars import SYMBOL, burst, flat, trend


def assessments(bars: list[Bar]) -> list[RegimeAssessment | None]:
    agent = RegimeDetectionAgent(SYMBOL)
    return [agent.on_bar(bar) for bar in bars]


def test_a_clean_uptrend_is_a_confident_trending_bull() -> None:
    last = assessments(trend(150, drift=0.004))[-1]
    assert last is not None
    assert last.regime is Regime.TRENDING_BULL
    assert last.confidence == 1.0
    assert last.plus_di > last.minus_di


def test_a_clean_downtrend_is_a_trending_bear() -> None:
    last = assessments(trend(150, drift=-0.004))[-1]
    assert last is not None
    assert last.regime is Regime.TRENDING_BEAR


def test_a_flat_noisy_series_is_ranging() -> None:
    ready = [item for item in assessments(flat(400)) if item is not None]
    ranging = [item for item in ready if item.regime is Regime.RANGING]
    assert len(ranging) / len(ready) > 0.9
    assert ready[-1].regime is Regime.RANGING
    assert 0.5 <= ready[-1].confidence <= 1.0


def test_a_volatility_burst_is_high_volatility_within_a_few_bars() -> None:
    results = assessments(burst(200, 10))
    calm, wild = results[199], results[200:]
    assert calm is not None
    assert calm.regime is Regime.RANGING
    assert all(item is not None for item in wild)
    flags = [item is not None and item.regime is Regime.HIGH_VOLATILITY for item in wild]
    # A 20-bar volatility needs a few wild bars to double; from then on the regime holds.
    first = flags.index(True)
    assert first <= 5
    assert all(flags[first:])
    last = wild[-1]
    assert last is not None
    assert last.volatility_ratio >= 2.0
    assert any("baseline" in reason for reason in last.reasons)


def test_a_wide_atr_alone_signals_high_volatility() -> None:
    settings = RegimeSettings(high_atr_share=0.001)
    agent = RegimeDetectionAgent(SYMBOL, settings)
    last = [agent.on_bar(bar) for bar in flat(120)][-1]
    assert last is not None
    assert last.regime is Regime.HIGH_VOLATILITY
    assert any("ATR" in reason for reason in last.reasons)


def test_confidence_rises_from_half_at_the_threshold_to_one_at_a_clear_reading() -> None:
    strong = RegimeDetectionAgent(SYMBOL, RegimeSettings(trend_adx=25, strong_adx=100))
    last = [strong.on_bar(bar) for bar in trend(150, drift=0.004)][-1]
    assert last is not None
    assert last.confidence == pytest.approx(0.5 + 0.5 * (last.adx - 25) / 75)


def test_no_regime_until_the_volatility_baseline_is_warm() -> None:
    results = assessments(flat(80))
    first = next(index for index, item in enumerate(results) if item is not None)
    # Realised volatility needs 21 bars, its 50-bar baseline 49 more.
    assert first == 69


@pytest.mark.parametrize(
    "overrides",
    [{"trend_adx": 50.0}, {"calm_adx": 30.0}, {"burst_ratio": 1.0}, {"high_atr_share": 0.0}],
)
def test_bad_thresholds_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        RegimeSettings(**overrides)
