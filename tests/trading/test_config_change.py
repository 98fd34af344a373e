"""The diff of two desk configurations: which fields changed, and which a running desk takes."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from legato.trading.config_change import diff_desk_configs
from legato.trading.desk_config import (
    DataSettings,
    DeskConfig,
    LLMDeskSettings,
    ResolverKind,
    StrategyConfig,
    VenueSettings,
    default_instrument,
)
from legato.trading.risk import RiskLimits

BASE = DeskConfig()


def test_identical_configs_make_an_empty_applicable_change() -> None:
    change = diff_desk_configs(BASE, DeskConfig())
    assert change.empty
    assert change.applicable
    assert "no change" in change.summary()


def test_risk_limits_strategy_thresholds_and_intervals_are_safe_with_old_and_new_values() -> None:
    strategy = dataclasses.replace(
        BASE.strategies[0], min_consensus=0.7, risk_per_trade=Decimal("0.002")
    )
    new = dataclasses.replace(
        BASE,
        risk=dataclasses.replace(BASE.risk, max_open_positions=2, max_daily_loss=Decimal("0.01")),
        strategies=(strategy,),
        guard_interval=5.0,
    )
    change = diff_desk_configs(BASE, new)
    by_field = {c.field: c for c in change.changes}
    assert set(by_field) == {
        "risk.max_open_positions",
        "risk.max_daily_loss",
        "strategies[consensus].min_consensus",
        "strategies[consensus].risk_per_trade",
        "guard_interval",
    }
    assert change.applicable
    assert all(c.safe and c.effect for c in change.changes)
    assert (by_field["risk.max_open_positions"].old, by_field["risk.max_open_positions"].new) == (
        5,
        2,
    )
    assert by_field["risk.max_daily_loss"].as_dict()["new"] == "0.01"
    assert by_field["strategies[consensus].min_consensus"].old == 0.5


def test_venue_data_llm_and_symbol_changes_need_a_restart_and_say_why() -> None:
    other = dataclasses.replace(default_instrument(), symbol="ETH-USDT-PERP", base_asset="ETH")
    new = dataclasses.replace(
        BASE,
        instruments=(default_instrument(), other),
        strategies=(
            dataclasses.replace(BASE.strategies[0], symbols=("BTC-USDT-PERP", "ETH-USDT-PERP")),
        ),
        venue=VenueSettings(starting_balance=Decimal(5_000)),
        data=DataSettings(seed=9),
        risk=dataclasses.replace(BASE.risk, max_open_positions=1),
    )
    change = diff_desk_configs(BASE, new)
    refused = {c.field: c for c in change.refused}
    assert set(refused) == {
        "instruments",
        "strategies[consensus].symbols",
        "venue.starting_balance",
        "data.seed",
    }
    assert not change.applicable
    assert refused["venue.starting_balance"].old == Decimal(100_000)
    assert refused["venue.starting_balance"].new == Decimal(5_000)
    assert "venue" in (refused["venue.starting_balance"].restart_reason or "")
    assert "symbol" in (refused["strategies[consensus].symbols"].restart_reason or "")
    # The safe change rides along but is held back with the refused ones.
    assert [c.field for c in change.safe] == ["risk.max_open_positions"]
    summary = change.summary()
    assert "refused, nothing changed" in summary
    assert "venue.starting_balance: 100000 -> 5000" in summary
    assert change.as_dict()["held_back"][0]["field"] == "risk.max_open_positions"


def test_a_renamed_strategy_or_a_new_resolver_needs_a_restart() -> None:
    renamed = dataclasses.replace(BASE, strategies=(StrategyConfig(name="trend"),))
    llm = dataclasses.replace(
        BASE, strategies=(dataclasses.replace(BASE.strategies[0], resolver=ResolverKind.LLM),)
    )
    assert [c.field for c in diff_desk_configs(BASE, renamed).refused] == ["strategies"]
    [resolver] = diff_desk_configs(BASE, llm).refused
    assert (resolver.field, resolver.old, resolver.new) == (
        "strategies[consensus].resolver",
        ResolverKind.RULES,
        ResolverKind.LLM,
    )
    assert resolver.as_dict()["new"] == "llm"


def test_a_strategy_of_yours_or_its_parameters_changed_needs_a_restart() -> None:
    mine = dataclasses.replace(BASE.strategies[0], code="mine:Mine", params=(("window", "24"),))
    before = dataclasses.replace(BASE, strategies=(mine,))
    after = dataclasses.replace(
        BASE,
        strategies=(dataclasses.replace(mine, code="mine:Other", params=(("window", "48"),)),),
    )
    refused = {c.field: c.restart_reason for c in diff_desk_configs(before, after).refused}
    assert refused == {
        "strategies[consensus].code": "a strategy of yours is imported and made at start",
        "strategies[consensus].params": "a strategy of yours is made with its parameters at start",
    }


def test_an_llm_key_change_is_refused_without_showing_the_key() -> None:
    new = dataclasses.replace(BASE, llm=LLMDeskSettings(api_key="sk-secret-value"))
    [change] = diff_desk_configs(BASE, new).changes
    assert change.field == "llm.api_key"
    assert not change.safe
    assert "sk-secret" not in str(change.as_dict())
    assert "sk-secret" not in change.describe()


def test_every_risk_limit_field_is_classified_safe() -> None:
    tighter = RiskLimits(
        max_risk_per_trade=Decimal("0.005"),
        min_reward_to_risk=Decimal(2),
        max_leverage=Decimal(2),
        max_position_to_equity=Decimal("0.5"),
        max_position_notional=Decimal(1_000),
        max_asset_exposure_to_equity=Decimal(1),
        max_total_exposure_to_equity=Decimal(2),
        max_open_positions=2,
        max_daily_loss=Decimal("0.02"),
        max_drawdown=Decimal("0.05"),
        reducing_at=Decimal("0.5"),
        max_consecutive_losses=2,
        cooldown_seconds=60.0,
        max_unprotected_seconds=5.0,
        close_unprotected_seconds=30.0,
        flatten_on_halt=True,
    )
    change = diff_desk_configs(BASE, dataclasses.replace(BASE, risk=tighter))
    assert len(change.changes) == len(dataclasses.fields(RiskLimits))
    assert change.applicable
