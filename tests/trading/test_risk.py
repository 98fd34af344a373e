from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.kernel.errors import ValidationError
from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.orders import OrderSide
from legato.trading.positions import Position, PositionSide
from legato.trading.proposals import EntryType, TradeProposal
from legato.trading.risk import (
    DecisionOutcome,
    ReasonCode,
    ReasonEffect,
    RiskLimits,
    RiskManagementEngine,
    RiskState,
    TradingState,
    evaluate_trading_state,
)

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PERP = "BTC-USDT-PERP"
BTC = Instrument(
    symbol=PERP,
    base_asset="BTC",
    quote_asset="USDT",
    tick_size=Decimal("0.1"),
    lot_size=Decimal("0.001"),
    min_notional=Decimal(5),
    kind=InstrumentKind.PERPETUAL,
    max_leverage=Decimal(20),
)
ETH = Instrument(
    symbol="ETH-USDT-PERP",
    base_asset="ETH",
    quote_asset="USDT",
    tick_size=Decimal("0.01"),
    lot_size=Decimal("0.01"),
    min_notional=Decimal(5),
    kind=InstrumentKind.PERPETUAL,
    max_leverage=Decimal(10),
)
SPOT = Instrument("SOL/USDT", "SOL", "USDT", Decimal("0.01"), Decimal("0.1"), Decimal(10))


def engine(**limits: Any) -> RiskManagementEngine:
    return RiskManagementEngine([BTC, ETH, SPOT], RiskLimits(**limits))


def state(**changes: Any) -> RiskState:
    fields: dict[str, Any] = {
        "equity": Decimal(10_000),
        "start_of_day_equity": Decimal(10_000),
        "peak_equity": Decimal(10_000),
        "now": NOW,
    }
    fields.update(changes)
    return RiskState(**fields)


def buy(quantity: str = "10", **changes: Any) -> TradeProposal:
    # Entry 100, stop 98 (2 away), target 104 (reward-to-risk 2): 10 risks 20 USDT.
    fields: dict[str, Any] = {
        "symbol": PERP,
        "side": OrderSide.BUY,
        "quantity": Decimal(quantity),
        "entry_price": Decimal(100),
        "stop_loss": Decimal(98),
        "take_profit": Decimal(104),
    }
    fields.update(changes)
    return TradeProposal(**fields)


def position(symbol: str = "ETH-USDT-PERP", side: PositionSide = PositionSide.LONG) -> Position:
    return Position.open(symbol, side, Decimal(1), Decimal(100))


def test_a_trade_inside_every_limit_is_approved_unchanged() -> None:
    decision = engine().validate_trade(buy(), state())
    assert decision.outcome is DecisionOutcome.APPROVED
    assert decision.quantity == Decimal(10)
    assert decision.reasons == ()
    assert decision.approved_proposal == buy()
    assert decision.trading_state is TradingState.ACTIVE


def test_an_unknown_symbol_is_rejected_and_named() -> None:
    decision = engine().validate_trade(buy(symbol="DOGE-USDT-PERP"), state())
    assert decision.outcome is DecisionOutcome.REJECTED
    assert decision.codes == (ReasonCode.UNKNOWN_SYMBOL,)
    assert "'DOGE-USDT-PERP' is not a known instrument" in decision.reasons[0].message
    assert decision.quantity == 0
    assert decision.approved_proposal is None


def test_a_trade_risking_more_than_the_budget_is_sized_down_to_it() -> None:
    # 1% of 10,000 = 100 USDT; 2 USDT a unit to the stop: at most 50 units.
    decision = engine().validate_trade(buy("80"), state())
    assert decision.outcome is DecisionOutcome.MODIFIED
    assert decision.quantity == Decimal(50)
    (reason,) = decision.reasons
    assert reason.code is ReasonCode.RISK_PER_TRADE
    assert reason.effect is ReasonEffect.RESIZE
    assert reason.limit == Decimal(100)
    assert reason.actual == Decimal(160)
    assert "1.6% of equity" in reason.message
    assert "size cut to 50" in reason.message
    approved = decision.approved_proposal
    assert approved is not None
    assert approved.quantity == Decimal(50)


def test_a_risk_budget_below_one_lot_rejects_instead_of_resizing() -> None:
    # 1% of 100 USDT is 1 USDT; with the stop 10,000 away not even one lot fits.
    wide = buy("1", entry_price=Decimal(20_000), stop_loss=Decimal(10_000), take_profit=None)
    decision = engine(min_reward_to_risk=Decimal(0)).validate_trade(
        wide, state(equity=Decimal(100), start_of_day_equity=Decimal(100), peak_equity=Decimal(100))
    )
    assert decision.outcome is DecisionOutcome.REJECTED
    assert ReasonCode.RISK_PER_TRADE in decision.codes
    below = decision.reasons[decision.codes.index(ReasonCode.BELOW_MINIMUM_SIZE)]
    assert below.limit == Decimal(5)
    assert "one lot of 0.001" in below.message


def test_a_proposal_under_the_minimum_notional_is_rejected() -> None:
    decision = engine().validate_trade(buy("0.04"), state())
    assert decision.codes == (ReasonCode.BELOW_MINIMUM_SIZE,)
    assert decision.reasons[0].actual == Decimal("4.000")


def test_a_quantity_off_the_lot_grid_is_rounded_down() -> None:
    decision = engine().validate_trade(buy("10.0005"), state())
    assert decision.outcome is DecisionOutcome.MODIFIED
    assert decision.quantity == Decimal("10.000")
    assert decision.codes == (ReasonCode.QUANTITY_ROUNDED,)


def test_the_position_notional_cap_sizes_the_trade_down() -> None:
    # Tight stop (0.1 away): risk allows 1000 units, but 1x equity is 100 units of 100.
    tight = buy("150", stop_loss=Decimal("99.9"), take_profit=Decimal(101))
    decision = engine().validate_trade(tight, state())
    assert decision.outcome is DecisionOutcome.MODIFIED
    assert decision.quantity == Decimal(100)
    reason = decision.reasons[decision.codes.index(ReasonCode.POSITION_NOTIONAL)]
    assert reason.limit == Decimal(10_000)
    assert reason.actual == Decimal(15_000)


def test_an_absolute_position_cap_counts_what_is_already_held() -> None:
    held = Position.open(PERP, PositionSide.LONG, Decimal(20), Decimal(100))
    decision = engine(max_position_notional=Decimal(3000)).validate_trade(
        buy("15"), state(open_positions=(held,), exposure_by_asset={"BTC": Decimal(2000)})
    )
    assert decision.quantity == Decimal(10)
    reason = decision.reasons[decision.codes.index(ReasonCode.POSITION_NOTIONAL)]
    assert (reason.limit, reason.actual) == (Decimal(3000), Decimal(3500))


def test_per_asset_exposure_counts_every_instrument_on_the_asset() -> None:
    # 1.5x equity = 15,000 USDT of BTC; 14,000 already held through other instruments.
    decision = engine().validate_trade(buy("20"), state(exposure_by_asset={"BTC": Decimal(14_000)}))
    assert decision.quantity == Decimal(10)
    reason = decision.reasons[decision.codes.index(ReasonCode.ASSET_EXPOSURE)]
    assert (reason.limit, reason.actual) == (Decimal(15_000), Decimal(16_000))


def test_total_exposure_caps_the_trade_across_all_assets() -> None:
    exposure = {"ETH": Decimal(10_000), "SOL": Decimal(19_500)}
    decision = engine().validate_trade(buy("20"), state(exposure_by_asset=exposure))
    assert decision.quantity == Decimal(5)
    assert decision.codes == (ReasonCode.TOTAL_EXPOSURE,)


def test_exposure_already_over_the_limit_rejects_the_trade() -> None:
    decision = engine().validate_trade(buy("1"), state(exposure_by_asset={"ETH": Decimal(31_000)}))
    assert decision.outcome is DecisionOutcome.REJECTED
    assert decision.codes == (ReasonCode.TOTAL_EXPOSURE, ReasonCode.BELOW_MINIMUM_SIZE)


def test_leverage_over_the_desk_maximum_is_rejected() -> None:
    decision = engine().validate_trade(buy("1", leverage=Decimal(6)), state())
    assert decision.codes == (ReasonCode.LEVERAGE,)
    assert (decision.reasons[0].limit, decision.reasons[0].actual) == (Decimal(5), Decimal(6))


def test_leverage_over_the_instrument_maximum_is_rejected_even_if_the_desk_allows_it() -> None:
    eth = buy("1", symbol="ETH-USDT-PERP", leverage=Decimal(11))
    decision = engine(max_leverage=Decimal(12)).validate_trade(eth, state())
    assert decision.codes == (ReasonCode.LEVERAGE,)
    assert decision.reasons[0].limit == Decimal(10)
    assert "ETH-USDT-PERP allows 10x" in decision.reasons[0].message


def test_leverage_on_a_spot_instrument_is_rejected() -> None:
    sol = buy("1", symbol="SOL/USDT", leverage=Decimal(2))
    decision = engine().validate_trade(sol, state())
    assert decision.codes == (ReasonCode.LEVERAGE,)
    assert decision.reasons[0].limit == Decimal(1)


def test_a_poor_reward_to_risk_is_rejected() -> None:
    decision = engine().validate_trade(buy(take_profit=Decimal(102)), state())
    assert decision.codes == (ReasonCode.REWARD_TO_RISK,)
    assert (decision.reasons[0].limit, decision.reasons[0].actual) == (Decimal("1.5"), Decimal(1))


def test_a_missing_take_profit_is_rejected_unless_the_minimum_is_off() -> None:
    no_target = buy(take_profit=None)
    assert engine().validate_trade(no_target, state()).codes == (ReasonCode.REWARD_TO_RISK,)
    relaxed = engine(min_reward_to_risk=Decimal(0)).validate_trade(no_target, state())
    assert relaxed.outcome is DecisionOutcome.APPROVED


def test_a_limit_price_off_the_tick_grid_is_rejected_but_a_market_reference_is_not() -> None:
    off_grid = buy(entry_price=Decimal("100.05"), entry_type=EntryType.LIMIT)
    decision = engine().validate_trade(off_grid, state())
    assert decision.codes == (ReasonCode.PRICE_OFF_TICK,)
    market = engine().validate_trade(buy(entry_price=Decimal("100.05")), state())
    assert market.outcome is DecisionOutcome.APPROVED


def test_too_many_open_positions_rejects_a_new_one_but_not_adding_to_one() -> None:
    held = (position("ETH-USDT-PERP"), position(PERP))
    limited = engine(max_open_positions=2)
    assert limited.validate_trade(buy("1"), state(open_positions=held)).approved
    new_symbol = buy("1", symbol="SOL/USDT", stop_loss=Decimal(95), take_profit=Decimal(110))
    decision = limited.validate_trade(new_symbol, state(open_positions=held))
    assert decision.codes == (ReasonCode.MAX_OPEN_POSITIONS,)
    assert (decision.reasons[0].limit, decision.reasons[0].actual) == (Decimal(2), Decimal(3))


def test_consecutive_losses_start_a_cooldown_measured_on_the_state_clock() -> None:
    losing = {"consecutive_losses": 3, "last_loss_at": NOW - timedelta(minutes=10)}
    decision = engine().validate_trade(buy(), state(**losing))
    assert decision.codes == (ReasonCode.COOLDOWN,)
    assert "3000 s left" in decision.reasons[0].message
    later = state(**losing).now + timedelta(minutes=51)
    assert engine().validate_trade(buy(), state(**losing, now=later)).approved
    two = {"consecutive_losses": 2, "last_loss_at": NOW}
    assert engine().validate_trade(buy(), state(**two)).approved


def test_a_cooldown_still_lets_positions_be_reduced() -> None:
    losing = {"consecutive_losses": 5, "last_loss_at": NOW, "open_positions": (position(PERP),)}
    reduce = buy("1", side=OrderSide.SELL, stop_loss=None, take_profit=None, reduce_only=True)
    assert engine().validate_trade(reduce, state(**losing)).outcome is DecisionOutcome.APPROVED


def test_the_kill_switch_halts_and_rejects_everything() -> None:
    killed = state(kill_switch=True, open_positions=(position(PERP),))
    reduce = buy("1", side=OrderSide.SELL, stop_loss=None, take_profit=None, reduce_only=True)
    for proposal in (buy(), reduce):
        decision = engine().validate_trade(proposal, killed)
        assert decision.outcome is DecisionOutcome.REJECTED
        assert decision.codes == (ReasonCode.KILL_SWITCH,)
        assert decision.trading_state is TradingState.HALTED


def test_the_daily_loss_limit_halts_trading() -> None:
    status = engine().evaluate_state(state(equity=Decimal(9_700)))
    assert status.state is TradingState.HALTED
    (reason,) = status.reasons
    assert reason.code is ReasonCode.DAILY_LOSS_LIMIT
    assert (reason.limit, reason.actual) == (Decimal("0.03"), Decimal("0.03"))
    assert "today's loss reached 3% of start-of-day equity" in reason.message


def test_the_drawdown_limit_halts_trading_until_the_peak_is_reset() -> None:
    deep = state(equity=Decimal(9_000), start_of_day_equity=Decimal(9_000))
    status = engine().evaluate_state(deep)
    assert status.state is TradingState.HALTED
    assert [r.code for r in status.reasons] == [ReasonCode.DRAWDOWN_LIMIT]
    reset = state(
        equity=Decimal(9_000), start_of_day_equity=Decimal(9_000), peak_equity=Decimal(9_000)
    )
    assert engine().evaluate_state(reset).state is TradingState.ACTIVE


def test_trading_turns_reducing_before_it_halts_as_equity_falls() -> None:
    states = [
        engine().evaluate_state(state(equity=Decimal(equity))).state
        for equity in ("10000", "9800", "9760", "9750", "9700")
    ]
    assert states == [
        TradingState.ACTIVE,
        TradingState.ACTIVE,
        TradingState.REDUCING,  # 2.4% = 80% of the 3% limit
        TradingState.REDUCING,
        TradingState.HALTED,
    ]


def test_a_daily_loss_halt_holds_when_equity_bounces_back_the_same_day() -> None:
    bounced = state(equity=Decimal(9_900), day_low_equity=Decimal(9_650))
    status = engine().evaluate_state(bounced)
    assert status.state is TradingState.HALTED
    assert status.reasons[0].actual == Decimal("0.035")
    assert "reached 3.5% of start-of-day equity (now 1%)" in status.reasons[0].message


def test_a_drawdown_halt_holds_until_the_peak_and_trough_are_reset() -> None:
    bounced = state(
        equity=Decimal(9_500), start_of_day_equity=Decimal(9_500), trough_equity=Decimal(8_900)
    )
    assert engine().evaluate_state(bounced).state is TradingState.HALTED
    reset = dataclasses.replace(bounced, peak_equity=Decimal(9_500), trough_equity=None)
    assert engine().evaluate_state(reset).state is TradingState.ACTIVE


def test_a_new_trading_day_lifts_a_daily_loss_halt() -> None:
    halted = state(equity=Decimal(9_600), day_low_equity=Decimal(9_500))
    assert engine().evaluate_state(halted).state is TradingState.HALTED
    next_day = state(
        equity=Decimal(9_600), start_of_day_equity=Decimal(9_600), now=NOW + timedelta(days=1)
    )
    assert engine().evaluate_state(next_day).state is TradingState.ACTIVE


def test_reducing_accepts_only_reduce_only_proposals() -> None:
    near_limit = state(equity=Decimal(9_750), open_positions=(position(PERP),))
    opening = engine().validate_trade(buy(), near_limit)
    assert opening.outcome is DecisionOutcome.REJECTED
    assert opening.codes == (ReasonCode.DAILY_LOSS_WARNING, ReasonCode.REDUCE_ONLY_MODE)
    reduce = buy("1", side=OrderSide.SELL, stop_loss=None, take_profit=None, reduce_only=True)
    closing = engine().validate_trade(reduce, near_limit)
    assert closing.outcome is DecisionOutcome.APPROVED
    assert closing.trading_state is TradingState.REDUCING


def test_a_reduce_only_proposal_needs_a_position_to_reduce() -> None:
    reduce = buy("1", side=OrderSide.SELL, stop_loss=None, take_profit=None, reduce_only=True)
    assert engine().validate_trade(reduce, state()).codes == (ReasonCode.NOTHING_TO_REDUCE,)
    short = position(PERP, PositionSide.SHORT)
    wrong_side = engine().validate_trade(reduce, state(open_positions=(short,)))
    assert wrong_side.codes == (ReasonCode.NOTHING_TO_REDUCE,)


def test_a_reduce_only_proposal_larger_than_the_position_is_cut_to_it() -> None:
    reduce = buy("3", side=OrderSide.SELL, stop_loss=None, take_profit=None, reduce_only=True)
    decision = engine().validate_trade(reduce, state(open_positions=(position(PERP),)))
    assert decision.outcome is DecisionOutcome.MODIFIED
    assert decision.quantity == Decimal(1)
    assert decision.codes == (ReasonCode.REDUCE_EXCEEDS_POSITION,)


def test_every_broken_rule_is_reported_not_only_the_first() -> None:
    bad = buy("80", leverage=Decimal(10), take_profit=Decimal(101), entry_type=EntryType.LIMIT)
    losing = state(
        equity=Decimal(9_750),
        consecutive_losses=4,
        last_loss_at=NOW,
        open_positions=(position("ETH-USDT-PERP"),),
    )
    decision = engine(max_open_positions=1).validate_trade(bad, losing)
    assert decision.outcome is DecisionOutcome.REJECTED
    assert set(decision.codes) == {
        ReasonCode.DAILY_LOSS_WARNING,
        ReasonCode.REDUCE_ONLY_MODE,
        ReasonCode.COOLDOWN,
        ReasonCode.MAX_OPEN_POSITIONS,
        ReasonCode.LEVERAGE,
        ReasonCode.REWARD_TO_RISK,
        ReasonCode.RISK_PER_TRADE,
    }


def test_a_decision_serializes_to_json_with_its_reasons() -> None:
    decision = engine().validate_trade(buy("80"), state())
    data = json.loads(json.dumps(decision.as_dict()))
    assert data["outcome"] == "modified"
    assert Decimal(data["quantity"]) == 50
    assert data["reasons"][0]["code"] == "risk_per_trade"
    assert Decimal(data["reasons"][0]["limit"]) == 100


def test_the_standalone_state_function_matches_the_engine() -> None:
    limits = RiskLimits(max_daily_loss=Decimal("0.01"))
    snapshot = state(equity=Decimal(9_900))
    assert evaluate_trading_state(snapshot, limits).state is TradingState.HALTED
    assert RiskManagementEngine([BTC], limits).evaluate_state(snapshot).state is TradingState.HALTED


def test_non_positive_equity_halts() -> None:
    status = engine().evaluate_state(state(equity=Decimal(-5)))
    assert status.state is TradingState.HALTED
    assert ReasonCode.NO_EQUITY in [reason.code for reason in status.reasons]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_risk_per_trade": Decimal("0.5")}, "max_risk_per_trade"),
        ({"max_risk_per_trade": 0.01}, "max_risk_per_trade"),
        ({"min_reward_to_risk": Decimal(-1)}, "min_reward_to_risk"),
        ({"max_leverage": Decimal("0.5")}, "max_leverage"),
        ({"max_open_positions": 0}, "max_open_positions"),
        ({"max_daily_loss": Decimal(0)}, "max_daily_loss"),
        ({"reducing_at": Decimal("1.5")}, "reducing_at"),
        ({"cooldown_seconds": -1}, "cooldown_seconds"),
        ({"close_unprotected_seconds": 5.0}, "close_unprotected_seconds"),
        ({"max_position_notional": Decimal(0)}, "max_position_notional"),
    ],
)
def test_bad_limits_are_refused_by_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RiskLimits(**changes)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"now": datetime(2024, 1, 1)}, "now"),  # noqa: DTZ001 - the naive time under test
        ({"consecutive_losses": 2}, "last_loss_at"),
        ({"start_of_day_equity": Decimal(0)}, "start_of_day_equity"),
        ({"exposure_by_asset": {"BTC": Decimal(-1)}}, "exposure_by_asset"),
        ({"open_positions": (position(PERP), position(PERP))}, "open_positions"),
        ({"day_low_equity": Decimal(10_001)}, "day_low_equity"),
    ],
)
def test_bad_risk_states_are_refused_by_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        state(**changes)
    assert caught.value.field == field


def test_a_state_snapshot_does_not_follow_later_changes_to_its_inputs() -> None:
    exposure = {"BTC": Decimal(100)}
    snapshot = state(exposure_by_asset=exposure)
    exposure["BTC"] = Decimal(1_000_000)
    assert snapshot.exposure_by_asset["BTC"] == Decimal(100)


@settings(max_examples=200, deadline=None)
@given(
    quantity=st.decimals("0.001", "500", places=3),
    stop_distance=st.decimals("0.1", "50", places=1),
    equity=st.decimals("50", "100000", places=2),
    held=st.decimals("0", "50000", places=2),
)
def test_an_approved_size_never_breaks_a_limit(
    quantity: Decimal, stop_distance: Decimal, equity: Decimal, held: Decimal
) -> None:
    limits = RiskLimits(min_reward_to_risk=Decimal(0))
    proposal = buy(str(quantity), stop_loss=Decimal(100) - stop_distance, take_profit=None)
    snapshot = state(
        equity=equity,
        start_of_day_equity=equity,
        peak_equity=equity,
        exposure_by_asset={"ETH": held},
    )
    decision = RiskManagementEngine([BTC], limits).validate_trade(proposal, snapshot)
    if not decision.approved:
        assert decision.quantity == 0
        return
    size = decision.quantity
    assert 0 < size <= quantity
    assert size % BTC.lot_size == 0
    assert size * stop_distance <= equity * limits.max_risk_per_trade
    assert size * 100 <= equity * limits.max_position_to_equity
    assert held + size * 100 <= equity * limits.max_total_exposure_to_equity
    assert size * 100 >= BTC.min_notional
    assert (decision.outcome is DecisionOutcome.MODIFIED) == (size < quantity)


def test_exposure_by_asset_adds_up_positions_on_the_same_base_asset() -> None:
    btc_perp = Position.open(PERP, PositionSide.LONG, Decimal(2), Decimal(100))
    btc_short = Position.open(PERP, PositionSide.SHORT, Decimal(1), Decimal(100))
    eth = Position.open("ETH-USDT-PERP", PositionSide.SHORT, Decimal(3), Decimal(50))
    exposure = engine().exposure_by_asset([btc_perp, btc_short.mark(Decimal(110)), eth])
    assert exposure == {"BTC": Decimal(310), "ETH": Decimal(150)}
    with pytest.raises(ValidationError) as caught:
        engine().exposure_by_asset(
            [Position.open("XRP", PositionSide.LONG, Decimal(1), Decimal(1))]
        )
    assert caught.value.value == "XRP"
