"""The trading ledger: the store-backed record of intents, orders, fills, positions and alerts.

`TradingLedger` is the desk's repository on the store's `Database` (SQLite or PostgreSQL,
the tables of `legato.store.ledger_schema`). Reads are plain methods; writes go through
`write(fn)`, which runs `fn` on a `LedgerTransaction` so that several records land
together or not at all (a position with its stop-loss and take-profit, an order with the
intent stage that follows from it).

When the store is down, a write that records something already done on the venue must not
be lost: `PendingWrites` keeps it (in memory, in order) and `flush()` — a supervised loop
function — retries until it lands. Every write is an idempotent upsert computed from fresh
reads inside its transaction, so retrying one is always safe. If the process dies with
writes still pending, the reconciler rebuilds what they held from the venue (it adopts
orders by client id prefix and settles positions from fills).

An `ExecutionIntent` is the execution manager's durable record of one trade: the proposal,
the client order ids it will use, and the stage it has reached (`IntentStage`).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import enum
import json
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
import structlog

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import TransientError, ValidationError
from legato.store import migrate
from legato.store.database import Database, Row, Transaction
from legato.store.errors import StoreUnavailableError
from legato.store.postgres import PostgresDatabase
from legato.store.sql_batches import placeholders
from legato.store.sqlite import SqliteDatabase
from legato.store.url import DEFAULT_STORE_URL, StoreUrl
from legato.trading.alerts import Alert, AlertCode, AlertLevel
from legato.trading.balances import Balance
from legato.trading.copies import RecordCopier
from legato.trading.fills import Fill, Liquidity
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType, TimeInForce
from legato.trading.paper_venue_state import PaperVenueState
from legato.trading.positions import Position, PositionSide, PositionStatus
from legato.trading.proposals import TradeProposal
from legato.trading.reconciliation import LedgerSnapshot

__all__ = [
    "EquityMarks",
    "ExecutionIntent",
    "IntentStage",
    "LedgerOrder",
    "LedgerTransaction",
    "OrderRole",
    "PendingWrites",
    "TradingLedger",
]

_log = structlog.get_logger(__name__)
_T = TypeVar("_T")

_ORDER_COLUMNS = (
    "client_order_id, intent_id, role, symbol, side, type, quantity, price, stop_price, "
    "time_in_force, reduce_only, leverage, status, venue_order_id, filled_quantity, "
    "average_price, parent_order_id, bracket_id, created_at, updated_at, triggered_at, reason"
)
_INTENT_COLUMNS = (
    "intent_id, symbol, proposal, stage, finished, entry_order_id, stop_loss_order_id, "
    "take_profit_order_id, close_order_id, filled_quantity, outcome, created_at, updated_at"
)
_POSITION_COLUMNS = (
    "symbol, side, quantity, entry_price, leverage, status, mark_price, realized_pnl, "
    "fees_paid, stop_loss_order_id, take_profit_order_id, opened_at, closed_at"
)
_FILL_COLUMNS = (
    "fill_id, client_order_id, venue_order_id, symbol, side, quantity, price, fee, fee_asset, "
    "liquidity, timestamp"
)
_ZERO = Decimal(0)
_OPEN_STATUSES = ("new", "unknown", "accepted", "partially_filled")
# Driver errors that mean "the database is not reachable or busy right now", as opposed to
# a bug in our SQL; the store backends already wrap most, these are the ones raised mid-statement.
_UNAVAILABLE = (sqlite3.OperationalError, psycopg.OperationalError)


class IntentStage(enum.Enum):
    """How far the execution of one trade has come; the state machine's durable state.

    ENTRY: the entry order is being placed or awaited. PROTECT: the entry filled, the
    position is recorded and its stop-loss is being placed. TAKE_PROFIT: the stop-loss is
    live and the take-profit is being placed (or retried later). CLOSE: the stop-loss could
    not be placed and the position is being closed. BRACKETED, FAILED and CLOSED are final.
    """

    ENTRY = "entry"
    PROTECT = "protect"
    TAKE_PROFIT = "take_profit"
    CLOSE = "close"
    BRACKETED = "bracketed"  # entry filled, stop-loss live, take-profit live or not asked for
    FAILED = "failed"  # nothing was filled: no position came of it
    CLOSED = "closed"  # the position was closed because it could not be protected

    @property
    def is_final(self) -> bool:
        """True when the execution manager has nothing more to do for the intent."""
        return self in (IntentStage.BRACKETED, IntentStage.FAILED, IntentStage.CLOSED)


class OrderRole(enum.Enum):
    """Why the desk holds an order."""

    ENTRY = "entry"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    CLOSE = "close"  # a reduce-only market order closing an unprotectable position
    REPROTECT = "reprotect"  # a stop-loss placed by the reconciler
    ADOPTED = "adopted"  # found on the venue by the reconciler, role unknown


@dataclass(frozen=True, slots=True)
class ExecutionIntent:
    """The durable record of one trade the execution manager is carrying out.

    The client order ids are fixed when the intent is recorded, before anything is sent:
    after a crash the same ids are queried, never sent again as new orders. `outcome` holds
    what the result reports so far (warnings, retry count, alert level, error, status).
    """

    intent_id: str
    proposal: TradeProposal
    stage: IntentStage
    entry_order_id: str
    stop_loss_order_id: str
    take_profit_order_id: str | None
    created_at: datetime
    updated_at: datetime
    close_order_id: str | None = None
    filled_quantity: Decimal = Decimal(0)
    outcome: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.stage, IntentStage):
            raise ValidationError("stage", self.stage, "an IntentStage")
        for name in ("created_at", "updated_at"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise ValidationError(name, value, "an aware UTC datetime")

    @property
    def symbol(self) -> str:
        """The symbol traded."""
        return self.proposal.symbol

    @property
    def order_ids(self) -> tuple[str, ...]:
        """Every client order id this intent uses or may use, entry first."""
        ids = [self.entry_order_id, self.stop_loss_order_id]
        if self.take_profit_order_id is not None:
            ids.append(self.take_profit_order_id)
        if self.close_order_id is not None:
            ids.append(self.close_order_id)
        return tuple(ids)

    def advance(self, stage: IntentStage, at: datetime, **changes: Any) -> ExecutionIntent:
        """Return the intent moved to `stage` at `at`, with `changes` applied."""
        return self._with(stage=stage, updated_at=at, **changes)

    def with_outcome(self, at: datetime, **fields: Any) -> ExecutionIntent:
        """Return the intent with `fields` merged into its outcome."""
        return self._with(outcome={**self.outcome, **fields}, updated_at=at)

    def _with(self, **changes: Any) -> ExecutionIntent:
        # dataclasses.replace, without its per-call introspection (an intent is copied at
        # every journal write): copy the fields, apply `changes`, check the result.
        _INTENT_COPIER.check(changes)
        copy = _INTENT_COPIER.copy(self, changes)
        copy.__post_init__()
        return copy


_INTENT_COPIER = RecordCopier(ExecutionIntent)


@dataclass(frozen=True, slots=True)
class LedgerOrder:
    """An order as the ledger holds it: the order, why we hold it, and for which intent."""

    order: Order
    role: OrderRole
    intent_id: str | None = None


@dataclass(frozen=True, slots=True)
class EquityMarks:
    """The equity marks of one UTC day, for the risk engine's daily-loss and drawdown halts."""

    day: str
    start_equity: Decimal
    low_equity: Decimal
    peak_equity: Decimal
    trough_equity: Decimal


# ---------------------------------------------------------------- conversions


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _num(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _order_params(order: Order, role: OrderRole, intent_id: str | None) -> tuple[Any, ...]:
    return (
        order.client_order_id,
        intent_id,
        role.value,
        order.symbol,
        order.side.value,
        order.type.value,
        str(order.quantity),
        _dec(order.price),
        _dec(order.stop_price),
        order.time_in_force.value,
        order.reduce_only,
        _dec(order.leverage),
        order.status.value,
        order.venue_order_id,
        str(order.filled_quantity),
        _dec(order.average_price),
        order.parent_order_id,
        order.bracket_id,
        _ts(order.created_at),
        _ts(order.updated_at),
        _ts(order.triggered_at),
        order.reason,
    )


def _order_row(row: Row) -> LedgerOrder:
    order = Order(
        client_order_id=row[0],
        symbol=row[3],
        side=OrderSide(row[4]),
        type=OrderType(row[5]),
        quantity=Decimal(row[6]),
        price=_num(row[7]),
        stop_price=_num(row[8]),
        time_in_force=TimeInForce(row[9]),
        reduce_only=bool(row[10]),
        leverage=_num(row[11]),
        status=OrderStatus(row[12]),
        venue_order_id=row[13],
        filled_quantity=Decimal(row[14]),
        average_price=_num(row[15]),
        parent_order_id=row[16],
        bracket_id=row[17],
        created_at=_dt(row[18]),
        updated_at=_dt(row[19]),
        triggered_at=_dt(row[20]),
        reason=row[21],
    )
    return LedgerOrder(order, OrderRole(row[2]), row[1])


def _intent_row(row: Row) -> ExecutionIntent:
    created = _dt(row[11])
    updated = _dt(row[12])
    assert created is not None
    assert updated is not None
    return ExecutionIntent(
        intent_id=row[0],
        proposal=TradeProposal.from_dict(json.loads(row[2])),
        stage=IntentStage(row[3]),
        entry_order_id=row[5],
        stop_loss_order_id=row[6],
        take_profit_order_id=row[7],
        close_order_id=row[8],
        filled_quantity=Decimal(row[9]),
        outcome=json.loads(row[10]),
        created_at=created,
        updated_at=updated,
    )


def _position_row(row: Row) -> Position:
    return Position(
        symbol=row[0],
        side=PositionSide(row[1]),
        quantity=Decimal(row[2]),
        entry_price=Decimal(row[3]),
        leverage=Decimal(row[4]),
        status=PositionStatus(row[5]),
        mark_price=_num(row[6]),
        realized_pnl=Decimal(row[7]),
        fees_paid=Decimal(row[8]),
        stop_loss_order_id=row[9],
        take_profit_order_id=row[10],
        opened_at=_dt(row[11]),
        closed_at=_dt(row[12]),
    )


def _position_params(position: Position) -> tuple[Any, ...]:
    return (
        position.symbol,
        position.side.value,
        str(position.quantity),
        str(position.entry_price),
        str(position.leverage),
        position.status.value,
        _dec(position.mark_price),
        str(position.realized_pnl),
        str(position.fees_paid),
        position.stop_loss_order_id,
        position.take_profit_order_id,
        _ts(position.opened_at),
        _ts(position.closed_at),
    )


def _fill_params(fill: Fill) -> tuple[Any, ...]:
    return (
        fill.fill_id,
        fill.client_order_id,
        fill.venue_order_id,
        fill.symbol,
        fill.side.value,
        str(fill.quantity),
        str(fill.price),
        str(fill.fee),
        fill.fee_asset,
        fill.liquidity.value,
        fill.timestamp.timestamp(),
    )


def _fill_row(row: Row) -> Fill:
    timestamp = _dt(row[10])
    assert timestamp is not None
    return Fill(
        fill_id=row[0],
        client_order_id=row[1],
        venue_order_id=row[2],
        symbol=row[3],
        side=OrderSide(row[4]),
        quantity=Decimal(row[5]),
        price=Decimal(row[6]),
        fee=Decimal(row[7]),
        fee_asset=row[8],
        liquidity=Liquidity(row[9]),
        timestamp=timestamp,
    )


def _alert_row(row: Row) -> Alert:
    at = _dt(row[0])
    assert at is not None
    return Alert(
        level=AlertLevel(row[1]),
        code=AlertCode(row[2]),
        message=row[3],
        at=at,
        intent_id=row[4],
        client_order_id=row[5],
        symbol=row[6],
    )


def _updates(columns: str, key: str) -> str:
    names = [name.strip() for name in columns.split(",")]
    return ", ".join(f"{name} = excluded.{name}" for name in names if name != key)


_UPSERT_ORDER = (
    f"INSERT INTO legato_trading_orders ({_ORDER_COLUMNS}) VALUES ({placeholders(22)}) "
    f"ON CONFLICT (client_order_id) DO UPDATE SET {_updates(_ORDER_COLUMNS, 'client_order_id')}"
)
_SELECT_INTENT = f"SELECT {_INTENT_COLUMNS} FROM legato_trading_intents WHERE intent_id = ?"
_SELECT_ORDER = f"SELECT {_ORDER_COLUMNS} FROM legato_trading_orders WHERE client_order_id = ?"
# `update_order` in one statement: a new order goes in as ADOPTED with no intent; a known one
# has every column replaced but its role and intent.
_UPDATE_ORDER_KEEPING_LINKS = (
    f"INSERT INTO legato_trading_orders ({_ORDER_COLUMNS}) VALUES ({placeholders(22)}) "
    "ON CONFLICT (client_order_id) DO UPDATE SET "
    + ", ".join(
        f"{name} = excluded.{name}"
        for name in (name.strip() for name in _ORDER_COLUMNS.split(","))
        if name not in ("client_order_id", "role", "intent_id")
    )
)
_SELECT_OPEN_POSITION = (
    f"SELECT {_POSITION_COLUMNS} FROM legato_trading_positions WHERE symbol = ? AND status = 'open'"
)
_OPEN_ANYTHING = (
    "SELECT EXISTS (SELECT 1 FROM legato_trading_positions WHERE status = 'open') "
    "OR EXISTS (SELECT 1 FROM legato_trading_orders "
    f"WHERE status IN ({placeholders(len(_OPEN_STATUSES))}))"
)
_ORPHAN_ROLES = (OrderRole.STOP_LOSS, OrderRole.TAKE_PROFIT, OrderRole.REPROTECT)
# Protective orders the venue holds; NEW and UNKNOWN ones are still being placed by the
# intent that owns them, which settles them itself.
_ORPHAN_STATUSES = (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)
_ORPHAN_PARAMS = tuple(item.value for item in (*_ORPHAN_ROLES, *_ORPHAN_STATUSES))
_ORPHANED_PROTECTION = (
    f"SELECT {_ORDER_COLUMNS} FROM legato_trading_orders o "
    f"WHERE role IN ({placeholders(len(_ORPHAN_ROLES))}) "
    f"AND status IN ({placeholders(len(_ORPHAN_STATUSES))}) "
    "AND NOT EXISTS (SELECT 1 FROM legato_trading_positions p "
    "WHERE p.symbol = o.symbol AND p.status = 'open') ORDER BY client_order_id"
)
_POSITIONS_WATERMARK = (
    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'closed' THEN 1 ELSE 0 END), 0) "
    "FROM legato_trading_positions"
)
_LATEST_CLOSED_RESULTS = (
    "SELECT realized_pnl, fees_paid, closed_at FROM legato_trading_positions "
    "WHERE status = 'closed' ORDER BY id DESC LIMIT ?"
)
_UPDATE_OPEN_POSITION = (
    "UPDATE legato_trading_positions SET "
    + ", ".join(f"{name.strip()} = ?" for name in _POSITION_COLUMNS.split(","))
    + " WHERE symbol = ? AND status = 'open' RETURNING id"
)
_INSERT_POSITION = (
    f"INSERT INTO legato_trading_positions ({_POSITION_COLUMNS}) VALUES ({placeholders(13)}) "
    "RETURNING id"
)
_INSERT_FILL = (
    f"INSERT INTO legato_trading_fills ({_FILL_COLUMNS}) VALUES ({placeholders(11)}) "
    "ON CONFLICT (fill_id) DO NOTHING RETURNING id"
)
_UPSERT_INTENT = (
    f"INSERT INTO legato_trading_intents ({_INTENT_COLUMNS}) VALUES ({placeholders(13)}) "
    f"ON CONFLICT (intent_id) DO UPDATE SET {_updates(_INTENT_COLUMNS, 'intent_id')}"
)
_INSERT_NEW_INTENT = (
    f"INSERT INTO legato_trading_intents ({_INTENT_COLUMNS}) VALUES ({placeholders(13)}) "
    "ON CONFLICT (intent_id) DO NOTHING RETURNING intent_id"
)


# What `json.dumps(value, sort_keys=True)` builds on every call (an intent's outcome is
# encoded at every journal write), built once.
_SORTED_JSON = json.JSONEncoder(sort_keys=True)

# The last proposal serialised, and its JSON: an intent is journaled at every stage with
# the same (immutable) proposal object, so the text is computed once per trade. Keyed by
# identity, not equality: equal Decimals may print differently ("1" and "1.0").
_proposal_memo: tuple[TradeProposal | None, str] = (None, "")


def _proposal_json(proposal: TradeProposal) -> str:
    global _proposal_memo
    memo_proposal, memo_text = _proposal_memo
    if memo_proposal is proposal:
        return memo_text
    text = _SORTED_JSON.encode(proposal.as_dict())
    _proposal_memo = (proposal, text)
    return text


def _intent_params(intent: ExecutionIntent) -> tuple[Any, ...]:
    return (
        intent.intent_id,
        intent.symbol,
        _proposal_json(intent.proposal),
        intent.stage.value,
        intent.stage.is_final,
        intent.entry_order_id,
        intent.stop_loss_order_id,
        intent.take_profit_order_id,
        intent.close_order_id,
        str(intent.filled_quantity),
        _SORTED_JSON.encode(dict(intent.outcome)),
        _ts(intent.created_at),
        _ts(intent.updated_at),
    )


# ---------------------------------------------------------------- a sole writer's memory


def _stored_as_is(*times: datetime | None) -> bool:
    # A record goes through its row unchanged when its times are UTC (or None): a time in
    # whole microseconds comes back from its float timestamp to the same microsecond (the
    # float is within a quarter of a microsecond of it until the year 2100), and Decimals,
    # enums and strings come back as they were written.
    return all(time is None or time.tzinfo is UTC for time in times)


def _as_stored(position: Position) -> Position:
    # The position as a read of its row builds it.
    if _stored_as_is(position.opened_at, position.closed_at):
        return position
    return _position_row(_position_params(position))


def _fill_as_stored(fill: Fill) -> Fill:
    # The fill as a read of its row builds it.
    if _stored_as_is(fill.timestamp):
        return fill
    return _fill_row(_fill_params(fill))


@dataclass(slots=True)
class _KnownState:
    """What a sole writer knows of its store without reading it, as of its last commit.

    See `TradingLedger.assume_sole_writer`. Values are as a read of the store would give
    them; `marks` are the latest day's equity marks. `orders` are kept as written, and
    built as a read would build them when first asked for (`order`): most are never read.
    `protective` holds the client ids of the protective orders the venue holds (what
    `TradingLedger.orphaned_protection` looks through), `working` those of every order
    still working (what `TradingLedger.has_open_positions_or_orders` asks about).
    `closed_results` are the closed positions' (row id, realized PnL, fees paid, close
    time), in row id order; `order_fills` the recorded fills of each order (by client id),
    in the order they were recorded.
    """

    open_positions: dict[str, Position]
    balances: dict[str, Decimal]
    positions_recorded: int
    closed_results: list[tuple[int, Decimal, Decimal, datetime | None]]
    marks: EquityMarks | None
    fill_ids: set[str]
    orders: dict[str, LedgerOrder]
    protective: set[str]
    working: set[str] = dataclasses.field(default_factory=set)
    stored_orders: dict[str, LedgerOrder] = dataclasses.field(default_factory=dict)
    order_fills: dict[str, list[Fill]] = dataclasses.field(default_factory=dict)

    def keep_fill(self, fill: Fill) -> None:
        """Take in a fill as written."""
        self.fill_ids.add(fill.fill_id)
        self.order_fills.setdefault(fill.client_order_id, []).append(_fill_as_stored(fill))

    def order(self, client_order_id: str) -> LedgerOrder | None:
        """The order with this client id as a read of its row would give it, or None."""
        stored = self.stored_orders.get(client_order_id)
        if stored is None:
            written = self.orders.get(client_order_id)
            if written is None:
                return None
            order = written.order
            if _stored_as_is(order.created_at, order.updated_at, order.triggered_at):
                stored = written
            else:
                stored = _order_row(_order_params(order, written.role, written.intent_id))
            self.stored_orders[client_order_id] = stored
        return stored

    def keep_order(self, record: LedgerOrder) -> None:
        """Take in an order as written."""
        cid = record.order.client_order_id
        self.orders[cid] = record
        self.stored_orders.pop(cid, None)
        if record.role in _ORPHAN_ROLES and record.order.status in _ORPHAN_STATUSES:
            self.protective.add(cid)
        else:
            self.protective.discard(cid)
        if record.order.status.value in _OPEN_STATUSES:
            self.working.add(cid)
        else:
            self.working.discard(cid)


# ---------------------------------------------------------------- the transaction


class LedgerTransaction:
    """Reads and writes inside one store transaction: all of its writes land, or none.

    What the transaction itself wrote is read back from memory: an order it put, the open
    position of a symbol it put a position for, a balance it set. Inside the transaction no
    one else can change those rows (SQLite holds the write lock; PostgreSQL locks the
    written rows, and its unique index on open positions makes a second writer of one wait
    for us), so the store would answer with the very values written.

    Position writes are held and sent when the transaction ends (`send_held_positions`,
    which the ledger calls before it commits): a symbol's open position written twice (a
    position opened, then pointed at its stop-loss) costs one statement. `serialized` says
    that no other writer can run until the transaction ends (a SQLite write transaction
    holds the database's write lock from its BEGIN IMMEDIATE): what it reads stays true,
    so a symbol read without an open position gets its row inserted with no update tried.

    `known` is a sole writer's memory of the store (see `TradingLedger.assume_sole_writer`):
    open positions, balances, equity marks, fill ids and orders are read from it, and what
    the transaction writes is added to it once the transaction has committed (`remember`).
    """

    __slots__ = (
        "_balances",
        "_closed_rows",
        "_fill_ids",
        "_fills",
        "_has_open_row",
        "_held_positions",
        "_known",
        "_marks",
        "_open_positions",
        "_orders",
        "_rows_recorded",
        "_serialized",
        "_tx",
    )

    def __init__(
        self, tx: Transaction, *, serialized: bool = False, known: _KnownState | None = None
    ) -> None:
        self._tx = tx
        # A sole writer's transactions are serialized: there is no other writer at all.
        self._serialized = serialized or known is not None
        self._known = known
        self._orders: dict[str, LedgerOrder] = {}
        # Symbol -> its open position as written here (None: written closed, none open).
        self._open_positions: dict[str, Position | None] = {}
        # Position writes not sent yet, by symbol, in the order their rows were first written.
        self._held_positions: dict[str, Position] = {}
        # Symbol -> whether the store holds an open row for it (serialized only: known from
        # this transaction's own reads and writes).
        self._has_open_row: dict[str, bool] = {}
        # What this transaction wrote, for a sole writer's memory (see `remember`).
        self._balances: dict[str, Decimal] = {}
        self._marks: dict[str, EquityMarks] = {}
        self._fill_ids: set[str] = set()
        # The fills this transaction recorded, in the order it recorded them.
        self._fills: list[Fill] = []
        self._rows_recorded = 0
        self._closed_rows: list[tuple[int, Decimal, Decimal, datetime | None]] = []

    def remember(self) -> None:
        """Add what this transaction wrote to the sole writer's memory (after its commit)."""
        known = self._known
        if known is None:
            return
        for symbol, position in self._open_positions.items():
            if position is None:
                known.open_positions.pop(symbol, None)
            else:
                known.open_positions[symbol] = _as_stored(position)
        # Decimals read back from their text are the very values written: kept as they are.
        known.balances.update(self._balances)
        for marks in self._marks.values():
            if known.marks is None or marks.day >= known.marks.day:
                known.marks = marks
        for fill in self._fills:
            known.keep_fill(fill)
        for record in self._orders.values():
            known.keep_order(record)
        known.positions_recorded += self._rows_recorded
        for closed in self._closed_rows:
            bisect.insort(known.closed_results, closed)

    # -- intents

    async def put_intent(self, intent: ExecutionIntent) -> None:
        """Insert or replace the intent's record."""
        await self._tx.execute(_UPSERT_INTENT, _intent_params(intent))

    async def insert_intent(self, intent: ExecutionIntent) -> None:
        """Insert a new intent; raise ValidationError if its id is already recorded."""
        # One statement: the insert does nothing (and returns no row) when the id is taken.
        if not await self._tx.fetch(_INSERT_NEW_INTENT, _intent_params(intent)):
            raise ValidationError("intent_id", intent.intent_id, "an id not used by another intent")

    async def get_intent(self, intent_id: str) -> ExecutionIntent | None:
        """The intent with this id, or None."""
        rows = await self._tx.fetch(_SELECT_INTENT, (intent_id,))
        return _intent_row(rows[0]) if rows else None

    # -- orders

    async def put_order(self, order: Order, role: OrderRole, intent_id: str | None = None) -> None:
        """Insert or replace the order's record (keyed by its client order id)."""
        await self._tx.execute(_UPSERT_ORDER, _order_params(order, role, intent_id))
        self._orders[order.client_order_id] = LedgerOrder(order, role, intent_id)

    async def update_order(self, order: Order) -> None:
        """Replace the order's record, keeping its role and intent; insert it as ADOPTED if new."""
        cid = order.client_order_id
        await self._tx.execute(
            _UPDATE_ORDER_KEEPING_LINKS, _order_params(order, OrderRole.ADOPTED, None)
        )
        if self._known is None:
            # The links kept are not known here without a read: forget the order, if held.
            self._orders.pop(cid, None)
            return
        linked = self._orders.get(cid) or self._known.orders.get(cid)
        if linked is None:
            self._orders[cid] = LedgerOrder(order, OrderRole.ADOPTED)
        else:
            self._orders[cid] = LedgerOrder(order, linked.role, linked.intent_id)

    async def get_order(self, client_order_id: str) -> LedgerOrder | None:
        """The order with this client id, or None."""
        written = self._orders.get(client_order_id)
        if written is not None:
            return written
        if self._known is not None:
            return self._known.order(client_order_id)
        rows = await self._tx.fetch(_SELECT_ORDER, (client_order_id,))
        return _order_row(rows[0]) if rows else None

    # -- fills

    async def add_fill(self, fill: Fill) -> bool:
        """Record `fill` unless it is already recorded; return True when it is new."""
        known = self._known
        if known is not None and (fill.fill_id in known.fill_ids or fill.fill_id in self._fill_ids):
            return False
        rows = await self._tx.fetch(_INSERT_FILL, _fill_params(fill))
        if rows:
            self._fill_ids.add(fill.fill_id)
            self._fills.append(fill)
        return bool(rows)

    async def fills_of(self, client_order_id: str) -> list[Fill]:
        """The recorded fills of one order, in arrival order."""
        known = self._known
        if known is not None:
            # Those recorded before this transaction, then the ones it recorded itself.
            fills = list(known.order_fills.get(client_order_id, ()))
            fills.extend(
                _fill_as_stored(fill)
                for fill in self._fills
                if fill.client_order_id == client_order_id
            )
            return fills
        rows = await self._tx.fetch(
            f"SELECT {_FILL_COLUMNS} FROM legato_trading_fills WHERE client_order_id = ? "
            "ORDER BY id",
            (client_order_id,),
        )
        return [_fill_row(row) for row in rows]

    # -- positions

    async def open_position(self, symbol: str) -> Position | None:
        """The open position on `symbol`, or None."""
        if symbol in self._open_positions:
            return self._open_positions[symbol]
        if self._known is not None:
            return self._known.open_positions.get(symbol)
        rows = await self._tx.fetch(_SELECT_OPEN_POSITION, (symbol,))
        if self._serialized:
            self._has_open_row[symbol] = bool(rows)
        return _position_row(rows[0]) if rows else None

    async def put_position(self, position: Position) -> None:
        """Write the position: it replaces the open position on its symbol, if there is one.

        A closed position closes that open row (or is added to the history when none is open).
        The write is held until the transaction ends (see the class docstring).
        """
        symbol = position.symbol
        held = self._held_positions.get(symbol)
        if held is not None and held.status is PositionStatus.CLOSED:
            # The held write closes the symbol's row; this one starts a new row after it,
            # and rows are numbered as they are first written: send what is held first.
            await self.send_held_positions()
        # A held open position is superseded: this write would replace that very row.
        self._held_positions[symbol] = position
        self._open_positions[symbol] = position if position.status is PositionStatus.OPEN else None

    async def send_held_positions(self) -> None:
        """Send the held position writes, in the order their rows were first written."""
        held = list(self._held_positions.values())
        self._held_positions.clear()
        for position in held:
            symbol = position.symbol
            params = _position_params(position)
            has_open_row = self._has_open_row.get(symbol)
            if has_open_row is None and self._known is not None:
                has_open_row = symbol in self._known.open_positions
            # The update finds the open row itself (one per symbol, a unique index says so).
            rows = []
            if has_open_row is not False:
                rows = await self._tx.fetch(_UPDATE_OPEN_POSITION, (*params, symbol))
            if not rows:
                rows = await self._tx.fetch(_INSERT_POSITION, params)
                self._rows_recorded += 1
            closed = position.status is PositionStatus.CLOSED
            if closed and self._known is not None:
                closed_at = position.closed_at
                if not _stored_as_is(closed_at):
                    closed_at = _dt(_ts(closed_at))
                result = (int(rows[0][0]), position.realized_pnl, position.fees_paid, closed_at)
                self._closed_rows.append(result)
            if self._serialized:
                self._has_open_row[symbol] = not closed

    # -- balances and equity

    async def balance(self, asset: str) -> Decimal | None:
        """The recorded total of `asset`, or None when the ledger does not track it."""
        if asset in self._balances:
            return self._balances[asset]
        if self._known is not None:
            return self._known.balances.get(asset)
        rows = await self._tx.fetch(
            "SELECT total FROM legato_trading_balances WHERE asset = ?", (asset,)
        )
        return Decimal(rows[0][0]) if rows else None

    async def set_balance(self, asset: str, total: Decimal, at: datetime) -> None:
        """Record the total held of `asset`."""
        await self._tx.execute(
            "INSERT INTO legato_trading_balances (asset, total, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (asset) DO UPDATE SET total = excluded.total, "
            "updated_at = excluded.updated_at",
            (asset, str(total), at.timestamp()),
        )
        self._balances[asset] = total

    async def latest_equity_marks(self) -> EquityMarks | None:
        """The most recent day's equity marks, or None before the first."""
        if self._known is not None:
            stored = self._known.marks
            if not self._marks:
                return stored
            candidates = list(self._marks.values())
            if stored is not None and stored.day not in self._marks:
                candidates.append(stored)
            return max(candidates, key=lambda marks: marks.day, default=None)
        rows = await self._tx.fetch(
            "SELECT day, start_equity, low_equity, peak_equity, trough_equity "
            "FROM legato_trading_equity ORDER BY day DESC LIMIT 1"
        )
        if not rows:
            return None
        row = rows[0]
        return EquityMarks(
            row[0], Decimal(row[1]), Decimal(row[2]), Decimal(row[3]), Decimal(row[4])
        )

    async def put_equity_marks(self, marks: EquityMarks, at: datetime) -> None:
        """Insert or replace one day's equity marks."""
        await self._tx.execute(
            "INSERT INTO legato_trading_equity (day, start_equity, low_equity, peak_equity, "
            "trough_equity, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (day) DO UPDATE "
            "SET start_equity = excluded.start_equity, low_equity = excluded.low_equity, "
            "peak_equity = excluded.peak_equity, trough_equity = excluded.trough_equity, "
            "updated_at = excluded.updated_at",
            (
                marks.day,
                str(marks.start_equity),
                str(marks.low_equity),
                str(marks.peak_equity),
                str(marks.trough_equity),
                at.timestamp(),
            ),
        )
        self._marks[marks.day] = marks

    # -- paper venues

    async def put_paper_venue(self, state: PaperVenueState) -> None:
        """Insert or replace the saved state of the paper venue `state.name`."""
        await self._tx.execute(
            "INSERT INTO legato_trading_paper_venues (name, state, saved_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
            "saved_at = excluded.saved_at",
            (state.name, state.to_json(), state.saved_at.timestamp()),
        )

    # -- alerts

    async def add_alert(self, alert: Alert) -> None:
        """Record `alert`."""
        await self._tx.execute(
            "INSERT INTO legato_trading_alerts (at, level, code, message, intent_id, "
            "client_order_id, symbol) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                alert.at.timestamp(),
                alert.level.value,
                alert.code.value,
                alert.message,
                alert.intent_id,
                alert.client_order_id,
                alert.symbol,
            ),
        )


# ---------------------------------------------------------------- the ledger

# Each write of a batch (`TradingLedger.batch_commits`) in a savepoint of its own.
_BEGIN_WRITE = "SAVEPOINT legato_ledger_write"
_UNDO_WRITE = "ROLLBACK TO legato_ledger_write"
_END_WRITE = "RELEASE legato_ledger_write"


class _HeldTransaction:
    """A SQLite write transaction held open across a sole writer's writes (`batch_commits`).

    `begin()` opens it when none is open; `commit()` ends it. `lock` lets one write at a
    time in, as the database's own lock does for transactions of their own.
    """

    __slots__ = ("_database", "_open", "every", "lock", "tx", "writes")

    def __init__(self, database: Database, every: int) -> None:
        self._database = database
        self._open: AsyncExitStack | None = None
        self.tx: Transaction | None = None
        self.every = every
        self.writes = 0
        self.lock = asyncio.Lock()

    async def begin(self) -> Transaction:
        """The open transaction, opened now if there is none."""
        if self.tx is None:
            stack = AsyncExitStack()
            self.tx = await stack.enter_async_context(self._database.transaction(write=True))
            self._open = stack
        return self.tx

    async def commit(self) -> None:
        """Commit the open transaction, if any (StoreUnavailableError if it cannot)."""
        stack, self._open, self.tx, self.writes = self._open, None, None, 0
        if stack is not None:
            await stack.aclose()


class TradingLedger:
    """The desk's orders, fills, positions, balances, intents and alerts, in the store.

    Build it on an open `Database` (shared with the task store if you like), or with
    `await TradingLedger.open(url, clock=clock)`. Times written are the callers'; the ledger
    reads no clock itself.
    """

    __slots__ = ("_database", "_held", "_known", "_writes_under_way")

    def __init__(self, database: Database) -> None:
        self._database = database
        # A sole writer's memory of the store (see `assume_sole_writer`).
        self._known: _KnownState | None = None
        # The transaction a sole writer's writes land in (see `batch_commits`).
        self._held: _HeldTransaction | None = None
        # Calls of `write` begun and not finished (see `known_equity_inputs`).
        self._writes_under_way = 0

    @classmethod
    async def open(
        cls,
        url: str | StoreUrl = DEFAULT_STORE_URL,
        *,
        upgrade: bool = True,
        clock: Clock | None = None,
    ) -> TradingLedger:
        """Connect to the store at `url` (migrating it first if `upgrade`)."""
        store_url = url if isinstance(url, StoreUrl) else StoreUrl.parse(url)
        if upgrade:
            migrate.upgrade(store_url)
        if store_url.backend == "sqlite":
            return cls(SqliteDatabase(store_url.target))
        return cls(PostgresDatabase(store_url.target, clock=clock))

    @property
    def database(self) -> Database:
        """The database the ledger writes to."""
        return self._database

    async def close(self) -> None:
        """Commit any writes held by `batch_commits`, then close the database connection."""
        try:
            await self._commit_held()
        finally:
            await self._database.close()

    async def assume_sole_writer(self) -> None:
        """Keep positions, balances, equity marks, fill ids and orders in memory from now on.

        For a store that nothing but this ledger object writes while it is open: a
        backtest's scratch store (which `use_as_scratch` locks for its one connection).
        The ledger reads them once, here; after that, the reads that only re-read what this
        ledger wrote (the open positions, the positions watermark, the latest closed
        results, balances, the latest equity marks, which fills are recorded and those of
        an order, an order by client id, the orders (all, or the working ones), the
        protective orders left on flat symbols, whether any position is open or any order
        working) are answered from memory, kept up to date with each transaction that
        commits (lists come sorted as SQLite's binary collation sorts them). Never for a
        store that another process, another connection or another ledger object may write:
        it would not see their writes.
        """
        positions = await self.open_positions()
        rows = await self._fetch("SELECT asset, total FROM legato_trading_balances")
        recorded, _ = await self.positions_watermark()
        closed = await self._fetch(
            "SELECT id, realized_pnl, fees_paid, closed_at FROM legato_trading_positions "
            "WHERE status = 'closed' ORDER BY id"
        )
        marks = await self.read(lambda tx: tx.latest_equity_marks())
        fills = await self.fills()
        orders = await self.orders()
        self._known = _KnownState(
            open_positions={position.symbol: position for position in positions},
            balances={asset: Decimal(total) for asset, total in rows},
            positions_recorded=recorded,
            closed_results=[
                (int(row_id), Decimal(realized), Decimal(fees), _dt(closed_at))
                for row_id, realized, fees, closed_at in closed
            ],
            marks=marks,
            fill_ids=set(),
            orders={},
            protective=set(),
        )
        for fill in fills:
            self._known.keep_fill(fill)
        for record in orders:
            self._known.keep_order(record)

    async def batch_commits(self, writes: int = 1000) -> None:
        """Commit a sole writer's writes in batches of `writes`, not one by one.

        For a SQLite store this ledger is the sole writer of (`assume_sole_writer` first)
        and that nothing else reads or writes through its database while it is open (a
        backtest's scratch store): the writes land in one transaction held open across
        them, each inside a savepoint of its own, so a write that fails is rolled back alone
        and its rows never reach the store, as before. The transaction is committed after
        every `writes` writes, before any read that goes to the store (the plain reads and
        `read`), and by `close()`.

        The invariant: every statement runs on the one connection, in the order and with
        the parameters it ran with before, and a write that fails leaves nothing, so the
        rows in the store once committed are the rows one transaction per write would have
        left; a read that goes to the store runs after a commit of every earlier write.
        What changes is durability: a write acknowledged here is lost if the process dies
        (or the commit fails) before the batch is committed, which a scratch store that
        nothing resumes from accepts. Raises ValidationError for a store of another
        backend, a ledger that has not assumed it is the sole writer, or a count below 1.
        """
        if self._database.dialect != "sqlite":
            raise ValidationError("database", self._database.dialect, "a SQLite store")
        if self._known is None:
            raise ValidationError("ledger", "shared", "a sole writer (assume_sole_writer first)")
        if isinstance(writes, bool) or not isinstance(writes, int) or writes < 1:
            raise ValidationError("writes", writes, "a whole number >= 1")
        await self._commit_held()
        self._held = _HeldTransaction(self._database, writes)

    async def _commit_held(self) -> None:
        """Commit the writes `batch_commits` holds, if any."""
        held = self._held
        if held is None or held.tx is None:
            return
        async with held.lock:
            try:
                await held.commit()
            except _UNAVAILABLE as error:
                raise StoreUnavailableError(f"trading ledger: {error}") from error

    @asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[LedgerTransaction]:
        await self._commit_held()
        try:
            async with self._database.transaction(write=write) as tx:
                ledger_tx = LedgerTransaction(tx, known=self._known)
                yield ledger_tx
                await ledger_tx.send_held_positions()
        except _UNAVAILABLE as error:
            raise StoreUnavailableError(f"trading ledger: {error}") from error
        ledger_tx.remember()

    async def write(self, fn: Callable[[LedgerTransaction], Awaitable[_T]]) -> _T:
        """Run `fn` in one write transaction; return its result. All its writes land or none.

        Raises StoreUnavailableError (a TransientError) when the store cannot be reached.
        """
        self._writes_under_way += 1
        try:
            if self._held is not None:
                return await self._write_held(self._held, fn)
            return await self._write_alone(fn)
        finally:
            self._writes_under_way -= 1

    async def _write_alone(self, fn: Callable[[LedgerTransaction], Awaitable[_T]]) -> _T:
        """`write` in a store transaction of its own."""
        # `_transaction` written out (one context manager less per journal write). A SQLite
        # write transaction holds the write lock from its start: it runs serialized.
        try:
            async with self._database.transaction(write=True) as tx:
                ledger_tx = LedgerTransaction(
                    tx, serialized=self._database.dialect == "sqlite", known=self._known
                )
                result = await fn(ledger_tx)
                await ledger_tx.send_held_positions()
        except _UNAVAILABLE as error:
            raise StoreUnavailableError(f"trading ledger: {error}") from error
        # Committed: a sole writer's memory takes in what was written.
        ledger_tx.remember()
        return result

    def known_equity_inputs(self, asset: str) -> tuple[Decimal | None, EquityMarks | None] | None:
        """`asset`'s recorded total and the latest equity marks, from a sole writer's memory.

        What a write begun now would read first (`LedgerTransaction.balance` and
        `latest_equity_marks`), without one: a caller that would only write when those ask
        for it can see that nothing needs writing. None when the ledger is not the sole
        writer (`assume_sole_writer`) or a write is under way, which a write begun now would
        run after: then only a write can tell.
        """
        known = self._known
        if known is None or self._writes_under_way:
            return None
        return known.balances.get(asset), known.marks

    async def _write_held(
        self, held: _HeldTransaction, fn: Callable[[LedgerTransaction], Awaitable[_T]]
    ) -> _T:
        """`write` for `batch_commits`: `fn` in a savepoint of the held transaction."""
        async with held.lock:
            try:
                tx = await held.begin()
                await tx.execute(_BEGIN_WRITE)
                ledger_tx = LedgerTransaction(tx, serialized=True, known=self._known)
                try:
                    result = await fn(ledger_tx)
                    await ledger_tx.send_held_positions()
                except BaseException:
                    await tx.execute(_UNDO_WRITE)
                    await tx.execute(_END_WRITE)
                    raise
                await tx.execute(_END_WRITE)
            except _UNAVAILABLE as error:
                raise StoreUnavailableError(f"trading ledger: {error}") from error
            # In the store once the batch commits: a sole writer's memory takes it in now.
            ledger_tx.remember()
            held.writes += 1
            if held.writes >= held.every:
                try:
                    await held.commit()
                except _UNAVAILABLE as error:
                    raise StoreUnavailableError(f"trading ledger: {error}") from error
        return result

    async def read(self, fn: Callable[[LedgerTransaction], Awaitable[_T]]) -> _T:
        """Run `fn` in one read transaction (a consistent view) and return its result."""
        async with self._transaction(write=False) as tx:
            return await fn(tx)

    # -- plain reads

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # One SELECT is consistent on its own: it runs as a single autocommit statement
        # (no BEGIN/COMMIT around it), on SQLite and PostgreSQL alike.
        await self._commit_held()
        try:
            return await self._database.run(sql, params)
        except _UNAVAILABLE as error:
            raise StoreUnavailableError(f"trading ledger: {error}") from error

    async def get_intent(self, intent_id: str) -> ExecutionIntent | None:
        """The intent with this id, or None."""
        rows = await self._fetch(_SELECT_INTENT, (intent_id,))
        return _intent_row(rows[0]) if rows else None

    async def intents(self, *, unfinished_only: bool = False) -> list[ExecutionIntent]:
        """Every intent (or only those not at a final stage), oldest first."""
        where = " WHERE finished = ?" if unfinished_only else ""
        params: tuple[Any, ...] = (False,) if unfinished_only else ()
        rows = await self._fetch(
            f"SELECT {_INTENT_COLUMNS} FROM legato_trading_intents{where} "
            "ORDER BY created_at, intent_id",
            params,
        )
        return [_intent_row(row) for row in rows]

    async def get_order(self, client_order_id: str) -> LedgerOrder | None:
        """The order with this client id, or None."""
        rows = await self._fetch(_SELECT_ORDER, (client_order_id,))
        return _order_row(rows[0]) if rows else None

    async def orders(
        self,
        *,
        symbol: str | None = None,
        open_only: bool = False,
        intent_id: str | None = None,
    ) -> list[LedgerOrder]:
        """The recorded orders, filtered, in client id order."""
        known = self._known
        if known is not None:
            # A sole writer knows every order it holds: the runtime guards ask for the working
            # ones every pass, a backtest for all of them at its end.
            return [
                record
                for cid in sorted(known.working if open_only else known.orders)
                if (record := known.order(cid)) is not None
                and (symbol is None or record.order.symbol == symbol)
                and (intent_id is None or record.intent_id == intent_id)
            ]
        clauses: list[str] = []
        params: list[Any] = []
        if symbol is not None:
            clauses.append("symbol = ?")
            params.append(symbol)
        if open_only:
            clauses.append(f"status IN ({placeholders(len(_OPEN_STATUSES))})")
            params.extend(_OPEN_STATUSES)
        if intent_id is not None:
            clauses.append("intent_id = ?")
            params.append(intent_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(
            f"SELECT {_ORDER_COLUMNS} FROM legato_trading_orders{where} ORDER BY client_order_id",
            params,
        )
        return [_order_row(row) for row in rows]

    async def orphaned_protection(self) -> list[LedgerOrder]:
        """The working protective orders of symbols with no open position, by client id.

        Stop-losses, take-profits and re-protections the venue holds (ACCEPTED or partly
        filled) on a symbol the ledger shows flat: what a closed bracket left behind. One
        statement, so the orders and the positions are read at one instant.
        """
        known = self._known
        if known is not None:
            found = (known.order(cid) for cid in sorted(known.protective))
            return [
                record
                for record in found
                if record is not None and record.order.symbol not in known.open_positions
            ]
        rows = await self._fetch(_ORPHANED_PROTECTION, _ORPHAN_PARAMS)
        return [_order_row(row) for row in rows]

    async def fills(self, symbol: str | None = None) -> list[Fill]:
        """The recorded fills (of one symbol, or all), in the order they were recorded."""
        where, params = (" WHERE symbol = ?", (symbol,)) if symbol is not None else ("", ())
        rows = await self._fetch(
            f"SELECT {_FILL_COLUMNS} FROM legato_trading_fills{where} ORDER BY id", params
        )
        return [_fill_row(row) for row in rows]

    async def known_fill_ids(self, fill_ids: Iterable[str]) -> set[str]:
        """Which of `fill_ids` the ledger has recorded already."""
        if self._known is not None:
            recorded = self._known.fill_ids
            return {fill_id for fill_id in fill_ids if fill_id in recorded}
        wanted = list(dict.fromkeys(fill_ids))
        known: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = await self._fetch(
                "SELECT fill_id FROM legato_trading_fills "
                f"WHERE fill_id IN ({placeholders(len(chunk))})",
                chunk,
            )
            known.update(row[0] for row in rows)
        return known

    async def open_positions(self) -> list[Position]:
        """The open positions, by symbol."""
        if self._known is not None:
            held = self._known.open_positions
            return [held[symbol] for symbol in sorted(held)]
        rows = await self._fetch(
            f"SELECT {_POSITION_COLUMNS} FROM legato_trading_positions WHERE status = 'open' "
            "ORDER BY symbol"
        )
        return [_position_row(row) for row in rows]

    async def closed_positions(
        self, symbol: str | None = None, *, newest_first: bool = False, limit: int | None = None
    ) -> list[Position]:
        """The closed positions (of one symbol, or all), oldest first or `newest_first`.

        `limit` keeps only the first `limit` of that order (with `newest_first`, the most
        recent ones): what a rule looking at the latest trades needs, without reading them all.
        """
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValidationError("limit", limit, "None or a positive whole number")
        clauses = ["status = 'closed'"]
        params: list[Any] = []
        if symbol is not None:
            clauses.append("symbol = ?")
            params.append(symbol)
        sql = (
            f"SELECT {_POSITION_COLUMNS} FROM legato_trading_positions "
            f"WHERE {' AND '.join(clauses)} ORDER BY id{' DESC' if newest_first else ''}"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = await self._fetch(sql, params)
        return [_position_row(row) for row in rows]

    async def latest_closed_results(
        self, limit: int
    ) -> list[tuple[Decimal, Decimal, datetime | None]]:
        """Realized PnL, fees paid and close time of the `limit` latest closed positions.

        Newest first, in the order of `closed_positions(newest_first=True)`: what the
        losing streak reads at every risk decision, without building a `Position` per row.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError("limit", limit, "a positive whole number")
        if self._known is not None:
            latest = self._known.closed_results[-limit:]
            return [
                (realized, fees, closed_at) for _, realized, fees, closed_at in reversed(latest)
            ]
        rows = await self._fetch(_LATEST_CLOSED_RESULTS, (limit,))
        return [(Decimal(realized), Decimal(fees), _dt(closed)) for realized, fees, closed in rows]

    async def has_open_positions_or_orders(self) -> bool:
        """True when a position is open or an order is working, from one cheap read.

        What `open_positions()` and `orders(open_only=True)` would both have to show empty
        for, without building either list.
        """
        if self._known is not None:
            return bool(self._known.open_positions or self._known.working)
        rows = await self._fetch(_OPEN_ANYTHING, _OPEN_STATUSES)
        return bool(rows[0][0])

    async def positions_watermark(self) -> tuple[int, int]:
        """A pair that changes whenever a position opens or closes, from one read.

        It is (the position rows recorded, the closed ones among them). Rows are never
        deleted and a closed row never reopens, so both only grow: an open adds a row, a
        close adds a closed one, in whatever order concurrent writers commit (a newest id or
        an open count could hide a close behind an open committed late with a lower id).
        Between two reads with equal pairs no position opened or closed: what a cache of the
        closed history keys on.
        """
        if self._known is not None:
            return self._known.positions_recorded, len(self._known.closed_results)
        rows = await self._fetch(_POSITIONS_WATERMARK)
        recorded, closed = rows[0]
        return int(recorded), int(closed)

    async def closed_totals(self) -> dict[str, tuple[Decimal, Decimal]]:
        """Realized PnL and fees paid of the closed positions, summed per symbol.

        Exact (the amounts are added as Decimals, as `closed_positions` would give them),
        without building a `Position` per closed trade.
        """
        rows = await self._fetch(
            "SELECT symbol, realized_pnl, fees_paid FROM legato_trading_positions "
            "WHERE status = 'closed' ORDER BY id"
        )
        totals: dict[str, tuple[Decimal, Decimal]] = {}
        for symbol, realized, fees in rows:
            known = totals.get(symbol, (_ZERO, _ZERO))
            totals[symbol] = (known[0] + Decimal(realized), known[1] + Decimal(fees))
        return totals

    async def position(self, symbol: str) -> Position | None:
        """The open position on `symbol`, or None."""
        if self._known is not None:
            return self._known.open_positions.get(symbol)
        rows = await self._fetch(_SELECT_OPEN_POSITION, (symbol,))
        return _position_row(rows[0]) if rows else None

    async def balances(self) -> dict[str, Balance]:
        """The recorded balances by asset (totals, reported as free)."""
        if self._known is not None:
            totals = self._known.balances
            return {
                asset: Balance(asset, max(totals[asset], Decimal(0))) for asset in sorted(totals)
            }
        rows = await self._fetch("SELECT asset, total FROM legato_trading_balances ORDER BY asset")
        return {row[0]: Balance(row[0], max(Decimal(row[1]), Decimal(0))) for row in rows}

    async def alerts(self, level: AlertLevel | None = None) -> list[Alert]:
        """The recorded alerts (of one level, or all), oldest first."""
        where, params = (" WHERE level = ?", (level.value,)) if level is not None else ("", ())
        rows = await self._fetch(
            "SELECT at, level, code, message, intent_id, client_order_id, symbol "
            f"FROM legato_trading_alerts{where} ORDER BY id",
            params,
        )
        return [_alert_row(row) for row in rows]

    async def alert_counts(self) -> dict[AlertLevel, int]:
        """How many alerts are recorded at each level (every level present, 0 when none)."""
        rows = await self._fetch("SELECT level, COUNT(*) FROM legato_trading_alerts GROUP BY level")
        counts = dict.fromkeys(AlertLevel, 0)
        for level, count in rows:
            counts[AlertLevel(level)] = int(count)
        return counts

    async def record_alert(self, alert: Alert) -> None:
        """Write one alert (what `Alerter` is given as its `record` function)."""
        await self.write(lambda tx: tx.add_alert(alert))

    async def save_paper_venue(self, state: PaperVenueState) -> None:
        """Keep `state` as its venue's latest snapshot (replacing the one before)."""
        if not isinstance(state, PaperVenueState):
            raise ValidationError("state", state, "a PaperVenueState")
        await self.write(lambda tx: tx.put_paper_venue(state))

    async def paper_venue_state(self, name: str) -> PaperVenueState | None:
        """The latest snapshot saved for the paper venue called `name`, or None."""
        rows = await self._fetch(
            "SELECT state FROM legato_trading_paper_venues WHERE name = ?", (name,)
        )
        return PaperVenueState.from_json(rows[0][0]) if rows else None

    async def snapshot(self) -> LedgerSnapshot:
        """What the store believes, for `legato.trading.reconciliation.diff`.

        Orders: those that may still be working, plus the recorded stop-loss of each open
        position (its stop price is what a re-protection uses). Balances only when tracked.
        """
        orders = {
            record.order.client_order_id: record.order
            for record in await self.orders(open_only=True)
        }
        positions = await self.open_positions()
        for position in positions:
            cid = position.stop_loss_order_id
            if cid is not None and cid not in orders:
                record = await self.get_order(cid)
                if record is not None:
                    orders[cid] = record.order
        return LedgerSnapshot.of(
            orders=orders.values(),
            positions=positions,
            balances=(await self.balances()).values(),
        )


# ---------------------------------------------------------------- pending writes


@dataclass(frozen=True, slots=True)
class _PendingWrite:
    description: str
    apply: Callable[[LedgerTransaction], Awaitable[object]]
    queued_at: float


class PendingWrites:
    """Writes the store refused, kept in order and retried until they land.

    `write(description, fn)` tries `fn` in a ledger transaction at once; when the store is
    unavailable (a TransientError) the write is queued and False returned. While anything is
    queued, new writes queue behind it, so two writes to one record never land out of order.
    `flush()` — run it as a supervised loop — lands queued writes oldest first and stops at
    the first that fails again.
    """

    __slots__ = ("_clock", "_ledger", "_queue", "landed")

    def __init__(self, ledger: TradingLedger, *, clock: Clock | None = None) -> None:
        self._ledger = ledger
        self._clock: Clock = clock if clock is not None else RealClock()
        self._queue: deque[_PendingWrite] = deque()
        self.landed = 0

    @property
    def pending(self) -> tuple[str, ...]:
        """Descriptions of the queued writes, oldest first."""
        return tuple(write.description for write in self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    async def write(
        self, description: str, fn: Callable[[LedgerTransaction], Awaitable[object]]
    ) -> bool:
        """Write now if possible; else queue it. Return True when it landed now."""
        if self._queue:
            await self._try_flush()
        if not self._queue:
            try:
                await self._ledger.write(fn)
                return True
            except TransientError as error:
                _log.warning("ledger_write_deferred", write=description, error=str(error))
        self._queue.append(_PendingWrite(description, fn, self._clock.monotonic()))
        return False

    async def flush(self) -> int:
        """Land the queued writes in order; return how many landed. Raises if one fails."""
        landed = 0
        while self._queue:
            head = self._queue[0]
            await self._ledger.write(head.apply)
            self._queue.popleft()
            landed += 1
            self.landed += 1
            _log.info("ledger_write_landed", write=head.description)
        return landed

    async def _try_flush(self) -> None:
        with suppress(TransientError):
            await self.flush()
