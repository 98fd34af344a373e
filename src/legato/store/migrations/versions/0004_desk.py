"""Desk decisions: decision pipeline runs, model votes, conflicts and their resolutions.

Revision ID: 0004
Revises: 0003

The audit tables `legato.trading.decision_log.DecisionLog` keeps (declared in
`legato.store.desk_schema`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "legato_desk_decisions",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("decision_key", sa.String(length=200), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("bar_time", sa.Float(), nullable=False),
        sa.Column("strategy", sa.String(length=200), nullable=False),
        sa.Column("correlation_id", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("leading_action", sa.String(length=16), nullable=False),
        sa.Column("consensus", sa.Float(), nullable=False),
        sa.Column("split", sa.Boolean(), nullable=False),
        sa.Column("entry", sa.Text(), nullable=True),
        sa.Column("stop", sa.Text(), nullable=True),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("reasoning", sa.Text(), nullable=False),
        sa.Column("analysis", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("intent_id", sa.String(length=64), nullable=True),
        sa.Column("proposal", sa.Text(), nullable=True),
        sa.Column("risk", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("decision_key"),
    )
    op.create_index(
        "ix_legato_desk_decisions_symbol", "legato_desk_decisions", ["symbol", "bar_time"]
    )
    op.create_index(
        "ix_legato_desk_decisions_correlation", "legato_desk_decisions", ["correlation_id"]
    )
    op.create_table(
        "legato_desk_votes",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("decision_key", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("reasoning", sa.Text(), nullable=False),
        sa.Column("fallback_reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_legato_desk_votes_decision", "legato_desk_votes", ["decision_key"])
    op.create_table(
        "legato_desk_conflicts",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("decision_key", sa.String(length=200), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("conflicts", sa.Text(), nullable=False),
        sa.Column("resolution", sa.String(length=16), nullable=False),
        sa.Column("size_factor", sa.Text(), nullable=False),
        sa.Column("reasoning", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("fallback_reason", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_legato_desk_conflicts_decision", "legato_desk_conflicts", ["decision_key"])
    op.create_index(
        "ix_legato_desk_conflicts_symbol", "legato_desk_conflicts", ["symbol", "created_at"]
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("legato_desk_conflicts")
    op.drop_table("legato_desk_votes")
    op.drop_table("legato_desk_decisions")
