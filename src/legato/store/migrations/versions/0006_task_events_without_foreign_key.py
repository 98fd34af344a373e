"""Task history rows no longer carry a foreign key to their task.

Revision ID: 0006
Revises: 0005

Every task transition writes a `legato_task_events` row in the same statement as the
task's own change (a submit, a claim, a completion: two or three rows per task). With a
foreign key, PostgreSQL checks each of those rows against `legato_tasks` with a query and a
row lock of its own: about a fifth of the server's CPU per task on the queue benchmark.
The key protected nothing the store does not already guarantee (only the store writes
events, for the task it is changing), and its one other duty, removing a purged task's
history, is now done by the purge itself, in the same transaction.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_EVENTS = "legato_task_events"
_KEY = "legato_task_events_task_id_fkey"
# SQLite's key has no name: batch mode reflects the table and names it by this convention
# (the name PostgreSQL gave it), so the copy can leave it out by name.
_NAMING = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def upgrade() -> None:
    """Apply this revision."""
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(_KEY, _EVENTS, type_="foreignkey")
        return
    # SQLite cannot drop a constraint: batch mode copies the rows into a table without it.
    with op.batch_alter_table(_EVENTS, naming_convention=_NAMING) as batch_op:
        batch_op.drop_constraint(_KEY, type_="foreignkey")


def downgrade() -> None:
    """Revert this revision (history rows of tasks that no longer exist are removed first)."""
    op.execute(
        "DELETE FROM legato_task_events WHERE task_id IS NOT NULL "
        "AND task_id NOT IN (SELECT id FROM legato_tasks)"
    )
    with op.batch_alter_table(_EVENTS, naming_convention=_NAMING) as batch_op:
        batch_op.create_foreign_key(_KEY, "legato_tasks", ["task_id"], ["id"], ondelete="CASCADE")
