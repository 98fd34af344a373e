from __future__ import annotations

import itertools
import math
import random
import statistics
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.market_data import Bar
from legato.trading.synthetic import SyntheticMarketConfig, synthetic_bars

START = datetime(2024, 1, 1, tzinfo=UTC)


def generate(seed: int, count: int, config: SyntheticMarketConfig | None = None) -> list[Bar]:
    return list(
        synthetic_bars(
            random.Random(seed),
            symbol="SYN",
            start=START,
            interval=timedelta(minutes=1),
            start_price=Decimal(100),
            config=config,
            count=count,
        )
    )


def test_same_seed_gives_the_same_bars_value_for_value() -> None:
    assert generate(7, 500) == generate(7, 500)


def test_different_seeds_give_different_bars() -> None:
    assert generate(7, 50) != generate(8, 50)


def test_bars_are_consistent_on_the_tick_grid_and_evenly_spaced() -> None:
    bars = generate(1, 2000)
    tick = Decimal("0.01")
    for index, bar in enumerate(bars):
        assert bar.timestamp == START + timedelta(minutes=index)
        assert bar.low <= min(bar.open, bar.close)
        assert bar.high >= max(bar.open, bar.close)
        assert all(price % tick == 0 for price in (bar.open, bar.high, bar.low, bar.close))
        assert bar.volume >= 0
    # Each bar opens where the previous one closed.
    assert all(b.open == a.close for a, b in itertools.pairwise(bars))


def test_volatility_clusters_big_moves_follow_big_moves() -> None:
    bars = generate(3, 5000, SyntheticMarketConfig(jump_probability=0.0))
    returns = [math.log(float(b.close) / float(a.close)) for a, b in itertools.pairwise(bars)]
    magnitudes = [abs(value) for value in returns]
    # Absolute returns are autocorrelated under GARCH, unlike under a constant volatility.
    assert statistics.correlation(magnitudes[:-1], magnitudes[1:]) > 0.1


def test_jumps_fatten_the_tails() -> None:
    calm = generate(5, 5000, SyntheticMarketConfig(jump_probability=0.0))
    jumpy = generate(5, 5000, SyntheticMarketConfig(jump_probability=0.05, jump_scale=10.0))

    def biggest_move(bars: list[Bar]) -> float:
        return max(abs(math.log(float(b.close) / float(b.open))) for b in bars)

    assert biggest_move(jumpy) > 2 * biggest_move(calm)


def test_generator_is_lazy_and_endless_without_a_count() -> None:
    stream = synthetic_bars(
        random.Random(0),
        symbol="SYN",
        start=START,
        interval=timedelta(seconds=1),
        start_price=Decimal(1),
    )
    assert len(list(itertools.islice(stream, 10_000))) == 10_000


def test_non_stationary_parameters_are_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        SyntheticMarketConfig(alpha=0.5, beta=0.6)
    assert caught.value.field == "alpha"
