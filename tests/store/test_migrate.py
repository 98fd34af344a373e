"""Migrations bring an empty database to the current schema, and are idempotent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from legato.store import current, head, upgrade


def test_upgrade_creates_every_table_on_an_empty_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'legato.db'}"
    assert upgrade(url) == head()
    assert current(url) == head()


def test_upgrade_twice_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'legato.db'}"
    upgrade(url)
    assert upgrade(url) == head()


def test_current_is_none_before_the_first_upgrade(tmp_path: Path) -> None:
    assert current(f"sqlite:///{tmp_path / 'empty.db'}") is None


def test_task_history_keeps_its_rows_when_its_foreign_key_is_dropped(tmp_path: Path) -> None:
    # Migration 0006 copies SQLite's events table into one declared without the key.
    path = tmp_path / "legato.db"
    upgrade(f"sqlite:///{path}", "0005")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO legato_tasks (id, name, queue, payload, priority, state, run_at, "
            "created_at, updated_at, attempts, retry, resources, protected, fencing_token, "
            "cancel_requested) VALUES (7, 'n', 'default', '{}', 0, 'pending', 1, 1, 1, 0, "
            "'{}', '{}', 0, 0, 0)"
        )
        connection.execute(
            "INSERT INTO legato_task_events (task_id, at, from_state, to_state, reason) "
            "VALUES (7, 1.0, NULL, 'pending', 'submitted'), "
            "(7, 2.0, 'pending', 'running', 'claimed')"
        )
    assert upgrade(f"sqlite:///{path}") == head()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA foreign_keys=ON")
        rows = connection.execute(
            "SELECT id, task_id, at, to_state, reason FROM legato_task_events ORDER BY id"
        ).fetchall()
        assert rows == [(1, 7, 1.0, "pending", "submitted"), (2, 7, 2.0, "running", "claimed")]
        # No key any more: the next row takes the next id, and names any task id.
        connection.execute(
            "INSERT INTO legato_task_events (task_id, at, to_state, reason) "
            "VALUES (99, 3.0, 'pending', 'submitted')"
        )
        assert connection.execute("SELECT max(id) FROM legato_task_events").fetchone() == (3,)
        indexes = connection.execute("PRAGMA index_list('legato_task_events')").fetchall()
        assert "ix_legato_task_events_task" in {row[1] for row in indexes}


def test_the_first_migration_creates_the_tables_issue_3_needs(postgres_database: str) -> None:
    with psycopg.connect(postgres_database) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
    assert {
        "legato_tasks",
        "legato_task_events",
        "legato_workers",
        "legato_queues",
        "legato_schedules",
        "legato_workflows",
        "legato_workflow_steps",
        "alembic_version",
    } <= tables
    assert current(postgres_database) == head()


@pytest.mark.parametrize("url", ["mysql://x/y", "legato.db", ""])
def test_an_unsupported_url_is_rejected_naming_the_field(url: str) -> None:
    from legato.kernel.errors import ValidationError

    with pytest.raises(ValidationError) as raised:
        upgrade(url)
    assert raised.value.field == "store_url"
