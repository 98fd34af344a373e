"""The position tracker: the desk's positions and balances, built from fills, in the ledger.

`PositionTracker` keeps one net position per symbol, as a perpetual venue does:

- `open_position(...)` records a new position with its stop-loss and take-profit orders in
  one store transaction: the position and both orders land together, or none of them.
- `apply_fills(fills)` books venue fills (each once, by fill id): the order's filled
  quantity, the position (opened, increased, reduced, closed or flipped, with PnL realized at
  each reduction exactly as `Position.reduce` computes it) and the quote balance (fees out,
  realized PnL in). Replaying the same fills changes nothing.
- `mark(prices)` values open positions at the latest prices (unrealized PnL).
- `close_position(symbol, price)` settles a position by hand (an operator's correction).
- `risk_state(now)` gives the risk engine its inputs: equity (balances plus unrealized PnL),
  the start-of-day, peak and low marks (kept per UTC day in the store), open positions,
  exposure per asset, and the current losing streak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError
from legato.trading.fills import Fill
from legato.trading.ledger import (
    EquityMarks,
    LedgerOrder,
    LedgerTransaction,
    OrderRole,
    TradingLedger,
)
from legato.trading.orders import Order, OrderStatus
from legato.trading.positions import Position, PositionSide
from legato.trading.risk import RiskState

__all__ = ["PositionTracker"]

_ZERO = Decimal(0)
# Closed positions read at first for the losing streak (more only when all of them lost).
_STREAK_READ = 8


async def _update_filled_order(tx: LedgerTransaction, record: LedgerOrder, at: datetime) -> None:
    """Bring a working order's status and average price up to its recorded fills."""
    order = record.order
    fills = await tx.fills_of(order.client_order_id)
    filled = sum((item.quantity for item in fills), _ZERO)
    if order.filled_quantity < filled <= order.quantity:
        cost = sum((item.price * item.quantity for item in fills), _ZERO)
        status = OrderStatus.FILLED if filled == order.quantity else OrderStatus.PARTIALLY_FILLED
        if order.can_transition(status):
            await tx.put_order(
                order.transition(
                    status, at=at, filled_quantity=filled, average_price=cost / filled
                ),
                record.role,
                record.intent_id,
            )


async def _book_fill(tx: LedgerTransaction, fill: Fill, at: datetime) -> bool:
    """Book one fill inside `tx`; return False when it was booked before."""
    if not await tx.add_fill(fill):
        return False
    record = await tx.get_order(fill.client_order_id)
    leverage = Decimal(1)
    if record is not None:
        order = record.order
        leverage = order.leverage or Decimal(1)
        # A final order is never updated from fills: their list is not even read (a
        # bracket's entry is recorded FILLED in the transaction that books its fills).
        if not order.is_terminal:
            await _update_filled_order(tx, record, at)
    position = await tx.open_position(fill.symbol)
    realized = _ZERO
    remainder = fill.quantity
    if position is not None and fill.side is position.side.closing_side:
        closing = min(fill.quantity, position.quantity)
        # Closed when the fill happened, not when it was booked (a backtest books lazily,
        # and a cooldown after a loss is measured from the close).
        reduced = position.reduce(
            closing, fill.price, fill.fee * closing / fill.quantity, fill.timestamp
        )
        realized = reduced.realized_pnl - position.realized_pnl
        await tx.put_position(reduced)
        remainder = fill.quantity - closing
        position = None
    elif position is not None:
        await tx.put_position(position.increase(fill.quantity, fill.price, fill.fee))
        remainder = _ZERO
    if remainder > 0:
        # Opens a position, or flips one that this fill more than closed.
        opened = Position.open(
            fill.symbol,
            PositionSide.opened_by(fill.side),
            remainder,
            fill.price,
            leverage=leverage,
            at=fill.timestamp,
            fee=fill.fee * remainder / fill.quantity,
        )
        await tx.put_position(opened)
    total = await tx.balance(fill.fee_asset)
    if total is not None:
        await tx.set_balance(fill.fee_asset, total - fill.fee + realized, at)
    return True


class PositionTracker:
    """Positions and balances from fills, each change one store transaction.

    `clock` stamps the changes. `instruments_base` maps each symbol to its base asset, for
    the exposure per asset in `risk_state` (symbols missing from it count under their own
    name).
    """

    __slots__ = ("_base", "_booked", "_clock", "_ledger", "_streak")

    def __init__(
        self,
        ledger: TradingLedger,
        *,
        clock: Clock | None = None,
        instruments_base: Mapping[str, str] | None = None,
    ) -> None:
        self._ledger = ledger
        self._clock: Clock = clock if clock is not None else RealClock()
        self._base = dict(instruments_base or {})
        # Fill ids this tracker has seen in the ledger. A booked fill is never removed, so
        # a fill found here needs no store read to be skipped; the ledger stays the truth
        # (a new tracker starts empty and asks it).
        self._booked: set[str] = set()
        # The losing streak last read from the store: (the positions watermark it was read
        # under, losses, when the newest of them closed). Read again when the watermark moves
        # (a position closed, by this tracker or anyone else); a new tracker starts empty.
        self._streak: tuple[tuple[int, int], int, datetime | None] | None = None

    @property
    def ledger(self) -> TradingLedger:
        """The ledger the tracker writes to."""
        return self._ledger

    async def set_balances(self, totals: Mapping[str, Decimal]) -> None:
        """Start tracking these balances (totals per asset), replacing what was recorded."""
        now = self._clock.now()

        async def write(tx: LedgerTransaction) -> None:
            for asset, total in totals.items():
                if not isinstance(total, Decimal) or not total.is_finite():
                    raise ValidationError(f"totals[{asset!r}]", total, "a finite Decimal")
                await tx.set_balance(asset, total, now)

        await self._ledger.write(write)

    def opening_writes(
        self,
        entry: Order,
        fills: Sequence[Fill],
        *,
        stop_loss: Order,
        take_profit: Order | None,
        intent_id: str | None = None,
    ) -> Callable[[LedgerTransaction], Awaitable[Position]]:
        """The writes of `open_position`, to run inside a larger transaction of the caller's."""
        if not fills:
            raise ValidationError("fills", fills, "at least one fill of the entry order")
        for fill in fills:
            if fill.client_order_id != entry.client_order_id:
                raise ValidationError(
                    "fills", fill.fill_id, f"fills of the entry {entry.client_order_id}"
                )
        now = self._clock.now()

        async def write(tx: LedgerTransaction) -> Position:
            await tx.put_order(entry, OrderRole.ENTRY, intent_id)
            await tx.put_order(stop_loss, OrderRole.STOP_LOSS, intent_id)
            if take_profit is not None:
                await tx.put_order(take_profit, OrderRole.TAKE_PROFIT, intent_id)
            for fill in fills:
                await _book_fill(tx, fill, now)
            position = await tx.open_position(entry.symbol)
            if position is None:
                raise ValidationError(
                    "fills", [fill.fill_id for fill in fills], "fills that leave a position open"
                )
            protected = position.with_protection(
                stop_loss.client_order_id,
                None if take_profit is None else take_profit.client_order_id,
            )
            await tx.put_position(protected)
            return protected

        return write

    async def open_position(
        self,
        entry: Order,
        fills: Sequence[Fill],
        *,
        stop_loss: Order,
        take_profit: Order | None,
        intent_id: str | None = None,
    ) -> Position:
        """Record the position `fills` open, with its protective orders, in one transaction.

        The entry order, its fills, the stop-loss and take-profit orders and the position
        (with references to both) are written together: if any write fails, none is kept.
        Fills booked before are not booked twice.
        """
        writes = self.opening_writes(
            entry, fills, stop_loss=stop_loss, take_profit=take_profit, intent_id=intent_id
        )
        return await self._ledger.write(writes)

    async def apply_fills(self, fills: Iterable[Fill]) -> list[Fill]:
        """Book the fills not booked yet (in the given order); return the ones booked now."""
        booked = self._booked
        pending = [fill for fill in fills if fill.fill_id not in booked]
        if not pending:
            return []
        known = await self._ledger.known_fill_ids(fill.fill_id for fill in pending)
        booked.update(known)
        fresh = [fill for fill in pending if fill.fill_id not in known]
        if not fresh:
            return []
        now = self._clock.now()

        async def write(tx: LedgerTransaction) -> list[Fill]:
            return [fill for fill in fresh if await _book_fill(tx, fill, now)]

        landed = await self._ledger.write(write)
        # Committed: every fresh fill is in the ledger now (booked here, or just before us).
        booked.update(fill.fill_id for fill in fresh)
        return landed

    def note_booked(self, fills: Iterable[Fill]) -> None:
        """Remember `fills` as booked: the caller saw them committed to the ledger.

        For writes made through `opening_writes` in a transaction of the caller's: once it
        has committed, a later `apply_fills` skips these fills without asking the ledger.
        """
        self._booked.update(fill.fill_id for fill in fills)

    async def set_protection(
        self, symbol: str, stop_loss_order_id: str | None, take_profit_order_id: str | None
    ) -> None:
        """Point the open position on `symbol` at new protective orders (no-op without one)."""

        async def write(tx: LedgerTransaction) -> None:
            position = await tx.open_position(symbol)
            if position is not None:
                await tx.put_position(
                    position.with_protection(stop_loss_order_id, take_profit_order_id)
                )

        await self._ledger.write(write)

    async def mark(self, prices: Mapping[str, Decimal]) -> list[Position]:
        """Value the open positions of these symbols at these prices; return them."""

        async def write(tx: LedgerTransaction) -> list[Position]:
            marked: list[Position] = []
            for symbol, price in prices.items():
                position = await tx.open_position(symbol)
                if position is not None:
                    position = position.mark(price)
                    await tx.put_position(position)
                    marked.append(position)
            return marked

        return await self._ledger.write(write)

    async def close_position(
        self, symbol: str, price: Decimal, *, fee: Decimal = _ZERO
    ) -> Position:
        """Settle the open position on `symbol` at `price` without a fill (operator use).

        Realizes its PnL into the quote balance like a closing fill would. Raises
        ValidationError when no position is open on `symbol`.
        """
        now = self._clock.now()

        async def write(tx: LedgerTransaction) -> Position:
            position = await tx.open_position(symbol)
            if position is None:
                raise ValidationError("symbol", symbol, "a symbol with an open position")
            closed = position.reduce(position.quantity, price, fee, now)
            await tx.put_position(closed)
            return closed

        return await self._ledger.write(write)

    async def risk_state(
        self,
        *,
        quote_asset: str,
        now: datetime | None = None,
        kill_switch: bool = False,
    ) -> RiskState:
        """The risk engine's inputs now, updating today's equity marks in the store.

        Equity is the `quote_asset` balance plus the open positions' unrealized PnL. The
        start-of-day equity is the first equity seen on this UTC day; peak and trough carry
        over from earlier days. The losing streak counts the most recent closed positions
        whose realized PnL after fees is negative (only those are read from the store).
        """
        moment = now if now is not None else self._clock.now()
        day = moment.date().isoformat()
        positions = await self._ledger.open_positions()
        losses, last_loss_at = await self._losing_streak(moment)
        unrealized = sum((p.unrealized_pnl for p in positions), _ZERO)

        async def write(tx: LedgerTransaction) -> tuple[EquityMarks, Decimal]:
            balance = await _balance(tx, quote_asset)
            latest = await tx.latest_equity_marks()
            marks = _marks_at(latest, balance + unrealized, day)
            if marks != latest:
                # Unmoved marks are not written again: the row's updated_at is when they last
                # changed, and a decision on a quiet bar sends no statement.
                await tx.put_equity_marks(marks, moment)
            return marks, balance

        # The equity the engine sees is read in the same transaction as the marks it wrote
        # (one read less per decision); as `TradingLedger.balances` reports it, a negative
        # balance counts as zero. A sole writer's memory may show that the marks have not
        # moved: then there is nothing to write, and no transaction is needed to say so.
        known = self._ledger.known_equity_inputs(quote_asset)
        unmoved: tuple[EquityMarks, Decimal] | None = None
        if known is not None:
            total, latest = known
            if (
                total is not None
                and latest is not None
                and _marks_at(latest, total + unrealized, day) == latest
            ):
                unmoved = latest, total
        marks, balance = unmoved if unmoved is not None else await self._ledger.write(write)
        equity = max(balance, _ZERO) + unrealized
        exposure: dict[str, Decimal] = {}
        for position in positions:
            asset = self._base.get(position.symbol, position.symbol)
            exposure[asset] = exposure.get(asset, _ZERO) + position.notional
        return RiskState(
            equity=equity,
            start_of_day_equity=marks.start_equity,
            peak_equity=max(marks.peak_equity, equity),
            now=moment,
            open_positions=tuple(positions),
            exposure_by_asset=exposure,
            consecutive_losses=losses,
            last_loss_at=last_loss_at,
            kill_switch=kill_switch,
            day_low_equity=min(marks.low_equity, equity),
            trough_equity=min(marks.trough_equity, equity),
        )

    async def reset_drawdown(
        self, *, quote_asset: str, now: datetime | None = None
    ) -> tuple[EquityMarks, EquityMarks | None]:
        """Measure the drawdown from the equity now: an operator's release of a drawdown halt.

        Today's peak and trough become the current equity (the `quote_asset` balance plus
        the open positions' unrealized PnL); the day's start and low stay, so a daily-loss
        halt is not lifted by this (the next day lifts it). Returns the new marks and the
        ones they replace (None when there were none). For after a review: the drawdown
        limit exists to stop a strategy that is not working.
        """
        moment = now if now is not None else self._clock.now()
        day = moment.date().isoformat()
        positions = await self._ledger.open_positions()

        async def write(tx: LedgerTransaction) -> tuple[EquityMarks, EquityMarks | None]:
            equity = await _balance(tx, quote_asset) + sum(
                (p.unrealized_pnl for p in positions), _ZERO
            )
            latest = await tx.latest_equity_marks()
            if latest is None or latest.day != day:
                marks = EquityMarks(day, equity, equity, equity, equity)
            else:
                marks = dataclasses.replace(latest, peak_equity=equity, trough_equity=equity)
            await tx.put_equity_marks(marks, moment)
            return marks, latest

        return await self._ledger.write(write)

    async def _losing_streak(self, moment: datetime) -> tuple[int, datetime | None]:
        """How many of the latest closed positions lost (after fees), and when the last closed.

        The closed history only changes when a position closes, so the streak is read again
        only when the ledger's positions watermark has moved since the last read (the
        watermark is read first: a close landing between the two reads moves it again, and
        the next call reads once more).
        """
        watermark = await self._ledger.positions_watermark()
        cached = self._streak
        if cached is not None and cached[0] == watermark:
            losses, closed_at = cached[1], cached[2]
        else:
            losses, closed_at = await self._read_losing_streak()
            self._streak = (watermark, losses, closed_at)
        if not losses:
            return 0, None
        return losses, closed_at or moment

    async def _read_losing_streak(self) -> tuple[int, datetime | None]:
        """The losing streak and its newest close, as the store has them now.

        Reads the newest closed positions only, a few more each time the streak reaches
        past what was read, so the cost follows the streak, not the whole trade history.
        """
        limit = _STREAK_READ
        while True:
            latest = await self._ledger.latest_closed_results(limit)
            losses = 0
            for realized_pnl, fees_paid, _ in latest:
                if realized_pnl - fees_paid >= 0:
                    break
                losses += 1
            if losses < len(latest) or len(latest) < limit:
                break
            limit *= 4
        if not losses:
            return 0, None
        return losses, latest[0][2]


def _marks_at(latest: EquityMarks | None, equity: Decimal, day: str) -> EquityMarks:
    """The equity marks after `equity` is seen on `day`, the `latest` marks before it."""
    if latest is None:
        marks = EquityMarks(day, equity, equity, equity, equity)
    elif latest.day != day:
        peak = max(latest.peak_equity, equity)
        trough = equity if equity >= latest.peak_equity else latest.trough_equity
        marks = EquityMarks(day, equity, equity, peak, min(trough, equity))
    else:
        marks = latest
    if equity > marks.peak_equity:
        # A new high resets the drawdown: the trough is measured from the new peak.
        marks = dataclasses.replace(marks, peak_equity=equity, trough_equity=equity)
    return dataclasses.replace(
        marks,
        low_equity=min(marks.low_equity, equity),
        trough_equity=min(marks.trough_equity, equity),
    )


async def _balance(tx: LedgerTransaction, quote_asset: str) -> Decimal:
    """The recorded `quote_asset` balance; ValidationError when the ledger tracks none."""
    balance = await tx.balance(quote_asset)
    if balance is None:
        raise ValidationError(
            "quote_asset", quote_asset, "an asset whose balance the ledger tracks"
        )
    return balance
