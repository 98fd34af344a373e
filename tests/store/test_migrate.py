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


def test_workflow_history_keeps_its_rows_and_keys_when_its_foreign_keys_are_dropped(
    tmp_path: Path,
) -> None:
    # Migration 0007 copies SQLite's journal and events tables into ones declared without
    # the key to legato_workflows; their rows, primary keys and indexes stay.
    path = tmp_path / "legato.db"
    upgrade(f"sqlite:///{path}", "0006")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO legato_workflows (id, name, state, payload, created_at, updated_at) "
            "VALUES (5, 'flow', 'running', '{}', 1, 1)"
        )
        connection.execute(
            "INSERT INTO legato_workflow_steps (workflow_id, step_index, step_name, kind, "
            "state, started_at) VALUES (5, 0, 'charge', 'step', 'succeeded', 2.0)"
        )
        connection.execute(
            "INSERT INTO legato_workflow_events (workflow_id, at, to_state, reason) "
            "VALUES (5, 1.0, 'pending', 'started'), (5, 2.0, 'running', 'running')"
        )
    assert upgrade(f"sqlite:///{path}") == head()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA foreign_keys=ON")
        steps = connection.execute(
            "SELECT workflow_id, step_index, step_name FROM legato_workflow_steps"
        ).fetchall()
        events = connection.execute(
            "SELECT id, workflow_id, to_state FROM legato_workflow_events ORDER BY id"
        ).fetchall()
        assert steps == [(5, 0, "charge")]
        assert events == [(1, 5, "pending"), (2, 5, "running")]
        for table in ("legato_workflow_steps", "legato_workflow_events"):
            keys = connection.execute(f"PRAGMA foreign_key_list('{table}')").fetchall()
            assert keys == []
        # The journal's primary key still refuses a second entry at one position.
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute(
                "INSERT INTO legato_workflow_steps (workflow_id, step_index, step_name, kind, "
                "state, started_at) VALUES (5, 0, 'again', 'step', 'succeeded', 3.0)"
            )
        indexes = connection.execute("PRAGMA index_list('legato_workflow_events')").fetchall()
        assert "ix_legato_workflow_events_workflow" in {row[1] for row in indexes}


def test_on_postgresql_only_the_workflows_key_to_its_task_remains(postgres_database: str) -> None:
    with psycopg.connect(postgres_database) as connection:
        keys = connection.execute(
            "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid::regclass::text LIKE 'legato_workflow%'"
        ).fetchall()
    assert keys == [("legato_workflows", "legato_tasks")]
