"""The trading ledger's tables, on the store's one shared `MetaData`.

`legato.trading.ledger.TradingLedger` reads and writes them. Money, prices and quantities
are TEXT holding the exact `Decimal` string (never a float column: a float cannot hold 0.1);
times are POSIX seconds from a `Clock`, like every other Legato table. Migration 0003 creates
them; migration 0005 adds the paper venue snapshots.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    text,
)

from legato.store.schema import metadata

__all__ = [
    "trading_alerts",
    "trading_balances",
    "trading_equity",
    "trading_fills",
    "trading_intents",
    "trading_orders",
    "trading_paper_venues",
    "trading_positions",
]

_Id = BigInteger().with_variant(Integer(), "sqlite")
# Venues cap client order ids at 36 characters; 64 leaves room for other venues' ids.
_ClientId = String(64)

trading_intents = Table(
    "legato_trading_intents",
    metadata,
    Column("intent_id", String(64), primary_key=True),
    Column("symbol", String(64), nullable=False),
    Column("proposal", Text, nullable=False, doc="JSON: TradeProposal.as_dict()"),
    Column("stage", String(32), nullable=False),
    Column("finished", Boolean, nullable=False, server_default=text("false")),
    Column("entry_order_id", _ClientId, nullable=False),
    Column("stop_loss_order_id", _ClientId, nullable=False),
    Column("take_profit_order_id", _ClientId),
    Column("close_order_id", _ClientId),
    Column("filled_quantity", Text, nullable=False, server_default="0"),
    Column("outcome", Text, nullable=False, server_default="{}", doc="JSON: result so far"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_legato_trading_intents_finished", "finished", "created_at"),
)

trading_orders = Table(
    "legato_trading_orders",
    metadata,
    Column("client_order_id", _ClientId, primary_key=True),
    Column("intent_id", String(64)),
    Column("role", String(16), nullable=False, doc="entry, stop_loss, take_profit, close, ..."),
    Column("symbol", String(64), nullable=False),
    Column("side", String(8), nullable=False),
    Column("type", String(16), nullable=False),
    Column("quantity", Text, nullable=False),
    Column("price", Text),
    Column("stop_price", Text),
    Column("time_in_force", String(8), nullable=False),
    Column("reduce_only", Boolean, nullable=False, server_default=text("false")),
    Column("leverage", Text),
    Column("status", String(20), nullable=False),
    Column("venue_order_id", String(128)),
    Column("filled_quantity", Text, nullable=False, server_default="0"),
    Column("average_price", Text),
    Column("parent_order_id", _ClientId),
    Column("bracket_id", String(64)),
    Column("created_at", Float),
    Column("updated_at", Float),
    Column("triggered_at", Float),
    Column("reason", Text),
    Index("ix_legato_trading_orders_status", "status"),
    Index("ix_legato_trading_orders_intent", "intent_id"),
)

trading_fills = Table(
    "legato_trading_fills",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True, doc="arrival order in the ledger"),
    Column("fill_id", String(128), nullable=False),
    Column("client_order_id", _ClientId, nullable=False),
    Column("venue_order_id", String(128), nullable=False),
    Column("symbol", String(64), nullable=False),
    Column("side", String(8), nullable=False),
    Column("quantity", Text, nullable=False),
    Column("price", Text, nullable=False),
    Column("fee", Text, nullable=False),
    Column("fee_asset", String(32), nullable=False),
    Column("liquidity", String(8), nullable=False),
    Column("timestamp", Float, nullable=False),
    Index("ux_legato_trading_fills_fill_id", "fill_id", unique=True),
    Index("ix_legato_trading_fills_order", "client_order_id"),
)

trading_positions = Table(
    "legato_trading_positions",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("symbol", String(64), nullable=False),
    Column("side", String(8), nullable=False),
    Column("quantity", Text, nullable=False),
    Column("entry_price", Text, nullable=False),
    Column("leverage", Text, nullable=False),
    Column("status", String(8), nullable=False),
    Column("mark_price", Text),
    Column("realized_pnl", Text, nullable=False),
    Column("fees_paid", Text, nullable=False),
    Column("stop_loss_order_id", _ClientId),
    Column("take_profit_order_id", _ClientId),
    Column("opened_at", Float),
    Column("closed_at", Float),
    # A perpetual account holds one net position per symbol, so the ledger does too.
    Index(
        "ux_legato_trading_positions_open_symbol",
        "symbol",
        unique=True,
        sqlite_where=text("status = 'open'"),
        postgresql_where=text("status = 'open'"),
    ),
)

trading_balances = Table(
    "legato_trading_balances",
    metadata,
    Column("asset", String(32), primary_key=True),
    Column("total", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

trading_alerts = Table(
    "legato_trading_alerts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("level", String(16), nullable=False),
    Column("code", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("intent_id", String(64)),
    Column("client_order_id", _ClientId),
    Column("symbol", String(64)),
    Index("ix_legato_trading_alerts_at", "at"),
)

trading_equity = Table(
    "legato_trading_equity",
    metadata,
    # One row per UTC trading day: the marks the risk engine's daily-loss and drawdown
    # halts are judged on, kept in the store so a restart does not forget a bad morning.
    Column("day", String(10), primary_key=True, doc="YYYY-MM-DD, UTC"),
    Column("start_equity", Text, nullable=False),
    Column("low_equity", Text, nullable=False),
    Column("peak_equity", Text, nullable=False),
    Column("trough_equity", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

trading_paper_venues = Table(
    "legato_trading_paper_venues",
    metadata,
    # The paper venue keeps its book in memory; its snapshot lives here so a restarted desk
    # finds the exchange as it left it, the way a real venue keeps its state without us.
    Column("name", String(64), primary_key=True),
    Column("state", Text, nullable=False, doc="JSON: PaperVenueState.to_json()"),
    Column("saved_at", Float, nullable=False),
)
