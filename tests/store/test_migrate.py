"""Migrations bring an empty database to the current schema, and are idempotent."""

from __future__ import annotations

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
