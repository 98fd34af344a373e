"""Tasks the CLI tests import with `--import cli.sample_tasks`, as a user's module would."""

from __future__ import annotations

from legato.orchestrator import Orchestrator

app = Orchestrator()


@app.task(name="add")
async def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b


@app.task(name="slow", queue="slow")
async def slow() -> None:
    """A task nothing in the CLI tests runs (it stays pending)."""
