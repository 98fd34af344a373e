"""IndicatorSet: one snapshot per bar, explicit warm-up, and refusal of out-of-order bars."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.agents.snapshot import IndicatorSet, IndicatorSettings, IndicatorSnapshot

from .scripted_bars import SYMBOL, flat, trend


def _ready(snapshot: IndicatorSnapshot) -> bool:
    return all(
        getattr(snapshot, name) is not None
        for name in (
            "ema_fast",
            "ema_slow",
            "sma",
            "rsi",
            "macd",
            "atr",
            "bollinger",
            "adx",
            "volatility",
            "volatility_baseline",
            "donchian",
        )
    )


def test_every_indicator_is_ready_exactly_at_the_stated_warm_up() -> None:
    settings = IndicatorSettings()
    indicators = IndicatorSet(SYMBOL, settings)
    readiness = [_ready(indicators.update(bar)) for bar in flat(settings.warm_up + 5)]
    assert readiness.index(True) == settings.warm_up - 1
    assert all(readiness[settings.warm_up - 1 :])


def test_snapshots_are_frozen_values_carrying_the_exact_close() -> None:
    bar = trend(1, drift=0.0)[0]
    snapshot = IndicatorSet(SYMBOL).update(bar)
    assert snapshot.close_price == bar.close
    assert snapshot.bars_seen == 1
    with pytest.raises(FrozenInstanceError):
        snapshot.close = 0.0  # type: ignore[misc]


def test_breakout_channel_covers_the_bars_before_the_current_one() -> None:
    settings = IndicatorSettings(donchian=3)
    indicators = IndicatorSet(SYMBOL, settings)
    bars = trend(5, drift=0.01)
    snapshots = [indicators.update(bar) for bar in bars]
    channel = snapshots[3].donchian
    assert channel is not None
    assert channel.upper == max(float(bar.high) for bar in bars[:3])
    assert channel.lower == min(float(bar.low) for bar in bars[:3])
    # In a rising series the newest close sits above the previous bars' highs: a breakout.
    assert snapshots[4].close > (snapshots[4].donchian or channel).upper


def test_a_bar_not_after_the_last_one_is_refused_and_changes_nothing() -> None:
    indicators = IndicatorSet(SYMBOL)
    bars = trend(3, drift=0.01)
    indicators.update(bars[0])
    indicators.update(bars[1])
    with pytest.raises(ValidationError) as raised:
        indicators.update(bars[1])
    assert raised.value.field == "bar.timestamp"
    assert indicators.bars_seen == 2
    assert indicators.update(bars[2]).bars_seen == 3


def test_a_bar_of_another_symbol_is_refused() -> None:
    indicators = IndicatorSet(SYMBOL)
    other = replace(trend(1, drift=0.0)[0], symbol="ETH-USDT-PERP")
    with pytest.raises(ValidationError) as raised:
        indicators.update(other)
    assert raised.value.field == "bar.symbol"
    assert indicators.bars_seen == 0


@pytest.mark.parametrize(
    "overrides",
    [{"ema_fast": 30, "ema_slow": 26}, {"sma": 1}, {"bollinger_width": -1.0}, {"adx": True}],
)
def test_bad_indicator_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        IndicatorSettings(**overrides)  # type: ignore[arg-type]
