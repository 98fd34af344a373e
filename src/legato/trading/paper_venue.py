"""The paper venue: a simulated exchange account fed by market data bars.

`PaperVenue` implements `Venue`. Orders rest in it until bars arrive (`process_bar`, or
`run_feed` for a whole stream paced on the clock); each bar is matched with the rules of
`legato.trading.matching` (market orders at the next bar's open with slippage, limits when
the price reaches them, stops and take-profits on trigger, partial fills by a share of the
bar's volume, maker and taker fees). Spot instruments move balances; perpetual instruments
keep one net position per symbol with leverage, margin and reduce-only orders.

Like a real venue it enforces a server-side rate budget per pool ("orders" for placing and
cancelling, "general" for everything; an order call counts in both). A call over budget is
answered with RateLimitedError and a retry-after; a client that collects `ban_threshold`
such answers within `ban_window` seconds is banned for `ban_duration` seconds (VenueBanned
on every call). Every call first waits on the venue's client-side `RateLimitGroup`, built by
default from the same budgets, so a client that goes through it never sees a rate-limit
answer it did not provoke with fault injection; every rate-limit answer drains that group
for its retry-after.

`state()` and `restore(state)` carry the account and the book across a restart of the
process (`PaperVenueState`, kept in the store by the ledger), the way a real exchange keeps
them while the desk is down.

Things it does not model, on purpose: liquidations and funding (a perpetual wallet can go
below zero), other traders' queue position, and cancelling a position's other protective
order when one fills (real venues leave that to the client).

docs/concepts/paper-venue.md describes the rules for traders.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import NoReturn, TypeVar

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import (
    DeadlineExceeded,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
)
from legato.kernel.ratelimit import Budget, RateLimitGroup
from legato.trading.balances import Balance
from legato.trading.errors import (
    DuplicateClientOrderId,
    OrderNotFound,
    OrderRejected,
    VenueBanned,
)
from legato.trading.faults import Fault, FaultKind, FaultPlan
from legato.trading.fills import Fill, Liquidity
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar, replay
from legato.trading.matching import (
    Execution,
    MatchingRules,
    intrabar_path,
    match_order,
    trigger_level,
)
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.paper_venue_state import PaperVenueState
from legato.trading.positions import Position, PositionSide

__all__ = ["CALL_POOLS", "GENERAL_POOL", "ORDER_POOL", "PaperVenue", "PaperVenueConfig"]

ORDER_POOL = "orders"
GENERAL_POOL = "general"

# The budget pools each venue call draws on (an order call counts in both).
CALL_POOLS: Mapping[str, tuple[str, ...]] = {
    "place_order": (ORDER_POOL, GENERAL_POOL),
    "cancel_order": (ORDER_POOL, GENERAL_POOL),
    "get_order": (GENERAL_POOL,),
    "open_orders": (GENERAL_POOL,),
    "fills": (GENERAL_POOL,),
    "positions": (GENERAL_POOL,),
    "balances": (GENERAL_POOL,),
}
_BPS = Decimal(10_000)
_T = TypeVar("_T")
# How many admitted calls `server_log` keeps: enough to audit any budget window, bounded so a
# long run does not grow without limit.
_SERVER_LOG_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class PaperVenueConfig:
    """How the paper venue matches, how slow it is, and the budgets it enforces.

    `latency` is added to every call (seconds of clock time, before the call takes effect).
    `order_budget` and `general_budget` are the server-side limits of the "orders" and
    "general" pools. A client answered `ban_threshold` times with a rate limit within
    `ban_window` seconds is banned for `ban_duration` seconds. `market_buy_reserve_bps` is how
    far above the last price a spot market (or stop) buy's funds are reserved.
    `honor_retry_after` drains the client-side limits for every rate-limit answer's
    retry-after; set it False to play a client that ignores the hints (and gets banned).
    Every duration is in seconds of the clock the venue runs on; `at_speed(speed)` gives the
    config of a venue whose market is replayed `speed` times faster than real time.
    """

    rules: MatchingRules = field(default_factory=MatchingRules)
    latency: float = 0.0
    order_budget: Budget = field(default_factory=lambda: Budget(limit=15, per=10.0))
    general_budget: Budget = field(default_factory=lambda: Budget(limit=60, per=60.0))
    ban_threshold: int = 3
    ban_window: float = 60.0
    ban_duration: float = 120.0
    market_buy_reserve_bps: Decimal = Decimal(100)
    honor_retry_after: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rules, MatchingRules):
            raise ValidationError("rules", self.rules, "a MatchingRules")
        if self.latency < 0:
            raise ValidationError("latency", self.latency, "seconds >= 0")
        if isinstance(self.ban_threshold, bool) or self.ban_threshold < 1:
            raise ValidationError("ban_threshold", self.ban_threshold, "an integer >= 1")
        if self.ban_window <= 0:
            raise ValidationError("ban_window", self.ban_window, "seconds > 0")
        if self.ban_duration < 0:
            raise ValidationError("ban_duration", self.ban_duration, "seconds >= 0")
        if not isinstance(self.market_buy_reserve_bps, Decimal) or self.market_buy_reserve_bps < 0:
            raise ValidationError(
                "market_buy_reserve_bps", self.market_buy_reserve_bps, "a Decimal >= 0"
            )

    def at_speed(self, speed: float) -> PaperVenueConfig:
        """This config for a market replayed `speed` times faster than its bars' spacing.

        The venue models an exchange that lives in the replayed market's time: a budget of
        15 orders per 10 market seconds is 15 orders per 10/`speed` seconds of the clock, and
        the latency, the ban window and the ban duration shrink the same way. Counts (budget
        limits, `ban_threshold`), matching and reserves are unchanged; `speed` 1 returns this
        config itself. Raises ValidationError for a speed that is not a finite number > 0, or
        so large that a budget window would shrink to nothing.
        """
        if (
            isinstance(speed, bool)
            or not isinstance(speed, int | float)
            or not math.isfinite(speed)
            or speed <= 0
        ):
            raise ValidationError("speed", speed, "a finite number > 0")
        if speed == 1:
            return self
        windows = (self.order_budget.per / speed, self.general_budget.per / speed)
        durations = (self.latency / speed, self.ban_duration / speed)
        if not all(0 < window < math.inf for window in (*windows, self.ban_window / speed)) or (
            not all(math.isfinite(duration) for duration in durations)
        ):
            raise ValidationError(
                "speed", speed, "a speed that leaves every window a finite number of seconds > 0"
            )
        return dataclasses.replace(
            self,
            latency=self.latency / speed,
            order_budget=Budget(limit=self.order_budget.limit, per=windows[0]),
            general_budget=Budget(limit=self.general_budget.limit, per=windows[1]),
            ban_window=self.ban_window / speed,
            ban_duration=self.ban_duration / speed,
        )

    def client_limits(self, clock: Clock) -> RateLimitGroup:
        """A client-side rate-limit group matching the server budgets, on `clock`."""
        return RateLimitGroup(
            {ORDER_POOL: self.order_budget, GENERAL_POOL: self.general_budget}, clock=clock
        )


_BELOW_ALL = Decimal("-Infinity")
_ABOVE_ALL = Decimal("Infinity")


@dataclass(frozen=True, slots=True)
class _QuietBand:
    """A symbol's working orders, all waiting for a trigger, and the band that reaches none.

    A bar whose low is above `falling` (the highest trigger on a fall) and whose high is
    below `rising` (the lowest trigger on a rise) triggers none of `ids`.
    """

    ids: tuple[str, ...]
    falling: Decimal
    rising: Decimal


class _BarSubscription:
    """An async iterator of bars; registered at creation so it misses nothing after that."""

    __slots__ = ("_closed", "_queue", "_venue", "symbol")

    def __init__(self, venue: PaperVenue, symbol: str | None) -> None:
        self._venue = venue
        self.symbol = symbol
        # Unbounded on purpose: the venue's bar processing is synchronous and must not block
        # on a slow reader; a reader that falls behind keeps every bar, in order.
        self._queue: asyncio.Queue[Bar | None] = asyncio.Queue()
        self._closed = False

    def __aiter__(self) -> _BarSubscription:
        return self

    async def __anext__(self) -> Bar:
        if self._closed:
            raise StopAsyncIteration
        bar = await self._queue.get()
        if bar is None:
            await self.aclose()
            raise StopAsyncIteration
        return bar

    def push(self, item: Bar | None) -> None:
        if not self._closed:
            self._queue.put_nowait(item)

    async def aclose(self) -> None:
        """Stop receiving bars."""
        if not self._closed:
            self._closed = True
            self._venue._unsubscribe(self)


class PaperVenue:
    """A simulated exchange account: matching engine, balances, positions, budgets, faults.

    `instruments` are the markets it lists; `balances` the starting holdings by asset.
    `limits` is the client-side rate-limit group every call waits on (default: the config's
    budgets). `faults` is the fault plan (default: an empty plan with `random.Random(0)`).
    """

    def __init__(
        self,
        instruments: Iterable[Instrument],
        *,
        balances: Mapping[str, Decimal] | None = None,
        config: PaperVenueConfig | None = None,
        clock: Clock | None = None,
        limits: RateLimitGroup | None = None,
        faults: FaultPlan | None = None,
        name: str = "paper",
    ) -> None:
        self._clock: Clock = clock if clock is not None else RealClock()
        self._config = config if config is not None else PaperVenueConfig()
        self._limits = limits if limits is not None else self._config.client_limits(self._clock)
        for pool in (ORDER_POOL, GENERAL_POOL):
            if pool not in self._limits.names:
                raise ValidationError("limits", self._limits.names, f"a group with a {pool!r} pool")
        self.faults = faults if faults is not None else FaultPlan()
        self._name = name
        self._instruments: dict[str, Instrument] = {}
        for instrument in instruments:
            if instrument.symbol in self._instruments:
                raise ValidationError("instruments", instrument.symbol, "each symbol once")
            self._instruments[instrument.symbol] = instrument
        if not self._instruments:
            raise ValidationError("instruments", [], "at least one Instrument")
        self._holdings: dict[str, Decimal] = {}
        for asset, amount in (balances or {}).items():
            if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
                raise ValidationError(f"balances[{asset!r}]", amount, "a finite Decimal >= 0")
            self._holdings[asset] = amount
        self._orders: dict[str, Order] = {}
        self._by_venue_id: dict[str, str] = {}
        self._open_ids: dict[str, None] = {}  # insertion-ordered set of open client ids
        self._lock_per_unit: dict[str, tuple[str, Decimal]] = {}
        self._bars_seen: Counter[str] = Counter()
        # Per open order, the order as last seen by `process_bar` and its `trigger_level`.
        self._triggers: dict[str, tuple[Order, tuple[Decimal, bool] | None]] = {}
        # Per symbol, its quiet band (see `_quiet_band`), dropped when one of its orders changes.
        self._bands: dict[str, _QuietBand | None] = {}
        self._hidden_until: dict[str, float] = {}
        self._positions: dict[str, Position] = {}
        # Symbols whose position is still to be marked at the last price (see `_close_bar`).
        self._unmarked: set[str] = set()
        self._closed_positions: list[Position] = []
        self._fills: list[Fill] = []
        # The same fills per symbol (what `fills(symbol)` lists, without a pass over all).
        self._symbol_fills: dict[str, list[Fill]] = {}
        # The last bar matched per symbol (its close is the last price); a restored venue
        # starts from the saved prices and times until its symbols' next bars.
        self._last_bars: dict[str, Bar] = {}
        self._saved_prices: dict[str, Decimal] = {}
        self._saved_times: dict[str, datetime] = {}
        self._subscriptions: list[_BarSubscription] = []
        self._calls: Counter[str] = Counter()
        self._order_sequence = 0
        self._fill_sequence = 0
        # Server-side budget state, on the clock's monotonic scale.
        self._budgets = {
            ORDER_POOL: self._config.order_budget,
            GENERAL_POOL: self._config.general_budget,
        }
        self._server_grants: dict[str, deque[float]] = {pool: deque() for pool in self._budgets}
        self._server_log: deque[tuple[float, str]] = deque(maxlen=_SERVER_LOG_SIZE)
        self._cooldown_until: dict[str, float] = dict.fromkeys(self._budgets, float("-inf"))
        self._rate_limit_answers: deque[float] = deque()
        self._banned_until = float("-inf")

    # ------------------------------------------------------------------ introspection

    @property
    def name(self) -> str:
        """The venue's name, for logs and metrics."""
        return self._name

    @property
    def clock(self) -> Clock:
        """The clock the venue stamps, sleeps and counts budgets on."""
        return self._clock

    @property
    def config(self) -> PaperVenueConfig:
        """The venue's matching, latency and budget settings."""
        return self._config

    @property
    def limits(self) -> RateLimitGroup:
        """The client-side rate-limit group every call waits on."""
        return self._limits

    @property
    def call_counts(self) -> Mapping[str, int]:
        """How many calls of each method reached the venue (what `Fault.on_call` counts)."""
        return dict(self._calls)

    @property
    def server_log(self) -> Sequence[tuple[float, str]]:
        """(monotonic time, pool) per call the server admitted (the last 100,000), oldest first."""
        return tuple(self._server_log)

    @property
    def banned_until(self) -> float | None:
        """When the current ban ends (monotonic scale), or None when not banned."""
        return self._banned_until if self._clock.monotonic() < self._banned_until else None

    def instrument(self, symbol: str) -> Instrument:
        """Return the instrument listed as `symbol`; raise ValidationError if unknown."""
        try:
            return self._instruments[symbol]
        except KeyError:
            raise ValidationError("symbol", symbol, f"one of {sorted(self._instruments)}") from None

    def last_price(self, symbol: str) -> Decimal | None:
        """The close of the last bar seen for `symbol`, or None before the first."""
        bar = self._last_bars.get(symbol)
        return bar.close if bar is not None else self._saved_prices.get(symbol)

    def last_bar_time(self, symbol: str) -> datetime | None:
        """The timestamp of the last bar seen for `symbol`, or None before the first."""
        bar = self._last_bars.get(symbol)
        return bar.timestamp if bar is not None else self._saved_times.get(symbol)

    # ------------------------------------------------------------------ durable state

    def state(self) -> PaperVenueState:
        """Snapshot the account and the book (see `PaperVenueState`); no call, no budget."""
        self._mark_positions()
        return PaperVenueState(
            name=self._name,
            saved_at=self._clock.now(),
            holdings=dict(self._holdings),
            orders=tuple(self._orders.values()),
            open_order_ids=tuple(self._open_ids),
            reservations=dict(self._lock_per_unit),
            bars_seen={cid: self._bars_seen[cid] for cid in self._open_ids},
            positions=tuple(self._positions.values()),
            closed_positions=tuple(self._closed_positions),
            fills=tuple(self._fills),
            last_prices={
                **self._saved_prices,
                **{symbol: bar.close for symbol, bar in self._last_bars.items()},
            },
            order_sequence=self._order_sequence,
            fill_sequence=self._fill_sequence,
            last_bars={
                **self._saved_times,
                **{symbol: bar.timestamp for symbol, bar in self._last_bars.items()},
            },
        )

    def restore(self, state: PaperVenueState) -> None:
        """Resume from `state`: replace the account and the book with the saved ones.

        What a real exchange keeps while the desk is down comes back: balances, every order
        (working ones rest again, in their old arrival order), positions, fills, last prices
        and the id counters. Rate-limit budgets and faults stay this process's own. Raises
        ValidationError, changing nothing, when the state is another venue's or names a
        symbol this venue does not list.
        """
        if not isinstance(state, PaperVenueState):
            raise ValidationError("state", state, "a PaperVenueState")
        if state.name != self._name:
            raise ValidationError("state.name", state.name, f"this venue's name {self._name!r}")
        symbols = {order.symbol for order in state.orders}
        symbols |= {position.symbol for position in (*state.positions, *state.closed_positions)}
        symbols |= (
            {fill.symbol for fill in state.fills} | set(state.last_prices) | set(state.last_bars)
        )
        unknown = sorted(symbols - set(self._instruments))
        if unknown:
            raise ValidationError("state", unknown, f"symbols among {sorted(self._instruments)}")
        self._holdings = dict(state.holdings)
        self._orders = {order.client_order_id: order for order in state.orders}
        self._by_venue_id = {
            order.venue_order_id: order.client_order_id
            for order in state.orders
            if order.venue_order_id is not None
        }
        self._open_ids = dict.fromkeys(state.open_order_ids)
        self._lock_per_unit = dict(state.reservations)
        self._bars_seen = Counter(state.bars_seen)
        self._triggers = {}
        self._bands = {}
        self._hidden_until = {}
        self._positions = {position.symbol: position for position in state.positions}
        self._unmarked = set()
        self._closed_positions = list(state.closed_positions)
        self._fills = list(state.fills)
        self._symbol_fills = {}
        for fill in self._fills:
            self._symbol_fills.setdefault(fill.symbol, []).append(fill)
        self._last_bars = {}
        self._saved_prices = dict(state.last_prices)
        self._saved_times = dict(state.last_bars)
        self._order_sequence = state.order_sequence
        self._fill_sequence = state.fill_sequence

    # ------------------------------------------------------------------ the Venue API

    async def place_order(self, order: Order) -> Order:
        """Place a NEW (or UNKNOWN) order; return it ACCEPTED, with its venue order id.

        Raises OrderRejected (why in `reason`; DuplicateClientOrderId when the client id was
        used before), RateLimitedError, TransientError or UnknownOutcomeError.
        """
        if not isinstance(order, Order):
            raise ValidationError("order", order, "an Order")
        key = order.client_order_id
        fault = await self._enter("place_order", key)
        placed = self._place(order)
        return await self._leave("place_order", key, fault, placed)

    async def cancel_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        """Cancel an open order by either id; return it CANCELLED.

        Raises OrderNotFound, or OrderRejected when the order is already final.
        """
        self._check_ids(client_order_id, venue_order_id)
        fault = await self._enter("cancel_order", client_order_id)
        cancelled = self._cancel(self._find(client_order_id, venue_order_id))
        return await self._leave("cancel_order", cancelled.client_order_id, fault, cancelled)

    async def get_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        """Return the venue's view of one order; raise OrderNotFound if it is not visible."""
        self._check_ids(client_order_id, venue_order_id)
        fault = await self._enter("get_order", client_order_id)
        order = self._find(client_order_id, venue_order_id)
        return await self._leave("get_order", client_order_id, fault, order)

    async def open_orders(self, symbol: str | None = None) -> Sequence[Order]:
        """Return the visible open orders (of `symbol`, or all), oldest first."""
        if symbol is not None:
            self.instrument(symbol)
        fault = await self._enter("open_orders", None)
        orders = [
            self._orders[cid]
            for cid in self._open_ids
            if self._visible(cid) and (symbol is None or self._orders[cid].symbol == symbol)
        ]
        return await self._leave("open_orders", None, fault, orders)

    async def fills(self, symbol: str | None = None) -> Sequence[Fill]:
        """Return the account's fills (of `symbol`, or all), oldest first."""
        if symbol is not None:
            self.instrument(symbol)
        fault = await self._enter("fills", None)
        # A copy at C speed: monitors list every fill each pass.
        fills = list(self._fills if symbol is None else self._symbol_fills.get(symbol, ()))
        return await self._leave("fills", None, fault, fills)

    async def positions(self) -> Sequence[Position]:
        """Return the open positions, marked at the last price, one per symbol."""
        fault = await self._enter("positions", None)
        self._mark_positions()
        return await self._leave("positions", None, fault, list(self._positions.values()))

    async def balances(self) -> Mapping[str, Balance]:
        """Return the balances by asset: free, and locked by open orders and margin."""
        fault = await self._enter("balances", None)
        return await self._leave("balances", None, fault, self.snapshot_balances())

    def subscribe(self, symbol: str | None = None) -> AsyncIterator[Bar]:
        """Return an async iterator of the bars the venue processes from now on.

        It ends when the feed ends (`end_of_data`) or when closed with `aclose()`.
        """
        if symbol is not None:
            self.instrument(symbol)
        subscription = _BarSubscription(self, symbol)
        self._subscriptions.append(subscription)
        return subscription

    # ------------------------------------------------------------------ market data

    def process_bar(self, bar: Bar) -> list[Fill]:
        """Match every open order of `bar.symbol` against `bar`; return the fills it made.

        Orders are applied in the order the intrabar path reaches them (ties: oldest first).
        Positions are then marked at the bar's close and the bar goes to subscribers.
        """
        symbol = bar.symbol
        instrument = self._instruments.get(symbol)
        if instrument is None:
            instrument = self.instrument(symbol)  # raises ValidationError
        if not self._open_ids:
            # No working order: nothing to match, the bar only marks (the common case).
            self._close_bar(bar)
            return []
        if symbol in self._bands:
            band = self._bands[symbol]
        else:
            band = self._bands[symbol] = self._quiet_band(symbol)
        if band is not None and band.falling < bar.low and bar.high < band.rising:
            # Every working order of the symbol waits for a trigger this bar does not reach
            # (most bars of a stop-loss and take-profit): what the walk below would find.
            bars_seen = self._bars_seen
            for cid in band.ids:
                bars_seen[cid] += 1
            self._close_bar(bar)
            return []
        fills_before = len(self._fills)
        rules = self._config.rules
        path: tuple[Decimal, Decimal, Decimal, Decimal] | None = None
        planned: list[tuple[Decimal, int, str, Execution]] = []
        bars_seen = self._bars_seen
        triggers = self._triggers
        high, low = bar.high, bar.low
        for sequence, cid in enumerate(self._open_ids):
            order = self._orders[cid]
            if order.symbol != symbol:
                continue
            seen = bars_seen[cid]
            bars_seen[cid] = seen + 1
            known = triggers.get(cid)
            if known is None or known[0] is not order:
                known = (order, trigger_level(order))
                triggers[cid] = known
            level = known[1]
            if level is not None and ((high < level[0]) if level[1] else (low > level[0])):
                # Most bars of a working stop-loss or take-profit: its trigger is not reached
                # (what `match_order` would answer, without the call or the intrabar path).
                continue
            if path is None:
                position = self._positions.get(symbol)
                side = position.side if position is not None else None
                path = intrabar_path(bar, rules.intrabar, side)
            execution = match_order(order, bar, path, rules, instrument.lot_size, fresh=seen == 0)
            if execution is not None:
                planned.append((execution.at, sequence, cid, execution))
        if planned:
            planned.sort(key=lambda item: (item[0], item[1]))
            for _, _, cid, execution in planned:
                self._apply(cid, execution, instrument)
        self._close_bar(bar)
        return self._fills[fills_before:]

    def _quiet_band(self, symbol: str) -> _QuietBand | None:
        """The band of prices inside which a bar of `symbol` triggers none of its orders.

        None when one of its working orders does not wait for a trigger (a limit order, a
        triggered stop): then every bar is matched order by order.
        """
        ids: list[str] = []
        falling, rising = _BELOW_ALL, _ABOVE_ALL
        for cid in self._open_ids:
            order = self._orders[cid]
            if order.symbol != symbol:
                continue
            level = trigger_level(order)
            if level is None:
                return None
            ids.append(cid)
            price, rises = level
            if rises:
                rising = min(rising, price)
            else:
                falling = max(falling, price)
        return _QuietBand(tuple(ids), falling, rising)

    def _close_bar(self, bar: Bar) -> None:
        # The bar's last step, matched or not: its close is the last price and the mark of
        # the symbol's position, then subscribers see it. The mark is only noted here and
        # made when something reads the position's mark (`_mark_positions`): a copy of the
        # position per bar would cost more than the rest of an idle bar.
        symbol = bar.symbol
        self._last_bars[symbol] = bar
        if symbol in self._positions:
            self._unmarked.add(symbol)
        if self._subscriptions:
            self._publish(bar)

    def _mark_positions(self) -> None:
        """Mark each position noted by `_close_bar` at its symbol's last price.

        Before `positions()`, `state()` and any change of a position, so that no one ever
        sees a position that is not marked at the close of its symbol's last bar (what
        marking it on every bar would show). Nothing else reads a position's mark.
        """
        if not self._unmarked:
            return
        positions = self._positions
        for symbol in self._unmarked:
            position = positions.get(symbol)
            if position is not None:
                price = self.last_price(symbol)
                assert price is not None  # noted by `_close_bar`, which saw a bar
                positions[symbol] = position.mark(price)
        self._unmarked.clear()

    def _publish(self, bar: Bar) -> None:
        for subscription in list(self._subscriptions):
            if subscription.symbol is None or subscription.symbol == bar.symbol:
                subscription.push(bar)

    async def run_feed(self, bars: Iterable[Bar] | AsyncIterable[Bar], *, pace: bool = True) -> int:
        """Process a whole stream of bars; return how many. Ends subscriptions when done.

        An iterable is paced on the venue's clock by the gaps between bar timestamps when
        `pace` is True (virtual seconds on a simulated clock); an async iterable is taken as
        it comes. Run it as a task you own (a TaskGroup), next to the code that trades.
        """
        count = 0
        try:
            if isinstance(bars, AsyncIterable):
                async for bar in bars:
                    self.process_bar(bar)
                    count += 1
            elif pace:
                async for bar in replay(bars, self._clock):
                    self.process_bar(bar)
                    count += 1
            else:
                for bar in bars:
                    self.process_bar(bar)
                    count += 1
                    # Let the tasks that trade on these bars run between them.
                    await asyncio.sleep(0)
        finally:
            self.end_of_data()
        return count

    def end_of_data(self) -> None:
        """Tell every subscriber that no more bars will come."""
        for subscription in list(self._subscriptions):
            subscription.push(None)

    def snapshot_balances(self) -> dict[str, Balance]:
        """The balances right now, without a call (for tests and reports, not for strategies)."""
        locked = self._locked()
        return {
            asset: self._balance(asset, locked.get(asset, Decimal(0)))
            for asset in sorted(set(self._holdings) | set(locked))
        }

    def _free(self, asset: str) -> Decimal:
        """`snapshot_balances()[asset].free` (0 for an asset not held), for that asset alone."""
        return self._balance(asset, self._locked(asset).get(asset, Decimal(0))).free

    def _locked(self, only: str | None = None) -> dict[str, Decimal]:
        """What open orders and position margins hold back, by asset (of `only`, if given)."""
        locked: defaultdict[str, Decimal] = defaultdict(Decimal)
        orders = self._orders
        for cid, (asset, per_unit) in self._lock_per_unit.items():
            if only is None or asset == only:
                locked[asset] += orders[cid].remaining_quantity * per_unit
        for position in self._positions.values():
            asset = self._instruments[position.symbol].quote_asset
            if only is None or asset == only:
                locked[asset] += position.margin
        return locked

    def _balance(self, asset: str, locked: Decimal) -> Balance:
        """`asset`'s balance with `locked` held back (never more than is held, never < 0)."""
        holding = self._holdings.get(asset, Decimal(0))
        held_back = min(locked, max(holding, Decimal(0)))
        return Balance(asset=asset, free=max(holding - held_back, Decimal(0)), locked=held_back)

    # ------------------------------------------------------------------ call plumbing

    async def _enter(self, method: str, key: str | None) -> Fault | None:
        """Wait on the client limits, pass the server budget, apply latency and faults."""
        pools = CALL_POOLS[method]
        limits = self._limits
        # A client within its budget is served at once: no coroutine to wait in line.
        if not limits.try_acquire(*pools):
            await limits.acquire(*pools)
        self._admit(pools, key)
        calls = self._calls[method] + 1
        self._calls[method] = calls
        faults = self.faults
        if faults.active:
            extra, fault = faults.select(method, calls, self._clock.now(), key)
        else:
            # Nothing armed: `select` would pick nothing and change nothing.
            extra, fault = 0.0, None
        delay = self._config.latency + extra
        if delay > 0:
            await self._clock.sleep(delay)
        if fault is None:
            return None
        if fault.kind is FaultKind.TRANSIENT:
            raise TransientError(
                "venue temporarily unavailable (injected 503); nothing happened, retry is safe",
                method=method,
                client_order_id=key,
            )
        if fault.kind is FaultKind.RATE_LIMITED:
            self._answer_rate_limited(pools, fault.retry_after, key)
        if fault.kind is FaultKind.REJECT:
            raise OrderRejected(fault.reason, key, method=method)
        if fault.kind is FaultKind.TIMEOUT_BEFORE_EFFECT:
            await self._clock.sleep(fault.seconds)
            raise self._timeout(method, key, fault.seconds)
        return fault

    async def _leave(self, method: str, key: str | None, fault: Fault | None, result: _T) -> _T:
        """Finish a call that took effect: a timeout after the effect, or hide a new order."""
        if fault is not None and fault.kind is FaultKind.TIMEOUT_AFTER_EFFECT:
            await self._clock.sleep(fault.seconds)
            raise self._timeout(method, key, fault.seconds)
        if fault is not None and fault.kind is FaultKind.INVISIBLE and key is not None:
            self._hidden_until[key] = self._clock.monotonic() + fault.seconds
        return result

    @staticmethod
    def _timeout(method: str, key: str | None, seconds: float) -> Exception:
        if method in ("place_order", "cancel_order"):
            return UnknownOutcomeError(
                f"{method} timed out after {seconds}s; the order may or may not have been "
                "affected: query it with get_order(client_order_id=...) before acting again",
                idempotency_key=key,
                method=method,
            )
        return DeadlineExceeded(f"{method} timed out; nothing changed", timeout=seconds)

    def _admit(self, pools: tuple[str, ...], key: str | None) -> None:
        """The server's budget check: admit the call, or answer it with a rate limit."""
        now = self._clock.monotonic()
        if now < self._banned_until:
            raise VenueBanned(self._banned_until - now, client_order_id=key)
        retry_after = 0.0
        for pool in pools:
            grants = self._server_grants[pool]
            budget = self._budgets[pool]
            while grants and grants[0] + budget.per <= now:
                grants.popleft()
            retry_after = max(retry_after, self._cooldown_until[pool] - now)
            if len(grants) >= budget.limit:
                retry_after = max(retry_after, grants[0] + budget.per - now)
        if retry_after > 0:
            self._answer_rate_limited(pools, retry_after, key)
        for pool in pools:
            self._server_grants[pool].append(now)
            self._server_log.append((now, pool))

    def _answer_rate_limited(
        self, pools: tuple[str, ...], retry_after: float, key: str | None
    ) -> NoReturn:
        """Answer 429: count it toward a ban, drain the client limits, raise."""
        now = self._clock.monotonic()
        answers = self._rate_limit_answers
        answers.append(now)
        while answers and answers[0] + self._config.ban_window <= now:
            answers.popleft()
        if len(answers) >= self._config.ban_threshold:
            self._banned_until = now + self._config.ban_duration
            answers.clear()
            if self._config.honor_retry_after:
                self._limits.penalize(self._config.ban_duration)
            raise VenueBanned(self._config.ban_duration, client_order_id=key)
        for pool in pools:
            self._cooldown_until[pool] = max(self._cooldown_until[pool], now + retry_after)
        if self._config.honor_retry_after:
            self._limits.penalize(retry_after, pools)
        raise RateLimitedError(
            "rate limit exceeded; wait retry_after seconds before calling again",
            retry_after=retry_after,
            pools=pools,
            client_order_id=key,
        )

    @staticmethod
    def _check_ids(client_order_id: str | None, venue_order_id: str | None) -> None:
        if (client_order_id is None) == (venue_order_id is None):
            raise ValidationError(
                "client_order_id/venue_order_id",
                (client_order_id, venue_order_id),
                "exactly one of the two ids",
            )

    def _visible(self, cid: str) -> bool:
        hidden_until = self._hidden_until.get(cid)
        return hidden_until is None or self._clock.monotonic() >= hidden_until

    def _find(self, client_order_id: str | None, venue_order_id: str | None) -> Order:
        cid = client_order_id
        if cid is None and venue_order_id is not None:
            cid = self._by_venue_id.get(venue_order_id)
        if cid is None or cid not in self._orders or not self._visible(cid):
            raise OrderNotFound(client_order_id=client_order_id, venue_order_id=venue_order_id)
        return self._orders[cid]

    # ------------------------------------------------------------------ effects (no awaits)

    def _place(self, order: Order) -> Order:
        cid = order.client_order_id
        if cid in self._orders:
            raise DuplicateClientOrderId(cid)
        if order.status not in (OrderStatus.NEW, OrderStatus.UNKNOWN):
            raise OrderRejected(
                f"only NEW or UNKNOWN orders can be placed, not {order.status.value}", cid
            )
        instrument = self._instruments.get(order.symbol)
        if instrument is None:
            raise OrderRejected(f"unknown symbol {order.symbol!r}", cid)
        last = self.last_price(order.symbol)
        reference = order.price or order.stop_price or last
        if reference is None:
            raise OrderRejected(
                f"no market price for {order.symbol} yet: a market order needs a bar first", cid
            )
        position = self._positions.get(order.symbol)
        leverage: Decimal | None = None
        try:
            instrument.validate_quantity(order.quantity)
            if order.price is not None:
                instrument.validate_price(order.price)
            if order.stop_price is not None:
                instrument.validate_price(order.stop_price, "stop_price")
            if not order.reduce_only:
                instrument.validate_notional(reference, order.quantity)
            if instrument.is_perpetual:
                default = position.leverage if position is not None else Decimal(1)
                leverage = instrument.validate_leverage(order.leverage or default)
            elif order.leverage not in (None, Decimal(1)):
                raise ValidationError("leverage", order.leverage, "None or 1 on a spot instrument")
        except ValidationError as error:
            raise OrderRejected(str(error), cid, field=error.field) from None
        if order.reduce_only:
            if not instrument.is_perpetual:
                raise OrderRejected("reduce_only applies to perpetual instruments only", cid)
            if position is None or order.side is not position.side.closing_side:
                raise OrderRejected("reduce-only order would not reduce an open position", cid)
        elif (
            instrument.is_perpetual
            and position is not None
            and order.side is position.side.opening_side
            and leverage != position.leverage
        ):
            raise OrderRejected(
                f"leverage {leverage} differs from the open position's {position.leverage}", cid
            )
        lock = self._reservation(order, instrument, reference, leverage)
        if lock is not None:
            asset, per_unit = lock
            needed = order.quantity * per_unit
            free = self._free(asset)
            if needed > free:
                raise OrderRejected(
                    f"insufficient balance: needs {needed} {asset}, {free} {asset} free",
                    cid,
                    asset=asset,
                )
        now = self._clock.now()
        self._order_sequence += 1
        venue_order_id = f"{self._name.upper()}-{self._order_sequence:08d}"
        accepted = order.transition(
            OrderStatus.ACCEPTED,
            at=now,
            venue_order_id=venue_order_id,
            created_at=now,
            leverage=leverage,
            filled_quantity=Decimal(0),
            average_price=None,
            triggered_at=None,
            reason=None,
        )
        self._orders[cid] = accepted
        self._bands.pop(order.symbol, None)
        self._by_venue_id[venue_order_id] = cid
        self._open_ids[cid] = None
        if lock is not None:
            self._lock_per_unit[cid] = lock
        return accepted

    def _reservation(
        self,
        order: Order,
        instrument: Instrument,
        reference: Decimal,
        leverage: Decimal | None,
    ) -> tuple[str, Decimal] | None:
        """What one unit of the order reserves: (asset, amount per unit), or None."""
        if instrument.is_perpetual:
            if order.reduce_only:
                return None
            assert leverage is not None
            return instrument.quote_asset, reference / leverage
        if order.side is OrderSide.SELL:
            return instrument.base_asset, Decimal(1)
        price = order.price
        if price is None:
            price = reference * (1 + self._config.market_buy_reserve_bps / _BPS)
        return instrument.quote_asset, price * (1 + self._config.rules.fees.taker_rate)

    def _cancel(self, order: Order) -> Order:
        if order.is_terminal:
            raise OrderRejected(f"order is already {order.status.value}", order.client_order_id)
        cancelled = order.transition(OrderStatus.CANCELLED, at=self._clock.now())
        self._store(cancelled)
        return cancelled

    def _store(self, order: Order) -> None:
        cid = order.client_order_id
        self._orders[cid] = order
        self._bands.pop(order.symbol, None)
        if order.is_terminal:
            self._open_ids.pop(cid, None)
            self._lock_per_unit.pop(cid, None)
            self._bars_seen.pop(cid, None)
            self._triggers.pop(cid, None)

    def _apply(self, cid: str, execution: Execution, instrument: Instrument) -> None:
        order = self._orders[cid]
        if order.is_terminal:
            return
        now = self._clock.now()
        if execution.triggered and order.triggered_at is None:
            order = order.replace(triggered_at=now, updated_at=now)
        quantity = execution.quantity
        if order.reduce_only:
            position = self._positions.get(order.symbol)
            if position is None or order.side is not position.side.closing_side:
                if quantity > 0:
                    self._store(
                        order.transition(
                            OrderStatus.EXPIRED,
                            at=now,
                            reason="reduce-only order: no position left to reduce",
                        )
                    )
                    return
            else:
                quantity = min(quantity, position.quantity)
        if not instrument.is_perpetual and order.side is OrderSide.BUY and quantity > 0:
            quantity = self._affordable(order, quantity, execution.price, execution.liquidity)
        if quantity > 0:
            order = self._fill(order, quantity, execution.price, execution.liquidity, instrument)
        if execution.expire_rest and not order.is_terminal:
            order = order.transition(
                OrderStatus.EXPIRED,
                at=now,
                reason=f"{order.time_in_force.value.upper()}: not filled at once",
            )
        elif (
            execution.quantity > 0
            and quantity == 0
            and not order.is_terminal
            and order.type is OrderType.MARKET
        ):
            order = order.transition(OrderStatus.EXPIRED, at=now, reason="insufficient balance")
        self._store(order)

    def _affordable(
        self, order: Order, quantity: Decimal, price: Decimal, liquidity: Liquidity
    ) -> Decimal:
        """Cap a spot buy to what its reservation plus the free quote balance can pay."""
        instrument = self._instruments[order.symbol]
        asset = instrument.quote_asset
        unit_cost = price * (1 + self._config.rules.fees.rate(liquidity))
        reserved = Decimal(0)
        if order.client_order_id in self._lock_per_unit:
            reserved = quantity * self._lock_per_unit[order.client_order_id][1]
        free = self._free(asset)
        budget = free + reserved
        if quantity * unit_cost <= budget:
            return quantity
        lots = (budget / unit_cost / instrument.lot_size).to_integral_value(ROUND_FLOOR)
        return max(lots * instrument.lot_size, Decimal(0))

    def _fill(
        self,
        order: Order,
        quantity: Decimal,
        price: Decimal,
        liquidity: Liquidity,
        instrument: Instrument,
    ) -> Order:
        fees = self._config.rules.fees
        now = self._clock.now()
        fee = fees.fee(price, quantity, liquidity)
        self._fill_sequence += 1
        assert order.venue_order_id is not None
        fill = Fill(
            fill_id=f"{self._name.upper()}-F{self._fill_sequence:08d}",
            client_order_id=order.client_order_id,
            venue_order_id=order.venue_order_id,
            symbol=order.symbol,
            side=order.side,
            quantity=quantity,
            price=price,
            fee=fee,
            fee_asset=instrument.quote_asset,
            liquidity=liquidity,
            timestamp=now,
        )
        self._fills.append(fill)
        self._symbol_fills.setdefault(fill.symbol, []).append(fill)
        quote, base = instrument.quote_asset, instrument.base_asset
        holdings = self._holdings
        if instrument.is_perpetual:
            assert order.leverage is not None
            self._settle_perpetual(order, quantity, price, liquidity, instrument)
            holdings[quote] = holdings.get(quote, Decimal(0)) - fee
        elif order.side is OrderSide.BUY:
            holdings[quote] = holdings.get(quote, Decimal(0)) - price * quantity - fee
            holdings[base] = holdings.get(base, Decimal(0)) + quantity
        else:
            holdings[base] = holdings.get(base, Decimal(0)) - quantity
            holdings[quote] = holdings.get(quote, Decimal(0)) + price * quantity - fee
        return order.with_fill(quantity, price, at=now)

    def _settle_perpetual(
        self,
        order: Order,
        quantity: Decimal,
        price: Decimal,
        liquidity: Liquidity,
        instrument: Instrument,
    ) -> None:
        fees = self._config.rules.fees
        now = self._clock.now()
        symbol = order.symbol
        assert order.leverage is not None
        self._mark_positions()
        position = self._positions.get(symbol)
        opening = quantity
        if position is not None and order.side is position.side.opening_side:
            fee = fees.fee(price, quantity, liquidity)
            self._positions[symbol] = position.increase(quantity, price, fee)
            return
        if position is not None:
            closing = min(quantity, position.quantity)
            reduced = position.reduce(closing, price, fees.fee(price, closing, liquidity), now)
            quote = instrument.quote_asset
            realized = reduced.realized_pnl - position.realized_pnl
            self._holdings[quote] = self._holdings.get(quote, Decimal(0)) + realized
            if reduced.is_open:
                self._positions[symbol] = reduced
            else:
                del self._positions[symbol]
                self._closed_positions.append(reduced)
            opening = quantity - closing
        if opening > 0:
            self._positions[symbol] = Position.open(
                symbol,
                PositionSide.opened_by(order.side),
                opening,
                price,
                leverage=order.leverage,
                at=now,
                fee=fees.fee(price, opening, liquidity),
            )

    def _unsubscribe(self, subscription: _BarSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    @property
    def closed_positions(self) -> Sequence[Position]:
        """Positions closed so far, oldest first (for reports and PnL checks)."""
        return tuple(self._closed_positions)
