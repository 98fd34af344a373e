from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import structlog

from legato.kernel.clock import Clock
from legato.kernel.errors import TransientError, ValidationError
from legato.kernel.supervisor import Supervisor
from legato.trading.guards import (
    GuardAction,
    GuardActionKind,
    GuardCode,
    GuardInputs,
    check_runtime_guards,
    run_guard_iteration,
)
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.positions import Position, PositionSide
from legato.trading.risk import RiskLimits, RiskState, TradingState

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PERP = "BTC-USDT-PERP"
LIMITS = RiskLimits(max_unprotected_seconds=10.0, close_unprotected_seconds=60.0)


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def state(now: datetime = T0, **changes: Any) -> RiskState:
    fields: dict[str, Any] = {
        "equity": Decimal(10_000),
        "start_of_day_equity": Decimal(10_000),
        "peak_equity": Decimal(10_000),
        "now": now,
    }
    fields.update(changes)
    return RiskState(**fields)


def long(symbol: str = PERP, quantity: str = "2", stop_id: str | None = "sl-1") -> Position:
    opened = Position.open(symbol, PositionSide.LONG, Decimal(quantity), Decimal(100), at=T0)
    return opened.with_protection(stop_id, None)


def stop(
    client_order_id: str = "sl-1",
    status: OrderStatus = OrderStatus.ACCEPTED,
    quantity: str = "2",
    changed: datetime = T0,
    side: OrderSide = OrderSide.SELL,
    symbol: str = PERP,
) -> Order:
    return Order(
        client_order_id,
        symbol,
        side,
        OrderType.STOP,
        Decimal(quantity),
        stop_price=Decimal(95),
        reduce_only=True,
        status=status,
        created_at=T0,
        updated_at=changed,
    )


def entry(client_order_id: str = "entry-2") -> Order:
    return Order(
        client_order_id,
        PERP,
        OrderSide.BUY,
        OrderType.LIMIT,
        Decimal(1),
        price=Decimal(90),
        status=OrderStatus.ACCEPTED,
        created_at=T0,
    )


def kinds(actions: tuple[GuardAction, ...]) -> list[GuardActionKind]:
    return [action.kind for action in actions]


def test_a_position_with_a_live_stop_loss_is_fine() -> None:
    report = check_runtime_guards(state(), [long()], [stop()], LIMITS, at(3600))
    assert report.ok
    assert report.trading_state is TradingState.ACTIVE


def test_a_bare_position_within_the_bound_is_left_to_the_execution_manager() -> None:
    report = check_runtime_guards(state(), [long(stop_id=None)], [], LIMITS, at(10))
    assert report.ok


def test_a_position_bare_past_the_bound_is_reprotected_at_its_full_size() -> None:
    report = check_runtime_guards(state(), [long(stop_id=None)], [], LIMITS, at(10.5))
    (violation,) = report.violations
    assert violation.code is GuardCode.UNPROTECTED_POSITION
    assert violation.unprotected_seconds == 10.5
    assert "no live stop-loss for 10.5 s (bound: 10 s)" in violation.message
    (action,) = report.actions
    assert action.kind is GuardActionKind.REPROTECT
    assert (action.symbol, action.side, action.quantity) == (PERP, OrderSide.SELL, Decimal(2))
    assert action.stop_price is None


def test_a_position_bare_past_the_close_bound_is_closed() -> None:
    report = check_runtime_guards(state(), [long(stop_id=None)], [], LIMITS, at(61))
    (action,) = report.actions
    assert action.kind is GuardActionKind.CLOSE_POSITION
    assert (action.side, action.quantity) == (OrderSide.SELL, Decimal(2))


def test_bare_time_counts_from_when_the_stop_loss_stopped_being_live() -> None:
    cancelled = stop(status=OrderStatus.CANCELLED, changed=at(3600))
    quiet = check_runtime_guards(state(), [long()], [cancelled], LIMITS, at(3605))
    assert quiet.ok
    report = check_runtime_guards(state(), [long()], [cancelled], LIMITS, at(3615))
    (action,) = report.actions
    assert action.kind is GuardActionKind.REPROTECT
    assert action.stop_price == Decimal(95)


def test_an_unknown_stop_loss_does_not_count_as_protection() -> None:
    unknown = stop(status=OrderStatus.UNKNOWN, changed=at(100))
    report = check_runtime_guards(state(), [long()], [unknown], LIMITS, at(111))
    assert [v.code for v in report.violations] == [GuardCode.UNPROTECTED_POSITION]


def test_a_stop_on_the_wrong_side_or_symbol_does_not_protect() -> None:
    orders = [stop("sl-x", side=OrderSide.BUY), stop("sl-y", symbol="ETH-USDT-PERP")]
    report = check_runtime_guards(state(), [long()], orders, LIMITS, at(30))
    assert kinds(report.actions) == [GuardActionKind.REPROTECT]


def test_a_stop_smaller_than_the_position_is_topped_up_never_closed() -> None:
    report = check_runtime_guards(
        state(), [long(quantity="3")], [stop(quantity="2")], LIMITS, at(3600)
    )
    (violation,) = report.violations
    assert violation.code is GuardCode.UNDERPROTECTED_POSITION
    assert kinds(report.actions) == [GuardActionKind.REPROTECT]


def test_a_position_with_no_known_times_is_treated_as_bare_too_long() -> None:
    timeless = dataclasses.replace(long(stop_id=None), opened_at=None)
    report = check_runtime_guards(state(), [timeless], [], LIMITS, T0)
    assert report.violations[0].unprotected_seconds is None
    assert kinds(report.actions) == [GuardActionKind.CLOSE_POSITION]


def test_the_kill_switch_closes_every_position_and_cancels_entries_first() -> None:
    positions = [long(), long("ETH-USDT-PERP", stop_id=None)]
    orders = [stop(), entry()]
    report = check_runtime_guards(state(kill_switch=True), positions, orders, LIMITS, at(30))
    assert report.trading_state is TradingState.HALTED
    assert report.violations[0].code is GuardCode.KILL_SWITCH
    assert kinds(report.actions) == [
        GuardActionKind.CLOSE_POSITION,
        GuardActionKind.CLOSE_POSITION,
        GuardActionKind.CANCEL_ORDER,
        GuardActionKind.HALT,
    ]
    assert report.actions[2].client_order_id == "entry-2"


def test_a_loss_halt_cancels_entries_but_keeps_protected_positions() -> None:
    halted = state(equity=Decimal(9_600))
    report = check_runtime_guards(halted, [long()], [stop(), entry()], LIMITS, at(30))
    assert [v.code for v in report.violations] == [GuardCode.TRADING_HALTED]
    assert kinds(report.actions) == [GuardActionKind.CANCEL_ORDER, GuardActionKind.HALT]
    assert "today's loss reached 4%" in report.actions[1].reason


def test_flatten_on_halt_closes_positions_on_a_loss_halt() -> None:
    limits = dataclasses.replace(LIMITS, flatten_on_halt=True)
    halted = state(equity=Decimal(9_600))
    report = check_runtime_guards(halted, [long()], [stop()], limits, at(30))
    assert kinds(report.actions) == [GuardActionKind.CLOSE_POSITION, GuardActionKind.HALT]


def test_reducing_cancels_entries_without_halting() -> None:
    report = check_runtime_guards(
        state(equity=Decimal(9_750)), [long()], [stop(), entry()], LIMITS, at(30)
    )
    assert report.trading_state is TradingState.REDUCING
    assert [v.code for v in report.violations] == [GuardCode.TRADING_REDUCING]
    assert kinds(report.actions) == [GuardActionKind.CANCEL_ORDER]


def test_a_halt_still_reprotects_a_bare_position() -> None:
    halted = state(equity=Decimal(9_600))
    report = check_runtime_guards(halted, [long(stop_id=None)], [], LIMITS, at(30))
    assert kinds(report.actions) == [GuardActionKind.REPROTECT, GuardActionKind.HALT]


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        check_runtime_guards(state(), [], [], LIMITS, datetime(2024, 1, 1))  # noqa: DTZ001
    assert caught.value.field == "now"


class Desk:
    """An in-memory stand-in for the store and the venue the guard loop reads and acts on."""

    def __init__(self, clock: Clock, positions: list[Position], orders: list[Order]) -> None:
        self.clock = clock
        self.positions = positions
        self.orders = orders
        self.kill_switch = False
        self.done: list[tuple[float, GuardAction]] = []
        self.acted = asyncio.Event()
        self.failing: set[GuardActionKind] = set()

    async def fetch(self) -> GuardInputs:
        snapshot = state(self.clock.now(), kill_switch=self.kill_switch)
        return GuardInputs(snapshot, tuple(self.positions), tuple(self.orders))

    async def act(self, action: GuardAction) -> None:
        self.done.append((self.clock.monotonic(), action))
        self.acted.set()
        if action.kind in self.failing:
            raise TransientError(f"venue unavailable for {action.kind.value}")
        if action.kind is GuardActionKind.REPROTECT:
            assert action.symbol is not None
            assert action.side is not None
            assert action.quantity is not None
            now = self.clock.now()
            self.orders.append(
                Order(
                    f"sl-{len(self.orders)}",
                    action.symbol,
                    action.side,
                    OrderType.STOP,
                    action.quantity,
                    stop_price=Decimal(95),
                    reduce_only=True,
                    status=OrderStatus.ACCEPTED,
                    created_at=now,
                    updated_at=now,
                )
            )


def bare_position(clock: Clock) -> Position:
    opened = Position.open(PERP, PositionSide.LONG, Decimal(2), Decimal(100), at=clock.now())
    return opened.with_protection(None, None)


async def test_one_iteration_acts_on_every_action_and_returns_the_report(clock: Clock) -> None:
    desk = Desk(clock, [bare_position(clock)], [entry()])
    desk.kill_switch = True
    report = await run_guard_iteration(desk.fetch, desk.act, limits=LIMITS, clock=clock)
    assert [action for _, action in desk.done] == list(report.actions)
    assert kinds(report.actions)[0] is GuardActionKind.CLOSE_POSITION


async def test_a_failed_action_does_not_stop_the_others_and_is_raised(clock: Clock) -> None:
    desk = Desk(clock, [bare_position(clock)], [entry()])
    desk.kill_switch = True
    desk.failing = {GuardActionKind.CLOSE_POSITION}
    with pytest.raises(ExceptionGroup) as caught:
        await run_guard_iteration(desk.fetch, desk.act, limits=LIMITS, clock=clock)
    assert "1 of 3 guard actions failed" in str(caught.value)
    assert [action.kind for _, action in desk.done] == [
        GuardActionKind.CLOSE_POSITION,
        GuardActionKind.CANCEL_ORDER,
        GuardActionKind.HALT,
    ]


async def test_a_supervised_guard_loop_reprotects_a_bare_position_within_the_bound(
    clock: Clock,
) -> None:
    desk = Desk(clock, [bare_position(clock)], [])
    started = clock.monotonic()
    async with Supervisor(clock=clock) as supervisor:
        supervisor.add_loop(
            "runtime-guards",
            lambda: run_guard_iteration(desk.fetch, desk.act, limits=LIMITS, clock=clock),
            interval=1.0,
        )
        await asyncio.wait_for(desk.acted.wait(), timeout=60)
        # Let the loop run on: once the stop is live it must not act again.
        await clock.sleep(30)
        health = supervisor.loop_health("runtime-guards")
    ((acted_at, action),) = desk.done
    assert action.kind is GuardActionKind.REPROTECT
    assert 10 < acted_at - started <= 10 + 1.0
    assert health.consecutive_failures == 0
