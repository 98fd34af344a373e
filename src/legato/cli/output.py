"""How `legato` prints: Rich tables for people, one JSON document for scripts, errors on stderr.

With `--json`, stdout holds exactly one JSON document and nothing else; notes (such as
"service unreachable; showing snapshot from ...") and errors always go to stderr, so a
script can parse stdout whatever happens.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["Output", "age", "state_style"]

_STATE_STYLES = {
    "pending": "cyan",
    "running": "blue",
    "retrying": "yellow",
    "succeeded": "green",
    "dead": "bold red",
    "cancelled": "magenta",
    "healthy": "green",
    "degraded": "yellow",
    "draining": "cyan",
    "unhealthy": "red",
    "evicted": "bold red",
}


def state_style(state: str) -> str:
    """The colour a task or worker state is shown in."""
    return _STATE_STYLES.get(state, "")


def age(seconds: float) -> str:
    """A duration the way people read it: 42s, 5m 03s, 2h 10m, 3d 4h."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def _when(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "-"
    absolute = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{absolute} ({_ago(timestamp, now)})"


def _ago(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "-"
    delta = now - timestamp
    return f"{age(delta)} ago" if delta >= 0 else f"in {age(-delta)}"


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class Output:
    """Prints command results as tables or JSON, and notes and errors on stderr."""

    def __init__(self, json_output: bool, now: float) -> None:
        self.json_output = json_output
        self._now = now
        # Consoles are built per command so that they write to the streams of that moment
        # (Typer's test runner swaps sys.stdout and sys.stderr).
        self._out = Console(file=sys.stdout, soft_wrap=False)
        self._err = Console(file=sys.stderr, soft_wrap=True, highlight=False)

    def document(self, value: Any) -> None:
        """Print one JSON document on stdout."""
        sys.stdout.write(json.dumps(value, indent=2) + "\n")

    def note(self, text: str) -> None:
        """Print a line for the operator on stderr (shown in JSON mode too)."""
        self._err.print(Text(text, style="yellow"))

    def message(self, text: str) -> None:
        """Print a confirmation for people (stdout; JSON mode prints documents instead)."""
        self._out.print(Text(text))

    def error(self, text: str) -> None:
        """Print one error line on stderr."""
        self._err.print(Text(f"error: {text}", style="bold red"))

    # ------------------------------------------------------------ documents

    def tasks(self, tasks: Sequence[dict[str, Any]], title: str = "Tasks") -> None:
        """Tasks as a table (or a JSON array)."""
        if self.json_output:
            self.document(list(tasks))
            return
        if not tasks:
            self.message("No tasks match. Submit one with `legato submit NAME --args '[...]'`.")
            return
        table = Table(title=title, title_justify="left")
        for column in ("ID", "NAME", "QUEUE", "STATE", "TRIES", "CREATED", "OUTCOME"):
            table.add_column(column, overflow="fold" if column == "OUTCOME" else "ellipsis")
        for task in tasks:
            outcome = task.get("error") or (
                "" if task.get("result") is None else _short(task["result"], 40)
            )
            table.add_row(
                str(task["id"]),
                task["name"],
                task["queue"],
                Text(task["state"], style=state_style(task["state"])),
                str(task["attempts"]),
                _ago(task.get("created_at"), self._now),
                _short(outcome, 40) if outcome else "",
            )
        self._out.print(table)

    def task(self, task: dict[str, Any]) -> None:
        """One task: its fields, then its history."""
        if self.json_output:
            self.document(task)
            return
        fields = Table.grid(padding=(0, 2))
        fields.add_column(style="bold")
        fields.add_column()
        rows: list[tuple[str, str | Text]] = [
            ("id", str(task["id"])),
            ("name", task["name"]),
            ("queue", task["queue"]),
            ("state", Text(task["state"], style=state_style(task["state"]))),
            ("args", _short(task.get("args", []), 200)),
            ("kwargs", _short(task.get("kwargs", {}), 200)),
            ("priority", str(task.get("priority", 0))),
            ("attempts", str(task.get("attempts", 0))),
            ("idempotency key", task.get("idempotency_key") or "-"),
            ("created", _when(task.get("created_at"), self._now)),
            ("run at", _when(task.get("run_at"), self._now)),
            ("finished", _when(task.get("finished_at"), self._now)),
        ]
        if task.get("lease_owner"):
            rows.append(("lease owner", task["lease_owner"]))
        if task.get("result") is not None:
            rows.append(("result", _short(task["result"], 200)))
        if task.get("error"):
            rows.append(("error", f"{task['error']} ({task.get('error_kind') or '?'})"))
        placement = task.get("placement")
        if placement and not placement.get("schedulable", True):
            rows.append(("placement", Text(placement.get("reason", ""), style="red")))
        for name, value in rows:
            fields.add_row(name, value)
        self._out.print(fields)
        history = task.get("history") or []
        if history:
            table = Table(title="History", title_justify="left")
            for column in ("AT", "FROM", "TO", "REASON", "WORKER"):
                table.add_column(column)
            for event in history:
                table.add_row(
                    _when(event["at"], self._now),
                    event.get("from_state") or "-",
                    Text(event["to_state"], style=state_style(event["to_state"])),
                    event["reason"],
                    event.get("worker_id") or "-",
                )
            self._out.print(table)

    def workers(self, workers: Sequence[dict[str, Any]]) -> None:
        """Workers and their health."""
        if self.json_output:
            self.document(list(workers))
            return
        if not workers:
            self.message(
                "No workers registered. Start one with "
                "`legato worker --queues default --import MODULE`."
            )
            return
        table = Table(title="Workers", title_justify="left")
        for column in ("ID", "QUEUES", "CONC", "STATE", "HEARTBEAT", "REASON"):
            table.add_column(column)
        for worker in workers:
            table.add_row(
                worker["id"],
                ",".join(worker.get("queues", [])),
                str(worker.get("concurrency", "")),
                Text(worker["state"], style=state_style(worker["state"])),
                f"{age(worker.get('heartbeat_age_seconds', 0.0))} ago",
                worker.get("reason", ""),
            )
        self._out.print(table)

    def worker(self, worker: dict[str, Any]) -> None:
        """One worker."""
        if self.json_output:
            self.document(worker)
            return
        self.message(f"worker {worker['id']}: {worker['state']} ({worker.get('reason', '')})")

    def dead_letters(self, tasks: Sequence[dict[str, Any]]) -> None:
        """Dead tasks and why they died."""
        if self.json_output:
            self.document(list(tasks))
            return
        if not tasks:
            self.message("The dead-letter queue is empty.")
            return
        table = Table(title="Dead letters", title_justify="left")
        for column in ("ID", "NAME", "QUEUE", "TRIES", "KIND", "ERROR"):
            table.add_column(column, overflow="fold" if column == "ERROR" else "ellipsis")
        for task in tasks:
            table.add_row(
                str(task["id"]),
                task["name"],
                task["queue"],
                str(task["attempts"]),
                task.get("error_kind") or "-",
                _short(task.get("error") or "", 60),
            )
        self._out.print(table)

    def workflows(self, workflows: Sequence[dict[str, Any]]) -> None:
        """Durable workflows."""
        if self.json_output:
            self.document(list(workflows))
            return
        if not workflows:
            self.message("No workflows (this version has no durable workflow engine yet).")
            return
        table = Table(title="Workflows", title_justify="left")
        for column in ("ID", "NAME", "STATE"):
            table.add_column(column)
        for workflow in workflows:
            table.add_row(workflow["id"], workflow["name"], workflow["state"])
        self._out.print(table)

    def result(self, value: dict[str, Any], text: str) -> None:
        """A small result: the JSON document, or a sentence."""
        if self.json_output:
            self.document(value)
        else:
            self.message(text)
