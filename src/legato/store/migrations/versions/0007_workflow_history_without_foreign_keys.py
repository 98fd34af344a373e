"""A workflow's journal and history rows no longer carry a foreign key to their workflow.

Revision ID: 0007
Revises: 0006

A one-step workflow writes four such rows (its started, running and succeeded events and its
step's journal entry), and PostgreSQL checked each against `legato_workflows` with a query
and a row lock of its own: measured on a drain of 8,000 one-step workflows, about a fifth of
the server's CPU per workflow (the same cost revision 0006 removed from task history). The
keys protected nothing the store does not already guarantee: only the store writes these
rows, in statements that find the workflow first (a journal entry also fences on the run's
lease), and the store never deletes a workflow, which was the keys' other duty (cascading
the delete). The workflow's own key to its run task stays.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (table, key): SQLite's keys have no names; batch mode reflects each table and names them by
# this convention (the names PostgreSQL gave them), so the copy can leave them out by name.
_KEYS = (
    ("legato_workflow_steps", "legato_workflow_steps_workflow_id_fkey"),
    ("legato_workflow_events", "legato_workflow_events_workflow_id_fkey"),
)
_NAMING = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def upgrade() -> None:
    """Apply this revision."""
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, key in _KEYS:
        if postgres:
            op.drop_constraint(key, table, type_="foreignkey")
            continue
        # SQLite cannot drop a constraint: batch mode copies the rows into a table without it.
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch_op:
            batch_op.drop_constraint(key, type_="foreignkey")


def downgrade() -> None:
    """Revert this revision (rows of workflows that no longer exist are removed first)."""
    for table, key in _KEYS:
        op.execute(
            f"DELETE FROM {table} WHERE workflow_id NOT IN (SELECT id FROM legato_workflows)"
        )
        with op.batch_alter_table(table, naming_convention=_NAMING) as batch_op:
            batch_op.create_foreign_key(
                key, "legato_workflows", ["workflow_id"], ["id"], ondelete="CASCADE"
            )
