"""TechnicalAnalysisAgent: trend, bias and confidence from the signal vote, on scripted bars."""

from __future__ import annotations

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.agents.snapshot import IndicatorSet
from legato.trading.agents.technical import (
    Bias,
    TechnicalAnalysis,
    TechnicalAnalysisAgent,
    TechnicalSettings,
    Trend,
)
from legato.trading.market_data import Bar

from .scripted_bars import SYMBOL, flat, trend


def last_analysis(bars: list[Bar], settings: TechnicalSettings | None = None) -> TechnicalAnalysis:
    agent = TechnicalAnalysisAgent(SYMBOL, settings)
    outputs = [agent.on_bar(bar) for bar in bars]
    analysis = outputs[-1]
    assert analysis is not None
    return analysis


def test_a_clean_uptrend_reads_up_with_a_long_bias_and_every_signal_agreeing() -> None:
    analysis = last_analysis(trend(150, drift=0.004))
    assert analysis.trend is Trend.UP
    assert analysis.bias is Bias.LONG
    assert analysis.confidence == 1.0
    assert set(analysis.agreeing) == {signal.name for signal in analysis.signals}


def test_a_clean_downtrend_reads_down_with_a_short_bias() -> None:
    analysis = last_analysis(trend(150, drift=-0.004))
    assert analysis.trend is Trend.DOWN
    assert analysis.bias is Bias.SHORT
    assert analysis.confidence >= 5 / 6


def test_a_flat_range_reads_sideways() -> None:
    agent = TechnicalAnalysisAgent(SYMBOL)
    outputs = [agent.on_bar(bar) for bar in flat(300)]
    ready = [output for output in outputs if output is not None]
    assert len(ready) > 200
    sideways = sum(1 for output in ready if output.trend is Trend.SIDEWAYS)
    assert sideways / len(ready) > 0.9


def test_confidence_is_the_share_of_signals_voting_for_the_bias() -> None:
    agent = TechnicalAnalysisAgent(SYMBOL, TechnicalSettings(bias_threshold=0.3))
    for bar in flat(300):
        analysis = agent.on_bar(bar)
        if analysis is None:
            continue
        votes = [signal.vote for signal in analysis.signals]
        assert analysis.score == pytest.approx((votes.count(1) - votes.count(-1)) / 6)
        if analysis.bias is Bias.LONG:
            assert analysis.confidence == pytest.approx(votes.count(1) / 6)
        elif analysis.bias is Bias.SHORT:
            assert analysis.confidence == pytest.approx(votes.count(-1) / 6)
        else:
            assert abs(analysis.score) < 0.3
            assert analysis.confidence == pytest.approx(1 - abs(analysis.score))


def test_no_analysis_until_the_indicators_it_reads_are_warm() -> None:
    agent = TechnicalAnalysisAgent(SYMBOL)
    outputs = [agent.on_bar(bar) for bar in trend(60, drift=0.004)]
    first = next(index for index, output in enumerate(outputs) if output is not None)
    # The slowest input is the 50-bar SMA.
    assert first == 49


def test_analyze_is_a_pure_function_of_the_snapshot() -> None:
    indicators = IndicatorSet(SYMBOL)
    snapshots = [indicators.update(bar) for bar in trend(80, drift=0.004)]
    agent = TechnicalAnalysisAgent(SYMBOL)
    assert agent.analyze(snapshots[-1]) == agent.analyze(snapshots[-1])
    assert agent.analyze(snapshots[-1]) == TechnicalAnalysisAgent(SYMBOL).analyze(snapshots[-1])


@pytest.mark.parametrize(
    "overrides",
    [{"bias_threshold": 0.0}, {"rsi_band": 60.0}, {"directional_min_adx": 101.0}],
)
def test_bad_thresholds_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        TechnicalSettings(**overrides)
