"""`legato db upgrade` and `legato db current`."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from legato.cli.db import db_app
from legato.store import head


def test_upgrade_migrates_an_empty_database_then_reports_it_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'legato.db'}"
    runner = CliRunner()
    behind = runner.invoke(db_app, ["current", "--url", url])
    assert behind.exit_code == 1
    assert "empty" in behind.output
    upgraded = runner.invoke(db_app, ["upgrade", "--url", url])
    assert upgraded.exit_code == 0
    assert f"upgraded empty -> {head()}" in upgraded.output
    again = runner.invoke(db_app, ["upgrade", "--url", url])
    assert "already at" in again.output
    now = runner.invoke(db_app, ["current", "--url", url])
    assert now.exit_code == 0
    assert "up to date" in now.output


def test_a_bad_url_is_refused_with_what_is_accepted() -> None:
    result = CliRunner().invoke(db_app, ["upgrade", "--url", "mysql://db/x"])
    assert result.exit_code == 2
    assert "sqlite or postgresql" in result.output
