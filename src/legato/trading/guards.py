"""Runtime guards: the standing checks that enforce halts, the kill switch and protection.

`check_runtime_guards(state, positions, open_orders, limits, now)` is pure: from a risk
snapshot, the open positions and the orders it knows, it returns a `GuardReport` with the
violations found and the `GuardAction`s that fix them, most urgent first:

- the kill switch (or a halt with `flatten_on_halt`): close every position;
- an open position without a live stop-loss for longer than `max_unprotected_seconds`:
  re-protect it, and close it once it has been bare longer than `close_unprotected_seconds`;
- trading HALTED or REDUCING: cancel every working order that is not reduce-only (pending
  entries would add risk the state no longer allows), and report the halt.

`run_guard_iteration(fetch, act, limits=..., clock=...)` is one pass for a supervised loop:
fetch the inputs, check them at the clock's `now()`, hand each action to `act`. Register it
with a `legato.kernel.supervisor.Supervisor`::

    supervisor.add_loop(
        "runtime-guards",
        lambda: run_guard_iteration(fetch, act, limits=limits, clock=clock),
        interval=1.0,
        timeout=10.0,
    )
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import structlog

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.positions import Position
from legato.trading.risk import (
    RiskLimits,
    RiskState,
    TradingState,
    evaluate_trading_state,
)

__all__ = [
    "GuardAction",
    "GuardActionKind",
    "GuardCode",
    "GuardInputs",
    "GuardReport",
    "GuardViolation",
    "check_runtime_guards",
    "is_live_stop_loss",
    "run_guard_iteration",
]

_log = structlog.get_logger(__name__)

_LIVE = frozenset({OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED})
_STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})


class GuardCode(enum.Enum):
    """What a guard found wrong."""

    KILL_SWITCH = "kill_switch"
    TRADING_HALTED = "trading_halted"
    TRADING_REDUCING = "trading_reducing"
    UNPROTECTED_POSITION = "unprotected_position"
    UNDERPROTECTED_POSITION = "underprotected_position"


class GuardActionKind(enum.Enum):
    """What the guards ask the execution side to do, most urgent first."""

    CLOSE_POSITION = "close_position"  # a reduce-only market order for the whole position
    REPROTECT = "reprotect"  # place a stop-loss for the position's full quantity
    CANCEL_ORDER = "cancel_order"  # cancel a working order that adds risk
    HALT = "halt"  # record and announce that trading is halted


_URGENCY = {kind: rank for rank, kind in enumerate(GuardActionKind)}


@dataclass(frozen=True, slots=True)
class GuardViolation:
    """One broken rule: its code, a sentence for the operator, and what it concerns.

    `unprotected_seconds` is how long a position has been without a live stop-loss (None
    when that is unknown, which the guards treat as too long).
    """

    code: GuardCode
    message: str
    symbol: str | None = None
    unprotected_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class GuardAction:
    """One thing to do about a violation.

    CLOSE_POSITION and REPROTECT carry the position's `symbol`, the `side` of the order to
    send (the position's closing side) and its `quantity`; REPROTECT also carries the last
    known `stop_price` (None when no stop-loss order was ever recorded: the executor must
    derive one). CANCEL_ORDER carries the order's `client_order_id`.
    """

    kind: GuardActionKind
    reason: str
    symbol: str | None = None
    side: OrderSide | None = None
    quantity: Decimal | None = None
    stop_price: Decimal | None = None
    client_order_id: str | None = None


@dataclass(frozen=True, slots=True)
class GuardReport:
    """The result of one guard check: the trading state, what is wrong, what to do."""

    trading_state: TradingState
    violations: tuple[GuardViolation, ...] = ()
    actions: tuple[GuardAction, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing is wrong and nothing needs doing."""
        return not self.violations and not self.actions


@dataclass(frozen=True, slots=True)
class GuardInputs:
    """What one guard pass looks at: a risk snapshot, the open positions, the orders.

    `orders` are the desk's orders for those symbols: the working ones at least, plus the
    positions' recorded stop-loss orders whatever their status (their times say since when a
    position has been bare).
    """

    state: RiskState
    positions: tuple[Position, ...]
    orders: tuple[Order, ...]


def is_live_stop_loss(order: Order, position: Position) -> bool:
    """True when `order` is a working stop on `position`'s symbol, on its closing side."""
    return (
        order.symbol == position.symbol
        and order.type in _STOP_TYPES
        and order.side is position.side.closing_side
        and order.status in _LIVE
    )


def check_runtime_guards(
    state: RiskState,
    positions: Iterable[Position],
    open_orders: Iterable[Order],
    limits: RiskLimits,
    now: datetime,
) -> GuardReport:
    """Return the violations in this snapshot and the actions that fix them; pure.

    A position is protected when its live stop-losses (see `is_live_stop_loss`) cover its
    whole quantity. It counts as bare since it opened or since its recorded stop-loss order
    last changed, whichever is later; with neither time known, for an unknown (too long)
    time. Actions come most urgent first: closes, re-protections, cancels, the halt.
    """
    if not isinstance(state, RiskState):
        raise ValidationError("state", state, "a RiskState")
    if not isinstance(limits, RiskLimits):
        raise ValidationError("limits", limits, "a RiskLimits")
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise ValidationError("now", now, "an aware UTC datetime")
    open_positions = [position for position in positions if position.is_open]
    orders = list(open_orders)
    status = evaluate_trading_state(state, limits)
    violations: list[GuardViolation] = []
    actions: list[GuardAction] = []

    flatten = state.kill_switch or (status.state is TradingState.HALTED and limits.flatten_on_halt)
    closing: set[str] = set()
    if status.state is not TradingState.ACTIVE:
        why = "; ".join(reason.message for reason in status.reasons)
        violations.append(_state_violation(state, status.state, why))
        if status.state is TradingState.HALTED:
            actions.append(GuardAction(GuardActionKind.HALT, why))
        for order in orders:
            if order.is_open and not order.reduce_only:
                actions.append(
                    GuardAction(
                        GuardActionKind.CANCEL_ORDER,
                        f"trading is {status.state.value.upper()}: working orders that add "
                        "risk are cancelled",
                        symbol=order.symbol,
                        client_order_id=order.client_order_id,
                    )
                )
    if flatten:
        cause = "the kill switch is on" if state.kill_switch else "trading is halted"
        for position in open_positions:
            closing.add(position.symbol)
            actions.append(_close(position, f"{cause}: every position is closed"))

    for position in open_positions:
        found = _protection_violation(position, orders, limits, now)
        if found is None:
            continue
        violation, underprotected = found
        violations.append(violation)
        if position.symbol in closing:
            continue
        bare_for = violation.unprotected_seconds
        if not underprotected and (bare_for is None or bare_for > limits.close_unprotected_seconds):
            actions.append(
                _close(
                    position,
                    f"{violation.message}, past the {limits.close_unprotected_seconds:g} s "
                    "after which an unprotectable position is closed",
                )
            )
        else:
            actions.append(
                GuardAction(
                    GuardActionKind.REPROTECT,
                    violation.message,
                    symbol=position.symbol,
                    side=position.side.closing_side,
                    quantity=position.quantity,
                    stop_price=_last_stop_price(position, orders),
                )
            )
    actions.sort(key=lambda action: _URGENCY[action.kind])
    return GuardReport(status.state, tuple(violations), tuple(actions))


def _state_violation(state: RiskState, trading: TradingState, why: str) -> GuardViolation:
    if state.kill_switch:
        return GuardViolation(GuardCode.KILL_SWITCH, why)
    if trading is TradingState.HALTED:
        return GuardViolation(GuardCode.TRADING_HALTED, why)
    return GuardViolation(GuardCode.TRADING_REDUCING, why)


def _close(position: Position, reason: str) -> GuardAction:
    return GuardAction(
        GuardActionKind.CLOSE_POSITION,
        reason,
        symbol=position.symbol,
        side=position.side.closing_side,
        quantity=position.quantity,
    )


def _recorded_stop(position: Position, orders: list[Order]) -> Order | None:
    if position.stop_loss_order_id is None:
        return None
    for order in orders:
        if order.client_order_id == position.stop_loss_order_id:
            return order
    return None


def _last_stop_price(position: Position, orders: list[Order]) -> Decimal | None:
    recorded = _recorded_stop(position, orders)
    if recorded is not None:
        return recorded.stop_price
    prices = [order.stop_price for order in orders if is_live_stop_loss(order, position)]
    return prices[-1] if prices else None


def _protection_violation(
    position: Position, orders: list[Order], limits: RiskLimits, now: datetime
) -> tuple[GuardViolation, bool] | None:
    covered = sum(
        (order.remaining_quantity for order in orders if is_live_stop_loss(order, position)),
        Decimal(0),
    )
    if covered >= position.quantity:
        return None
    recorded = _recorded_stop(position, orders)
    times = [position.opened_at]
    if recorded is not None:
        times.append(recorded.updated_at or recorded.created_at)
    known = [time for time in times if time is not None]
    since = max(known) if known else None
    bare_for = None if since is None else (now - since).total_seconds()
    if bare_for is not None and bare_for <= limits.max_unprotected_seconds:
        return None
    underprotected = covered > 0
    how_long = "for an unknown time" if bare_for is None else f"for {bare_for:g} s"
    if underprotected:
        message = (
            f"{position.symbol} {position.side.value} {position.quantity} has had live "
            f"stop-losses for only {covered} of it {how_long}"
        )
        code = GuardCode.UNDERPROTECTED_POSITION
    else:
        message = (
            f"{position.symbol} {position.side.value} {position.quantity} has had no live "
            f"stop-loss {how_long} (bound: {limits.max_unprotected_seconds:g} s)"
        )
        code = GuardCode.UNPROTECTED_POSITION
    return GuardViolation(code, message, position.symbol, bare_for), underprotected


async def run_guard_iteration(
    fetch: Callable[[], Awaitable[GuardInputs]],
    act: Callable[[GuardAction], Awaitable[object]],
    *,
    limits: RiskLimits,
    clock: Clock,
) -> GuardReport:
    """Run one guard pass: fetch the inputs, check them at `clock.now()`, act on each action.

    Every action is attempted, in order, even when an earlier one fails: a failed cancel must
    not keep a bare position from being closed. If any failed, an ExceptionGroup of those
    failures is raised after the last one, so the supervising loop records the failure and
    backs off; otherwise the report is returned.
    """
    inputs = await fetch()
    report = check_runtime_guards(
        inputs.state, inputs.positions, inputs.orders, limits, clock.now()
    )
    for violation in report.violations:
        # A bare position or the kill switch needs a person now; a halt is expected news.
        urgent = violation.code in (GuardCode.UNPROTECTED_POSITION, GuardCode.KILL_SWITCH)
        log = _log.critical if urgent else _log.warning
        log(
            "guard_violation",
            code=violation.code.value,
            symbol=violation.symbol,
            detail=violation.message,
        )
    failures: list[Exception] = []
    for action in report.actions:
        try:
            await act(action)
        except Exception as error:  # every action gets its turn; failures are raised below
            failures.append(error)
            _log.error(
                "guard_action_failed",
                action=action.kind.value,
                symbol=action.symbol,
                client_order_id=action.client_order_id,
                error=repr(error),
            )
    if failures:
        raise ExceptionGroup(
            f"{len(failures)} of {len(report.actions)} guard actions failed", failures
        )
    return report
