"""DeskConfig: the embedded defaults are valid, and a bad [desk] table lists every problem."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from legato.kernel.errors import ConfigError, ValidationError
from legato.trading.desk_config import (
    DataSource,
    DeskConfig,
    ResolverKind,
    StrategyConfig,
    default_instrument,
    desk_config_from_mapping,
    fitted_instrument,
    load_desk_config,
    trading_recorded_market,
)
from legato.trading.market_data import Bar

from .conftest import BarMaker


def test_the_defaults_are_the_embedded_desk_on_one_btc_perpetual() -> None:
    config = DeskConfig()
    assert config.symbols == ("BTC-USDT-PERP",)
    assert config.instrument("BTC-USDT-PERP").is_perpetual
    assert config.data.source is DataSource.SYNTHETIC
    assert config.strategy_for("BTC-USDT-PERP").resolver is ResolverKind.RULES


def test_a_table_is_read_with_decimals_as_strings_or_numbers() -> None:
    config = desk_config_from_mapping(
        {
            "guard_interval": 2,
            "risk": {"max_daily_loss": 0.05, "max_risk_per_trade": "0.02"},
            "strategies": [{"name": "s", "symbols": ["BTC-USDT-PERP"], "resolver": "llm"}],
            "data": {"source": "csv", "path": "binance_BTC-USDT-PERP_5m_2023-01.csv"},
        }
    )
    assert config.risk.max_daily_loss == Decimal("0.05")
    assert config.risk.max_risk_per_trade == Decimal("0.02")
    assert config.strategies == (
        StrategyConfig(name="s", symbols=("BTC-USDT-PERP",), resolver=ResolverKind.LLM),
    )
    assert config.guard_interval == 2.0


def test_every_problem_of_a_bad_table_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        desk_config_from_mapping(
            {
                "bogus": 1,
                "guard_interval": -1,
                "risk": {"max_daily_loss": "2", "max_leverage": "x", "nope": 1},
                "venue": {"starting_balance": "-5"},
                "strategies": [{"symbols": ["BTC-USDT-PERP"], "risk_per_trade": "0.5"}],
                "data": {"source": "tape"},
            }
        )
    fields = {field for field, _, _ in raised.value.problems}
    assert fields == {
        "bogus",
        "guard_interval",
        "risk.max_daily_loss",
        "risk.max_leverage",
        "risk.nope",
        "venue.starting_balance",
        "strategies[0].risk_per_trade",
        "data.source",
    }
    assert "desk config: 8 problem(s)" in str(raised.value)


def test_a_strategy_of_yours_is_named_with_its_keyword_arguments_as_text() -> None:
    config = desk_config_from_mapping(
        {
            "strategies": [
                {
                    "name": "breakout",
                    "code": "breakout:Breakout",
                    "params": {"window": 24, "quantity": "0.5", "share": 0.25, "short": False},
                }
            ]
        }
    )
    (strategy,) = config.strategies
    assert strategy.code == "breakout:Breakout"
    # Converted later, to the types of the class's defaults, as --param NAME=VALUE is.
    assert strategy.params == (
        ("window", "24"),
        ("quantity", "0.5"),
        ("share", "0.25"),
        ("short", "false"),
    )


def test_a_bad_code_or_params_of_a_strategy_is_listed_with_what_would_do() -> None:
    with pytest.raises(ConfigError) as raised:
        desk_config_from_mapping(
            {
                "strategies": [
                    {"name": "a", "code": "breakout"},
                    {"name": "b", "params": {"window": 24}},
                    {"name": "c", "code": "m:C", "params": ["window", 24]},
                    {"name": "d", "code": "m:D", "params": {"window": [24]}},
                ]
            }
        )
    problems = {field: expected for field, _, expected in raised.value.problems}
    assert problems == {
        "strategies[0].code": "MODULE:NAME of a strategy of yours",
        "strategies[1].code": "MODULE:NAME of the strategy params are for",
        "strategies[2].params": "a table of keyword arguments (strings, numbers or booleans "
        "by name)",
        "strategies[3].params": "a table of keyword arguments (strings, numbers or booleans "
        "by name)",
    }


def test_a_strategy_symbol_without_an_instrument_is_a_problem() -> None:
    with pytest.raises(ConfigError) as raised:
        desk_config_from_mapping({"strategies": [{"symbols": ["ETH-USDT-PERP"]}]})
    assert [field for field, _, _ in raised.value.problems] == ["strategies[0].symbols"]


def test_the_desk_table_of_a_toml_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "legato.toml"
    path.write_text("[service]\nport = 8600\n\n[desk.risk]\nmax_open_positions = 2\n")
    assert load_desk_config(path).risk.max_open_positions == 2


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_desk_config(tmp_path / "missing.toml")
    assert raised.value.field == "config_file"


def test_a_recorded_market_no_instrument_lists_is_fitted_to_its_prices(bar: BarMaker) -> None:
    bars = [
        bar(0, "0.0984", "0.0994766", "0.09828605", "0.0994766", "1820.544474", symbol="ETH-BTC"),
        bar(1, "0.09946999", "0.0997238", "0.099", "0.09969", "2527.9", symbol="ETH-BTC"),
    ]
    config = trading_recorded_market(DeskConfig(), "ETH-BTC", bars)
    instrument = config.instrument("ETH-BTC")
    assert (instrument.base_asset, instrument.quote_asset) == ("ETH", "BTC")
    assert instrument.tick_size == Decimal("0.00000001")
    assert instrument.lot_size == Decimal("0.000001")
    assert instrument.min_notional == 0
    assert instrument.is_perpetual
    assert instrument.max_leverage == default_instrument().max_leverage
    assert config.symbols == ("ETH-BTC",)
    assert config.venue.quote_asset == "BTC"
    assert config.venue.starting_balance == DeskConfig().venue.starting_balance


def test_a_listed_market_keeps_its_configured_instrument(bar: BarMaker) -> None:
    bars = [bar(i, "20000", "20010", "19990", "20005") for i in range(2)]
    config = DeskConfig()
    assert trading_recorded_market(config, "BTC-USDT-PERP", bars) is config


@pytest.mark.parametrize("name", ["ETHBTC", "ETH-ETH", "ETH-BTC-USDT", "-PERP"])
def test_a_market_name_without_two_assets_is_refused_with_what_would_do(
    name: str, bar: BarMaker
) -> None:
    bars: list[Bar] = [bar(0, "1", "1", "1", "1", symbol=name)]
    with pytest.raises(ValidationError, match="BASE-QUOTE") as refused:
        fitted_instrument(name, bars, default_instrument())
    assert refused.value.field == "symbol"
    assert refused.value.value == name
