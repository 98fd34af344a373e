"""Paper venue snapshots: the simulated exchange's book, kept across desk restarts.

Revision ID: 0005
Revises: 0004

The table `legato_trading_paper_venues` (declared in `legato.store.ledger_schema`): one
row per paper venue, its `PaperVenueState` as JSON.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "legato_trading_paper_venues",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("saved_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("legato_trading_paper_venues")
