"""Alembic environment for Legato's store: runs migrations on the connection it is handed."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

# Imported for their side effect: they add the desk and trading tables to `metadata`.
import legato.store.desk_schema
import legato.store.ledger_schema  # noqa: F401
from legato.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as fresh:
        _run(fresh)
    engine.dispose()
