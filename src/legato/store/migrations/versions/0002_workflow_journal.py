"""Workflow journal details: transition history, step functions, attempts, undo errors.

Revision ID: 0002
Revises: 0001

- `legato_workflow_events`: every workflow state change, with time and reason.
- `legato_workflow_steps` gains `function` (what ran at that position, for the replay
  determinism check), `attempts`, and `compensation_error` / `compensated_at`.
- Indexes to find a workflow by the task running it and to list workflows by state.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "legato_workflow_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("workflow_id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["workflow_id"], ["legato_workflows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("legato_workflow_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_legato_workflow_events_workflow", ["workflow_id", "id"], unique=False
        )
    with op.batch_alter_table("legato_workflow_steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("function", sa.String(length=400), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("compensation_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("compensated_at", sa.Float(), nullable=True))
    with op.batch_alter_table("legato_workflows", schema=None) as batch_op:
        batch_op.create_index("ix_legato_workflows_task", ["task_id"], unique=False)
        batch_op.create_index("ix_legato_workflows_state", ["state", "id"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("legato_workflows", schema=None) as batch_op:
        batch_op.drop_index("ix_legato_workflows_state")
        batch_op.drop_index("ix_legato_workflows_task")
    with op.batch_alter_table("legato_workflow_steps", schema=None) as batch_op:
        batch_op.drop_column("compensated_at")
        batch_op.drop_column("compensation_error")
        batch_op.drop_column("attempts")
        batch_op.drop_column("function")
    with op.batch_alter_table("legato_workflow_events", schema=None) as batch_op:
        batch_op.drop_index("ix_legato_workflow_events_workflow")
    op.drop_table("legato_workflow_events")
