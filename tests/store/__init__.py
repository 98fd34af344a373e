"""Tests of the store (legato.store), on SQLite and PostgreSQL."""
