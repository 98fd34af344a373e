"""Trading ledger: execution intents, orders, fills, positions, balances, alerts, equity.

Revision ID: 0003
Revises: 0002

The tables `legato.trading.ledger.TradingLedger` keeps (declared in
`legato.store.ledger_schema`). Decimals are stored as exact text.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "legato_trading_intents",
        sa.Column("intent_id", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("proposal", sa.Text(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("finished", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("entry_order_id", sa.String(length=64), nullable=False),
        sa.Column("stop_loss_order_id", sa.String(length=64), nullable=False),
        sa.Column("take_profit_order_id", sa.String(length=64), nullable=True),
        sa.Column("close_order_id", sa.String(length=64), nullable=True),
        sa.Column("filled_quantity", sa.Text(), server_default="0", nullable=False),
        sa.Column("outcome", sa.Text(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("intent_id"),
    )
    op.create_index(
        "ix_legato_trading_intents_finished",
        "legato_trading_intents",
        ["finished", "created_at"],
    )
    op.create_table(
        "legato_trading_orders",
        sa.Column("client_order_id", sa.String(length=64), nullable=False),
        sa.Column("intent_id", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("price", sa.Text(), nullable=True),
        sa.Column("stop_price", sa.Text(), nullable=True),
        sa.Column("time_in_force", sa.String(length=8), nullable=False),
        sa.Column("reduce_only", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("leverage", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("venue_order_id", sa.String(length=128), nullable=True),
        sa.Column("filled_quantity", sa.Text(), server_default="0", nullable=False),
        sa.Column("average_price", sa.Text(), nullable=True),
        sa.Column("parent_order_id", sa.String(length=64), nullable=True),
        sa.Column("bracket_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=True),
        sa.Column("triggered_at", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("client_order_id"),
    )
    op.create_index("ix_legato_trading_orders_status", "legato_trading_orders", ["status"])
    op.create_index("ix_legato_trading_orders_intent", "legato_trading_orders", ["intent_id"])
    op.create_table(
        "legato_trading_fills",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("fill_id", sa.String(length=128), nullable=False),
        sa.Column("client_order_id", sa.String(length=64), nullable=False),
        sa.Column("venue_order_id", sa.String(length=128), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("price", sa.Text(), nullable=False),
        sa.Column("fee", sa.Text(), nullable=False),
        sa.Column("fee_asset", sa.String(length=32), nullable=False),
        sa.Column("liquidity", sa.String(length=8), nullable=False),
        sa.Column("timestamp", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_legato_trading_fills_fill_id", "legato_trading_fills", ["fill_id"], unique=True
    )
    op.create_index("ix_legato_trading_fills_order", "legato_trading_fills", ["client_order_id"])
    op.create_table(
        "legato_trading_positions",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("entry_price", sa.Text(), nullable=False),
        sa.Column("leverage", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("mark_price", sa.Text(), nullable=True),
        sa.Column("realized_pnl", sa.Text(), nullable=False),
        sa.Column("fees_paid", sa.Text(), nullable=False),
        sa.Column("stop_loss_order_id", sa.String(length=64), nullable=True),
        sa.Column("take_profit_order_id", sa.String(length=64), nullable=True),
        sa.Column("opened_at", sa.Float(), nullable=True),
        sa.Column("closed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_legato_trading_positions_open_symbol",
        "legato_trading_positions",
        ["symbol"],
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_table(
        "legato_trading_balances",
        sa.Column("asset", sa.String(length=32), nullable=False),
        sa.Column("total", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("asset"),
    )
    op.create_table(
        "legato_trading_alerts",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("intent_id", sa.String(length=64), nullable=True),
        sa.Column("client_order_id", sa.String(length=64), nullable=True),
        sa.Column("symbol", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_legato_trading_alerts_at", "legato_trading_alerts", ["at"])
    op.create_table(
        "legato_trading_equity",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("start_equity", sa.Text(), nullable=False),
        sa.Column("low_equity", sa.Text(), nullable=False),
        sa.Column("peak_equity", sa.Text(), nullable=False),
        sa.Column("trough_equity", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("day"),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("legato_trading_equity")
    op.drop_index("ix_legato_trading_alerts_at", table_name="legato_trading_alerts")
    op.drop_table("legato_trading_alerts")
    op.drop_table("legato_trading_balances")
    op.drop_index("ux_legato_trading_positions_open_symbol", table_name="legato_trading_positions")
    op.drop_table("legato_trading_positions")
    op.drop_index("ix_legato_trading_fills_order", table_name="legato_trading_fills")
    op.drop_index("ux_legato_trading_fills_fill_id", table_name="legato_trading_fills")
    op.drop_table("legato_trading_fills")
    op.drop_index("ix_legato_trading_orders_intent", table_name="legato_trading_orders")
    op.drop_index("ix_legato_trading_orders_status", table_name="legato_trading_orders")
    op.drop_table("legato_trading_orders")
    op.drop_index("ix_legato_trading_intents_finished", table_name="legato_trading_intents")
    op.drop_table("legato_trading_intents")
