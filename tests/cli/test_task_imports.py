"""`--import`: the user's tasks registered on the CLI's orchestrator."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from legato.cli.task_imports import import_tasks
from legato.kernel.errors import ValidationError
from legato.orchestrator import Orchestrator

MODULE = """
from legato.kernel.retry import RetryPolicy
from legato.orchestrator import Orchestrator

app = Orchestrator()
other = Orchestrator()
not_an_app = 3


@app.task(name="ping", queue="pings", priority=5, retry=RetryPolicy(max_attempts=2))
async def ping(value: int) -> int:
    return value


@other.task(name="pong")
def pong() -> None:
    return None
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module in the working directory, as a user's project would have it."""
    name = f"user_tasks_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    # Only import_tasks' own rule (the working directory comes first) may find it.
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(tmp_path)])
    return name


def test_every_orchestrator_of_a_module_is_imported_with_its_options(user_module: str) -> None:
    target = Orchestrator("sqlite:///unused.db")
    names = import_tasks(target, [user_module])
    assert names == ("ping", "pong")
    ping = target.definition("ping")
    assert (ping.queue, ping.priority, ping.retry.max_attempts) == ("pings", 5, 2)


def test_module_colon_attribute_imports_that_orchestrator_only(user_module: str) -> None:
    target = Orchestrator("sqlite:///unused.db")
    assert import_tasks(target, [f"{user_module}:other"]) == ("pong",)


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [(":not_an_app", "to be an Orchestrator"), (":missing", "to be an Orchestrator")],
)
def test_an_attribute_that_is_not_an_orchestrator_is_refused(
    user_module: str, suffix: str, expected: str
) -> None:
    with pytest.raises(ValidationError, match=expected) as raised:
        import_tasks(Orchestrator("sqlite:///unused.db"), [user_module + suffix])
    assert raised.value.field == "--import"


def test_a_module_without_an_orchestrator_is_refused() -> None:
    with pytest.raises(ValidationError, match="defining an Orchestrator"):
        import_tasks(Orchestrator("sqlite:///unused.db"), ["json"])


def test_a_module_that_cannot_be_imported_is_refused() -> None:
    with pytest.raises(ValidationError, match="ModuleNotFoundError"):
        import_tasks(Orchestrator("sqlite:///unused.db"), ["surely_not_a_module_xyz"])
