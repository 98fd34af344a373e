"""The research executor: brackets placed straight on a paper venue, with no safety net.

`DirectBracketExecutor` is for strategy research only. It sends a proposal's entry to the
venue, waits for the entry to fill (bar by bar, from the venue's own bar stream), then places
a reduce-only stop-loss and take-profit. There is no risk engine, no journal, no retry, no
reconciliation and no alert: a rejected order simply fails the proposal. The production path
is the desk's execution manager behind the risk engine, which takes the same proposals.

One-cancels-other is done lazily, because the paper venue leaves it to the client: when a
stop-loss or take-profit closes the position, its sibling stays resting (reduce-only, so it
can never open a position; the venue expires it if touched) until the next proposal for the
symbol, which cancels it before anything else is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from legato.kernel.errors import ValidationError
from legato.trading.errors import OrderRejected
from legato.trading.orders import Order, OrderStatus, OrderType
from legato.trading.paper_venue import PaperVenue
from legato.trading.proposals import EntryType, TradeProposal

__all__ = ["BracketOutcome", "DirectBracketExecutor"]


@dataclass(frozen=True, slots=True)
class BracketOutcome:
    """What became of one proposal on the research path.

    `success` is True when the entry filled and its protection was placed (or, for a
    reduce-only proposal, the closing order was accepted). `reason` says why not otherwise.
    """

    proposal: TradeProposal
    success: bool
    orders: tuple[Order, ...] = ()
    reason: str | None = None


class DirectBracketExecutor:
    """Places entry, stop-loss and take-profit directly on a `PaperVenue` (research only).

    `prefix` starts every client order id: ``<prefix><n>-E``, ``-SL``, ``-TP`` and ``-X``
    (a close), the same role suffixes the desk's execution manager uses.
    """

    def __init__(self, venue: PaperVenue, *, prefix: str = "bt") -> None:
        if not isinstance(prefix, str) or not 1 <= len(prefix) <= 20:
            raise ValidationError("prefix", prefix, "a string of 1 to 20 characters")
        self._venue = venue
        self._prefix = prefix
        self._sequence = 0
        # The protective orders of each symbol's last bracket, cancelled before the next order.
        self._protection: dict[str, tuple[str, ...]] = {}

    async def execute_trade(self, proposal: TradeProposal) -> BracketOutcome:
        """Carry out `proposal`: entry, then stop-loss and take-profit; or a close."""
        if not isinstance(proposal, TradeProposal):
            raise ValidationError("proposal", proposal, "a TradeProposal")
        self._sequence += 1
        base = f"{self._prefix}{self._sequence}"
        await self._cancel_protection(proposal.symbol)
        if proposal.reduce_only:
            return await self._close(proposal, base)
        return await self._bracket(proposal, base)

    async def _bracket(self, proposal: TradeProposal, base: str) -> BracketOutcome:
        venue = self._venue
        instrument = venue.instrument(proposal.symbol)
        limit = proposal.entry_type is EntryType.LIMIT
        entry = Order(
            client_order_id=f"{base}-E",
            symbol=proposal.symbol,
            side=proposal.side,
            type=OrderType.LIMIT if limit else OrderType.MARKET,
            quantity=proposal.quantity,
            price=proposal.entry_price if limit else None,
            leverage=proposal.leverage if instrument.is_perpetual else None,
            bracket_id=base,
        )
        # Subscribe before placing, so the bar that fills the entry cannot be missed.
        bars = venue.subscribe(proposal.symbol)
        try:
            try:
                entry = await venue.place_order(entry)
            except OrderRejected as rejected:
                return BracketOutcome(proposal, False, (), f"entry rejected: {rejected}")
            async for _ in bars:
                entry = await venue.get_order(client_order_id=entry.client_order_id)
                if entry.is_terminal:
                    break
        finally:
            # subscribe() is typed as a plain AsyncIterator; the paper venue's has aclose().
            await bars.aclose()  # type: ignore[attr-defined]
        if entry.status is not OrderStatus.FILLED:
            if entry.is_open:
                entry = await venue.cancel_order(client_order_id=entry.client_order_id)
            if not entry.filled_quantity:
                return BracketOutcome(proposal, False, (entry,), "entry did not fill")
        quantity = entry.filled_quantity
        closing = proposal.side.opposite
        protective: list[Order] = []
        assert proposal.stop_loss is not None  # TradeProposal requires it unless reduce-only
        wanted = [(f"{base}-SL", OrderType.STOP, proposal.stop_loss)]
        if proposal.take_profit is not None:
            wanted.append((f"{base}-TP", OrderType.TAKE_PROFIT, proposal.take_profit))
        for client_order_id, kind, trigger in wanted:
            order = Order(
                client_order_id=client_order_id,
                symbol=proposal.symbol,
                side=closing,
                type=kind,
                quantity=quantity,
                stop_price=trigger,
                reduce_only=True,
                parent_order_id=entry.client_order_id,
                bracket_id=base,
            )
            try:
                protective.append(await venue.place_order(order))
            except OrderRejected as rejected:
                # Already stopped out in the bar that filled the entry, or a trigger on the
                # wrong side of the market: report it; the research path does not repair.
                self._protection[proposal.symbol] = tuple(o.client_order_id for o in protective)
                orders = (entry, *protective)
                return BracketOutcome(proposal, False, orders, f"{kind.value} rejected: {rejected}")
        self._protection[proposal.symbol] = tuple(o.client_order_id for o in protective)
        return BracketOutcome(proposal, True, (entry, *protective))

    async def _close(self, proposal: TradeProposal, base: str) -> BracketOutcome:
        order = Order(
            client_order_id=f"{base}-X",
            symbol=proposal.symbol,
            side=proposal.side,
            type=OrderType.MARKET,
            quantity=proposal.quantity,
            reduce_only=True,
            bracket_id=base,
        )
        try:
            placed = await self._venue.place_order(order)
        except OrderRejected as rejected:
            return BracketOutcome(proposal, False, (), f"close rejected: {rejected}")
        return BracketOutcome(proposal, True, (placed,))

    async def _cancel_protection(self, symbol: str) -> None:
        for client_order_id in self._protection.pop(symbol, ()):
            order = await self._venue.get_order(client_order_id=client_order_id)
            if order.is_open:
                await self._venue.cancel_order(client_order_id=client_order_id)
