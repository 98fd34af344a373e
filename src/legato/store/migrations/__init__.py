"""Alembic migration scripts for the store (see `legato.store.migrate`)."""
