"""The risk engine: whether the desk may take a proposed trade, and at what size.

`RiskManagementEngine.validate_trade(proposal, state)` checks a `TradeProposal` against the
`RiskLimits` and a `RiskState` snapshot (equity, positions, exposure, losing streak, kill
switch, the time) and returns a `RiskDecision`: APPROVED, MODIFIED (approved for a smaller
size) or REJECTED, with every reason that applied, not only the first. Each reason is a
`RiskReason` with a code, a sentence for the trader, and the limit and the actual value.

`evaluate_trading_state(state, limits)` turns the snapshot into the desk's `TradingState`:
ACTIVE, REDUCING (only reduce-only trades) or HALTED (no trades), with the reasons. The engine
holds no mutable state and reads no clock: the time is `RiskState.now`, so the same snapshot
always gets the same answer. docs/concepts/risk.md lists every rule and its default.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType

from legato.kernel.errors import ValidationError
from legato.trading.instruments import Instrument
from legato.trading.positions import Position
from legato.trading.proposals import EntryType, TradeProposal

__all__ = [
    "DecisionOutcome",
    "ReasonCode",
    "ReasonEffect",
    "RiskDecision",
    "RiskLimits",
    "RiskManagementEngine",
    "RiskReason",
    "RiskState",
    "TradingState",
    "TradingStatus",
    "evaluate_trading_state",
]

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


class TradingState(enum.Enum):
    """What the desk may do: everything, only shrink positions, or nothing."""

    ACTIVE = "active"
    REDUCING = "reducing"  # only reduce-only trades; pending entries are cancelled
    HALTED = "halted"  # no trades at all; the runtime guards act on open positions


class DecisionOutcome(enum.Enum):
    """The risk engine's verdict on one proposal."""

    APPROVED = "approved"
    MODIFIED = "modified"  # approved for a smaller quantity
    REJECTED = "rejected"


class ReasonEffect(enum.Enum):
    """What a reason did to the proposal: refused it, or cut its size."""

    REJECT = "reject"
    RESIZE = "resize"


class ReasonCode(enum.Enum):
    """Why the engine refused or resized a trade (or changed the trading state)."""

    UNKNOWN_SYMBOL = "unknown_symbol"
    KILL_SWITCH = "kill_switch"
    NO_EQUITY = "no_equity"
    DAILY_LOSS_LIMIT = "daily_loss_limit"
    DRAWDOWN_LIMIT = "drawdown_limit"
    DAILY_LOSS_WARNING = "daily_loss_warning"
    DRAWDOWN_WARNING = "drawdown_warning"
    REDUCE_ONLY_MODE = "reduce_only_mode"
    NOTHING_TO_REDUCE = "nothing_to_reduce"
    REDUCE_EXCEEDS_POSITION = "reduce_exceeds_position"
    COOLDOWN = "cooldown"
    MAX_OPEN_POSITIONS = "max_open_positions"
    LEVERAGE = "leverage"
    PRICE_OFF_TICK = "price_off_tick"
    REWARD_TO_RISK = "reward_to_risk"
    RISK_PER_TRADE = "risk_per_trade"
    POSITION_NOTIONAL = "position_notional"
    TOTAL_EXPOSURE = "total_exposure"
    ASSET_EXPOSURE = "asset_exposure"
    QUANTITY_ROUNDED = "quantity_rounded"
    BELOW_MINIMUM_SIZE = "below_minimum_size"


@dataclass(frozen=True, slots=True)
class RiskReason:
    """One rule that applied: its code, a sentence for the trader, the limit and the value.

    `limit` and `actual` are in the rule's own unit (quote currency, a fraction of equity, a
    count, seconds); the message says which.
    """

    code: ReasonCode
    message: str
    limit: Decimal | None = None
    actual: Decimal | None = None
    effect: ReasonEffect = ReasonEffect.REJECT

    def as_dict(self) -> dict[str, str | None]:
        """Return the reason as JSON-ready text fields."""
        return {
            "code": self.code.value,
            "message": self.message,
            "limit": None if self.limit is None else str(self.limit),
            "actual": None if self.actual is None else str(self.actual),
            "effect": self.effect.value,
        }


def _fraction(field_name: str, value: object, *, upper: Decimal | None = Decimal(1)) -> None:
    if (
        not isinstance(value, Decimal)
        or not value.is_finite()
        or value <= 0
        or (upper is not None and value > upper)
    ):
        accepted = "a Decimal > 0" + ("" if upper is None else f" and <= {upper}")
        raise ValidationError(field_name, value, accepted)


def _count(field_name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(field_name, value, f"an integer >= {minimum}")


def _seconds(field_name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        raise ValidationError(field_name, value, "seconds >= 0 (a finite number)")
    return float(value)


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """The desk's risk rules. Every default is explained in docs/concepts/risk.md.

    Fractions are of equity (0.01 = 1%). `*_to_equity` limits are multiples of equity, so
    they hold for any account size; `max_position_notional` is an optional absolute cap in
    the quote currency. `reducing_at` is the share of the daily-loss and drawdown limits at
    which trading turns REDUCING before it HALTS. The last four fields are for the runtime
    guards (`legato.trading.guards`).
    """

    max_risk_per_trade: Decimal = Decimal("0.01")
    min_reward_to_risk: Decimal = Decimal("1.5")
    max_leverage: Decimal = Decimal(5)
    max_position_to_equity: Decimal = Decimal(1)
    max_position_notional: Decimal | None = None
    max_asset_exposure_to_equity: Decimal = Decimal("1.5")
    max_total_exposure_to_equity: Decimal = Decimal(3)
    max_open_positions: int = 5
    max_daily_loss: Decimal = Decimal("0.03")
    max_drawdown: Decimal = Decimal("0.10")
    reducing_at: Decimal = Decimal("0.8")
    max_consecutive_losses: int = 3
    cooldown_seconds: float = 3600.0
    max_unprotected_seconds: float = 10.0
    close_unprotected_seconds: float = 60.0
    flatten_on_halt: bool = False

    def __post_init__(self) -> None:
        _fraction("max_risk_per_trade", self.max_risk_per_trade, upper=Decimal("0.1"))
        if (
            not isinstance(self.min_reward_to_risk, Decimal)
            or not self.min_reward_to_risk.is_finite()
            or self.min_reward_to_risk < 0
        ):
            raise ValidationError(
                "min_reward_to_risk", self.min_reward_to_risk, "a Decimal >= 0 (0 turns it off)"
            )
        if (
            not isinstance(self.max_leverage, Decimal)
            or not self.max_leverage.is_finite()
            or not Decimal(1) <= self.max_leverage <= Decimal(125)
        ):
            raise ValidationError("max_leverage", self.max_leverage, "a Decimal from 1 to 125")
        for name in (
            "max_position_to_equity",
            "max_asset_exposure_to_equity",
            "max_total_exposure_to_equity",
        ):
            _fraction(name, getattr(self, name), upper=Decimal(125))
        if self.max_position_notional is not None:
            _fraction("max_position_notional", self.max_position_notional, upper=None)
        _count("max_open_positions", self.max_open_positions, 1)
        _fraction("max_daily_loss", self.max_daily_loss)
        _fraction("max_drawdown", self.max_drawdown)
        _fraction("reducing_at", self.reducing_at)
        _count("max_consecutive_losses", self.max_consecutive_losses, 1)
        _seconds("cooldown_seconds", self.cooldown_seconds)
        _seconds("max_unprotected_seconds", self.max_unprotected_seconds)
        close_after = _seconds("close_unprotected_seconds", self.close_unprotected_seconds)
        if close_after < self.max_unprotected_seconds:
            raise ValidationError(
                "close_unprotected_seconds",
                self.close_unprotected_seconds,
                f"seconds >= max_unprotected_seconds ({self.max_unprotected_seconds})",
            )
        if not isinstance(self.flatten_on_halt, bool):
            raise ValidationError("flatten_on_halt", self.flatten_on_halt, "True or False")


def _aware(field_name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValidationError(
            field_name, value, "an aware UTC datetime" + (" or None" if optional else "")
        )


@dataclass(frozen=True, slots=True)
class RiskState:
    """A snapshot of everything the risk rules look at, taken at `now`.

    `equity` is the account's value including unrealized PnL, in the quote currency.
    `start_of_day_equity` is its value at the start of the trading day (the daily loss is
    measured from it), `peak_equity` the highest it has been (the drawdown is measured from
    it). `day_low_equity` is the lowest equity seen since the start of the day and
    `trough_equity` the lowest since the peak (both default to `equity`): the halts are judged
    on them, so a halt holds when equity bounces back (it lifts with a new day, or when an
    operator resets the peak). `exposure_by_asset` is the absolute notional held per base
    asset ("BTC": 12000), across every instrument on that asset. `last_loss_at` is when the
    latest losing trade closed; it is required while `consecutive_losses` > 0.
    """

    equity: Decimal
    start_of_day_equity: Decimal
    peak_equity: Decimal
    now: datetime
    open_positions: tuple[Position, ...] = ()
    exposure_by_asset: Mapping[str, Decimal] = field(default_factory=dict)
    consecutive_losses: int = 0
    last_loss_at: datetime | None = None
    kill_switch: bool = False
    day_low_equity: Decimal | None = None
    trough_equity: Decimal | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.equity, Decimal) or not self.equity.is_finite():
            raise ValidationError("equity", self.equity, "a finite Decimal")
        for name in ("day_low_equity", "trough_equity"):
            low = getattr(self, name)
            if low is not None and (
                not isinstance(low, Decimal) or not low.is_finite() or low > self.equity
            ):
                raise ValidationError(
                    name, low, f"None or a finite Decimal <= equity ({self.equity})"
                )
        _fraction("start_of_day_equity", self.start_of_day_equity, upper=None)
        _fraction("peak_equity", self.peak_equity, upper=None)
        _aware("now", self.now, optional=False)
        _aware("last_loss_at", self.last_loss_at, optional=True)
        positions = tuple(self.open_positions)
        symbols: set[str] = set()
        for position in positions:
            if not isinstance(position, Position) or not position.is_open:
                raise ValidationError("open_positions", position, "open Position values")
            if position.symbol in symbols:
                raise ValidationError(
                    "open_positions", position.symbol, "at most one position per symbol"
                )
            symbols.add(position.symbol)
        object.__setattr__(self, "open_positions", positions)
        exposure = dict(self.exposure_by_asset)
        for asset, amount in exposure.items():
            if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
                raise ValidationError(
                    "exposure_by_asset", amount, f"a Decimal >= 0 for asset {asset!r}"
                )
        # A read-only copy: a caller mutating its dict later must not change a snapshot.
        object.__setattr__(self, "exposure_by_asset", MappingProxyType(exposure))
        _count("consecutive_losses", self.consecutive_losses, 0)
        if self.consecutive_losses > 0 and self.last_loss_at is None:
            raise ValidationError(
                "last_loss_at", None, "the time of the last loss when consecutive_losses > 0"
            )
        if not isinstance(self.kill_switch, bool):
            raise ValidationError("kill_switch", self.kill_switch, "True or False")

    @property
    def daily_loss(self) -> Decimal:
        """Today's loss as a fraction of start-of-day equity (negative on a winning day)."""
        return (self.start_of_day_equity - self.equity) / self.start_of_day_equity

    @property
    def worst_daily_loss(self) -> Decimal:
        """Today's largest loss so far (at `day_low_equity`), as a fraction of the start."""
        low = self.equity if self.day_low_equity is None else self.day_low_equity
        return (self.start_of_day_equity - low) / self.start_of_day_equity

    @property
    def drawdown(self) -> Decimal:
        """How far equity is below its peak, as a fraction of the peak (0 at a new high)."""
        return max(_ZERO, (self.peak_equity - self.equity) / self.peak_equity)

    @property
    def worst_drawdown(self) -> Decimal:
        """The deepest drawdown since the peak (at `trough_equity`), as a fraction of it."""
        low = self.equity if self.trough_equity is None else self.trough_equity
        return max(_ZERO, (self.peak_equity - low) / self.peak_equity)

    @property
    def total_exposure(self) -> Decimal:
        """The sum of `exposure_by_asset`, in the quote currency."""
        return sum(self.exposure_by_asset.values(), _ZERO)

    def position(self, symbol: str) -> Position | None:
        """The open position on `symbol`, if any."""
        for position in self.open_positions:
            if position.symbol == symbol:
                return position
        return None


@dataclass(frozen=True, slots=True)
class TradingStatus:
    """The trading state a snapshot puts the desk in, and every reason for it."""

    state: TradingState
    reasons: tuple[RiskReason, ...] = ()

    def allows(self, proposal: TradeProposal) -> bool:
        """True when this state accepts `proposal` at all (before any other rule)."""
        if self.state is TradingState.HALTED:
            return False
        return self.state is TradingState.ACTIVE or proposal.reduce_only


def _show(value: Decimal, places: int | None = None) -> str:
    # For people: exact values without exponent noise; ratios and percentages to `places`.
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _pct(fraction: Decimal) -> str:
    return _show(fraction * _HUNDRED, 2) + "%"


def evaluate_trading_state(state: RiskState, limits: RiskLimits) -> TradingStatus:
    """Return the trading state `state` puts the desk in under `limits`, with every reason.

    HALTED on the kill switch, on equity at or below zero, or once the daily loss or the
    drawdown has reached its limit (judged at the day's low and the trough since the peak, so
    a bounce does not lift it). REDUCING when either is now at `reducing_at` of its limit.
    Otherwise ACTIVE. A halt lifts when its cause does: the kill switch is cleared, a new day
    starts (new `start_of_day_equity` and `day_low_equity`), or an operator resets
    `peak_equity` and `trough_equity`.
    """
    halts: list[RiskReason] = []
    warnings: list[RiskReason] = []
    if state.kill_switch:
        halts.append(
            RiskReason(ReasonCode.KILL_SWITCH, "the kill switch is on: all trading is stopped")
        )
    if state.equity <= 0:
        halts.append(
            RiskReason(
                ReasonCode.NO_EQUITY,
                f"equity is {_show(state.equity)}: nothing is left to risk",
                limit=_ZERO,
                actual=state.equity,
            )
        )
    checks = (
        (
            state.daily_loss,
            state.worst_daily_loss,
            limits.max_daily_loss,
            ReasonCode.DAILY_LOSS_LIMIT,
            ReasonCode.DAILY_LOSS_WARNING,
            "today's loss",
            "start-of-day equity",
        ),
        (
            state.drawdown,
            state.worst_drawdown,
            limits.max_drawdown,
            ReasonCode.DRAWDOWN_LIMIT,
            ReasonCode.DRAWDOWN_WARNING,
            "the drawdown",
            "peak equity",
        ),
    )
    for actual, worst, limit, halt_code, warning_code, what, base in checks:
        if worst >= limit:
            now = "" if worst == actual else f" (now {_pct(actual)})"
            halts.append(
                RiskReason(
                    halt_code,
                    f"{what} reached {_pct(worst)} of {base}{now}, at or over the "
                    f"{_pct(limit)} limit: trading is halted",
                    limit=limit,
                    actual=worst,
                )
            )
        elif actual >= limit * limits.reducing_at:
            threshold = limit * limits.reducing_at
            warnings.append(
                RiskReason(
                    warning_code,
                    f"{what} is {_pct(actual)} of {base}, past {_pct(threshold)} "
                    f"({_pct(limits.reducing_at)} of the {_pct(limit)} limit): "
                    "only reduce-only trades are accepted",
                    limit=threshold,
                    actual=actual,
                )
            )
    if halts:
        return TradingStatus(TradingState.HALTED, tuple(halts + warnings))
    if warnings:
        return TradingStatus(TradingState.REDUCING, tuple(warnings))
    return TradingStatus(TradingState.ACTIVE)


@dataclass(frozen=True, slots=True)
class RiskDecision:
    """The engine's answer to one proposal: the outcome, the size allowed, and every reason.

    `quantity` is what may be traded: the proposal's when APPROVED, smaller when MODIFIED,
    zero when REJECTED. `approved_proposal` is the proposal to execute (None when rejected).
    """

    outcome: DecisionOutcome
    proposal: TradeProposal
    quantity: Decimal
    reasons: tuple[RiskReason, ...]
    trading_state: TradingState

    @property
    def approved(self) -> bool:
        """True when the trade may go ahead (APPROVED or MODIFIED)."""
        return self.outcome is not DecisionOutcome.REJECTED

    @property
    def approved_proposal(self) -> TradeProposal | None:
        """The proposal at the allowed size, or None when rejected."""
        if not self.approved:
            return None
        if self.quantity == self.proposal.quantity:
            return self.proposal
        return self.proposal.with_quantity(self.quantity)

    @property
    def codes(self) -> tuple[ReasonCode, ...]:
        """The codes of `reasons`, in order."""
        return tuple(reason.code for reason in self.reasons)

    def as_dict(self) -> dict[str, object]:
        """Return the decision as JSON-ready data, to store or publish."""
        return {
            "outcome": self.outcome.value,
            "quantity": str(self.quantity),
            "trading_state": self.trading_state.value,
            "proposal": self.proposal.as_dict(),
            "reasons": [reason.as_dict() for reason in self.reasons],
        }


@dataclass(frozen=True, slots=True)
class _Cap:
    # One limit that bounds the quantity: the largest quantity it allows, and why.
    quantity: Decimal
    reason: RiskReason


class RiskManagementEngine:
    """Validates trade proposals against `RiskLimits`; pure, deterministic, no I/O.

    The engine knows the tradable instruments (for tick and lot sizes, minimum notional,
    base asset and maximum leverage) and the limits; everything that changes comes in the
    `RiskState` passed to each call.
    """

    __slots__ = ("_instruments", "_limits")

    def __init__(
        self,
        instruments: Iterable[Instrument] | Mapping[str, Instrument],
        limits: RiskLimits | None = None,
    ) -> None:
        values = instruments.values() if isinstance(instruments, Mapping) else instruments
        by_symbol: dict[str, Instrument] = {}
        for instrument in values:
            if not isinstance(instrument, Instrument):
                raise ValidationError("instruments", instrument, "Instrument values")
            by_symbol[instrument.symbol] = instrument
        if limits is not None and not isinstance(limits, RiskLimits):
            raise ValidationError("limits", limits, "a RiskLimits or None for the defaults")
        self._instruments: Mapping[str, Instrument] = MappingProxyType(by_symbol)
        self._limits = limits if limits is not None else RiskLimits()

    @property
    def limits(self) -> RiskLimits:
        """The limits this engine applies."""
        return self._limits

    @property
    def instruments(self) -> Mapping[str, Instrument]:
        """The instruments it knows, by symbol."""
        return self._instruments

    def exposure_by_asset(self, positions: Iterable[Position]) -> dict[str, Decimal]:
        """Return the absolute notional of `positions` per base asset, for `RiskState`.

        Raises ValidationError for a position on a symbol the engine does not know.
        """
        exposure: dict[str, Decimal] = {}
        for position in positions:
            instrument = self._instruments.get(position.symbol)
            if instrument is None:
                raise ValidationError(
                    "positions", position.symbol, "positions on instruments the engine knows"
                )
            asset = instrument.base_asset
            exposure[asset] = exposure.get(asset, _ZERO) + position.notional
        return exposure

    def evaluate_state(self, state: RiskState) -> TradingStatus:
        """Return the trading state `state` puts the desk in, with every reason."""
        return evaluate_trading_state(state, self._limits)

    def validate_trade(self, proposal: TradeProposal, state: RiskState) -> RiskDecision:
        """Judge `proposal` against the limits in `state`; return the decision and every reason."""
        if not isinstance(proposal, TradeProposal):
            raise ValidationError("proposal", proposal, "a TradeProposal")
        if not isinstance(state, RiskState):
            raise ValidationError("state", state, "a RiskState")
        status = self.evaluate_state(state)
        instrument = self._instruments.get(proposal.symbol)
        reasons: list[RiskReason] = []
        if instrument is None:
            known = ", ".join(sorted(self._instruments)) or "none"
            reasons.append(
                RiskReason(
                    ReasonCode.UNKNOWN_SYMBOL,
                    f"{proposal.symbol!r} is not a known instrument (known: {known})",
                )
            )
        reasons.extend(self._state_reasons(proposal, status))
        if proposal.reduce_only:
            quantity = self._check_reduction(proposal, state, instrument, reasons)
        else:
            quantity = self._check_opening(proposal, state, instrument, reasons)
        rejected = any(reason.effect is ReasonEffect.REJECT for reason in reasons)
        if rejected:
            outcome, quantity = DecisionOutcome.REJECTED, _ZERO
        elif quantity < proposal.quantity:
            outcome = DecisionOutcome.MODIFIED
        else:
            outcome = DecisionOutcome.APPROVED
        return RiskDecision(outcome, proposal, quantity, tuple(reasons), status.state)

    def _state_reasons(self, proposal: TradeProposal, status: TradingStatus) -> list[RiskReason]:
        if status.allows(proposal):
            return []
        reasons = list(status.reasons)
        if status.state is TradingState.REDUCING:
            reasons.append(
                RiskReason(
                    ReasonCode.REDUCE_ONLY_MODE,
                    "trading is REDUCING: only reduce-only proposals are accepted",
                )
            )
        return reasons

    def _check_reduction(
        self,
        proposal: TradeProposal,
        state: RiskState,
        instrument: Instrument | None,
        reasons: list[RiskReason],
    ) -> Decimal:
        if instrument is not None:
            reasons.extend(_tick_reasons(proposal, instrument))
        position = state.position(proposal.symbol)
        if position is None or position.side is not proposal.position_side:
            held = "no position" if position is None else f"a {position.side.value} position"
            reasons.append(
                RiskReason(
                    ReasonCode.NOTHING_TO_REDUCE,
                    f"a reduce-only {proposal.side.value} needs an open "
                    f"{proposal.position_side.value} position on {proposal.symbol}; "
                    f"there is {held}",
                    limit=_ZERO if position is None else position.quantity,
                    actual=proposal.quantity,
                )
            )
            return proposal.quantity
        if proposal.quantity > position.quantity:
            reasons.append(
                RiskReason(
                    ReasonCode.REDUCE_EXCEEDS_POSITION,
                    f"a reduce-only order cannot exceed the position: cut from "
                    f"{_show(proposal.quantity)} to {_show(position.quantity)}",
                    limit=position.quantity,
                    actual=proposal.quantity,
                    effect=ReasonEffect.RESIZE,
                )
            )
            return position.quantity
        return proposal.quantity

    def _check_opening(
        self,
        proposal: TradeProposal,
        state: RiskState,
        instrument: Instrument | None,
        reasons: list[RiskReason],
    ) -> Decimal:
        limits = self._limits
        reasons.extend(_cooldown_reasons(state, limits))
        held = state.position(proposal.symbol)
        # Adding to (or turning) the position on this symbol does not open another one.
        opening_new = held is None
        positions_after = len(state.open_positions) + (1 if opening_new else 0)
        if positions_after > limits.max_open_positions:
            reasons.append(
                RiskReason(
                    ReasonCode.MAX_OPEN_POSITIONS,
                    f"a new position would make {positions_after} open positions, over the "
                    f"maximum of {limits.max_open_positions}",
                    limit=Decimal(limits.max_open_positions),
                    actual=Decimal(positions_after),
                )
            )
        reasons.extend(_leverage_reasons(proposal, limits, instrument))
        reasons.extend(_reward_reasons(proposal, limits))
        if instrument is None:
            return proposal.quantity
        reasons.extend(_tick_reasons(proposal, instrument))
        if state.equity <= 0:
            # Already HALTED (NO_EQUITY); sizing against no equity would only add noise.
            return proposal.quantity
        return self._size(proposal, state, instrument, held, reasons)

    def _size(
        self,
        proposal: TradeProposal,
        state: RiskState,
        instrument: Instrument,
        held: Position | None,
        reasons: list[RiskReason],
    ) -> Decimal:
        caps = self._caps(proposal, state, instrument, held)
        quantity = min([proposal.quantity, *(cap.quantity for cap in caps)])
        allowed = instrument.round_quantity(max(quantity, _ZERO))
        for cap in caps:
            reasons.append(cap.reason)
        if not caps and allowed < proposal.quantity:
            reasons.append(
                RiskReason(
                    ReasonCode.QUANTITY_ROUNDED,
                    f"quantity {_show(proposal.quantity)} rounded down to "
                    f"{_show(allowed)}, a whole number of lots of {_show(instrument.lot_size)}",
                    limit=allowed,
                    actual=proposal.quantity,
                    effect=ReasonEffect.RESIZE,
                )
            )
        notional = allowed * proposal.entry_price
        if allowed < instrument.lot_size or notional < instrument.min_notional:
            largest = "the proposed size" if not caps else "the largest size the limits allow"
            reasons.append(
                RiskReason(
                    ReasonCode.BELOW_MINIMUM_SIZE,
                    f"{largest}, {_show(allowed)} {instrument.base_asset} "
                    f"({_show(notional, 2)} {instrument.quote_asset}), is below the "
                    f"minimum for {instrument.symbol}: one lot of {_show(instrument.lot_size)} "
                    f"and {_show(instrument.min_notional)} {instrument.quote_asset} notional",
                    limit=instrument.min_notional,
                    actual=notional,
                )
            )
        return allowed

    def _caps(
        self,
        proposal: TradeProposal,
        state: RiskState,
        instrument: Instrument,
        held: Position | None,
    ) -> list[_Cap]:
        limits = self._limits
        equity = state.equity
        quote = instrument.quote_asset
        caps: list[_Cap] = []

        risk = proposal.risk_amount
        distance = proposal.stop_distance
        budget = equity * limits.max_risk_per_trade
        if risk is not None and distance is not None and risk > budget:
            quantity = budget / distance
            caps.append(
                _Cap(
                    quantity,
                    RiskReason(
                        ReasonCode.RISK_PER_TRADE,
                        f"the stop-loss would lose {_show(risk, 2)} {quote} "
                        f"({_pct(risk / equity)} of equity), over the "
                        f"{_pct(limits.max_risk_per_trade)} risk budget of "
                        f"{_show(budget, 2)} {quote}: size cut to "
                        f"{_show(instrument.round_quantity(quantity))}",
                        limit=budget,
                        actual=risk,
                        effect=ReasonEffect.RESIZE,
                    ),
                )
            )

        same_side = held is not None and held.side is proposal.position_side
        held_notional = held.notional if held is not None and same_side else _ZERO
        position_limit = equity * limits.max_position_to_equity
        if limits.max_position_notional is not None:
            position_limit = min(position_limit, limits.max_position_notional)
        caps.extend(
            _notional_cap(
                ReasonCode.POSITION_NOTIONAL,
                f"the {proposal.symbol} position",
                held_notional,
                position_limit,
                proposal,
                instrument,
            )
        )
        asset = instrument.base_asset
        caps.extend(
            _notional_cap(
                ReasonCode.ASSET_EXPOSURE,
                f"exposure to {asset}",
                state.exposure_by_asset.get(asset, _ZERO),
                equity * limits.max_asset_exposure_to_equity,
                proposal,
                instrument,
            )
        )
        caps.extend(
            _notional_cap(
                ReasonCode.TOTAL_EXPOSURE,
                "total exposure",
                state.total_exposure,
                equity * limits.max_total_exposure_to_equity,
                proposal,
                instrument,
            )
        )
        return caps


def _notional_cap(
    code: ReasonCode,
    what: str,
    current: Decimal,
    limit: Decimal,
    proposal: TradeProposal,
    instrument: Instrument,
) -> list[_Cap]:
    after = current + proposal.notional
    if after <= limit:
        return []
    room = max(_ZERO, limit - current)
    quantity = room / proposal.entry_price
    quote = instrument.quote_asset
    return [
        _Cap(
            quantity,
            RiskReason(
                code,
                f"{what} would be {_show(after, 2)} {quote}, over the limit of "
                f"{_show(limit, 2)} {quote} ({_show(current, 2)} held): size cut to "
                f"{_show(instrument.round_quantity(quantity))}",
                limit=limit,
                actual=after,
                effect=ReasonEffect.RESIZE,
            ),
        )
    ]


def _cooldown_reasons(state: RiskState, limits: RiskLimits) -> list[RiskReason]:
    if state.consecutive_losses < limits.max_consecutive_losses or state.last_loss_at is None:
        return []
    elapsed = (state.now - state.last_loss_at).total_seconds()
    if elapsed >= limits.cooldown_seconds:
        return []
    remaining = limits.cooldown_seconds - elapsed
    return [
        RiskReason(
            ReasonCode.COOLDOWN,
            f"{state.consecutive_losses} losing trades in a row: no new positions for "
            f"{_show(Decimal(limits.cooldown_seconds))} s after the last loss "
            f"({_show(Decimal(remaining), 0)} s left)",
            limit=Decimal(str(limits.cooldown_seconds)),
            actual=Decimal(str(elapsed)),
        )
    ]


def _leverage_reasons(
    proposal: TradeProposal, limits: RiskLimits, instrument: Instrument | None
) -> list[RiskReason]:
    cap = limits.max_leverage
    detail = ""
    if instrument is not None:
        cap = min(cap, instrument.max_leverage)
        detail = (
            f" ({instrument.symbol} allows {_show(instrument.max_leverage)}x, "
            f"the desk {_show(limits.max_leverage)}x)"
        )
    if proposal.leverage <= cap:
        return []
    return [
        RiskReason(
            ReasonCode.LEVERAGE,
            f"leverage {_show(proposal.leverage)}x is over the maximum {_show(cap)}x{detail}",
            limit=cap,
            actual=proposal.leverage,
        )
    ]


def _reward_reasons(proposal: TradeProposal, limits: RiskLimits) -> list[RiskReason]:
    if limits.min_reward_to_risk == 0:
        return []
    ratio = proposal.reward_to_risk
    if ratio is None:
        return [
            RiskReason(
                ReasonCode.REWARD_TO_RISK,
                f"no take-profit: the reward-to-risk cannot be checked against the minimum "
                f"{_show(limits.min_reward_to_risk)}",
                limit=limits.min_reward_to_risk,
            )
        ]
    if ratio >= limits.min_reward_to_risk:
        return []
    return [
        RiskReason(
            ReasonCode.REWARD_TO_RISK,
            f"reward-to-risk is {_show(ratio, 2)} (take-profit distance over stop distance), "
            f"under the minimum {_show(limits.min_reward_to_risk)}",
            limit=limits.min_reward_to_risk,
            actual=ratio,
        )
    ]


def _tick_reasons(proposal: TradeProposal, instrument: Instrument) -> list[RiskReason]:
    reasons: list[RiskReason] = []
    # A market entry's price is only the reference the size was computed from; the venue
    # picks the fill price, so only a limit entry must sit on the grid.
    entry = proposal.entry_price if proposal.entry_type is EntryType.LIMIT else None
    prices = (
        ("entry_price", entry),
        ("stop_loss", proposal.stop_loss),
        ("take_profit", proposal.take_profit),
    )
    for name, price in prices:
        if price is not None and price % instrument.tick_size != 0:
            reasons.append(
                RiskReason(
                    ReasonCode.PRICE_OFF_TICK,
                    f"{name} {_show(price)} is not a multiple of the tick size "
                    f"{_show(instrument.tick_size)} of {instrument.symbol}",
                    limit=instrument.tick_size,
                    actual=price,
                )
            )
    return reasons
