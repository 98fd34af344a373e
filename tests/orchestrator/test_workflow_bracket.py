"""The trading desk's bracket order as a workflow, against an in-memory stand-in venue.

Entry, then stop-loss (retried; if it cannot be placed, the position is closed), then
take-profit (if it cannot be placed, the position stays open under its stop-loss).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest

from legato.kernel.errors import PermanentError, TransientError
from legato.kernel.retry import Jitter, RetryPolicy
from legato.orchestrator import Orchestrator
from legato.orchestrator.worker import Worker
from legato.orchestrator.workflow import WorkflowEngine
from legato.orchestrator.workflow_context import WorkflowContext, current_step
from legato.orchestrator.workflow_errors import StepFailedError
from legato.store.workflow_records import WorkflowRecord, WorkflowState

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
WaitUntil = Callable[..., Awaitable[Any]]

STOP_RETRY = RetryPolicy(max_attempts=4, initial_delay=0.2, max_delay=1.0, jitter=Jitter.NONE)


@dataclass
class PaperVenue:
    """An outside venue's stand-in: orders by client id (a repeated id is not a new order)."""

    stop_failures: int = 0
    take_profit_fails: bool = False
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    position: float = 0.0
    calls: list[str] = field(default_factory=list)

    def _place(self, kind: str, **details: Any) -> dict[str, Any]:
        client_id = current_step().effect_key
        if client_id not in self.orders:
            self.orders[client_id] = {"client_id": client_id, "kind": kind, "open": True, **details}
        return self.orders[client_id]

    async def place_entry(self, order: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("entry")
        placed = self._place("entry", symbol=order["symbol"], qty=order["qty"])
        if placed["open"]:
            self.position += order["qty"]
            placed["open"] = False  # a market entry fills at once
        return placed

    async def place_stop_loss(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("stop")
        if self.stop_failures > 0:
            self.stop_failures -= 1
            raise TransientError("venue busy", order=entry["client_id"])
        return self._place("stop", qty=-entry["qty"])

    async def place_take_profit(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("take_profit")
        if self.take_profit_fails:
            raise PermanentError("take-profit price outside the allowed band")
        return self._place("take_profit", qty=-entry["qty"])

    async def close_position(self, entry: dict[str, Any]) -> None:
        self.calls.append("close")
        self.position -= entry["qty"]

    async def cancel_order(self, order: dict[str, Any]) -> None:
        self.calls.append("cancel")
        self.orders[order["client_id"]]["open"] = False

    def open_orders(self) -> list[str]:
        return sorted(o["kind"] for o in self.orders.values() if o["open"])


def register_bracket(engine: WorkflowEngine, venue: PaperVenue) -> None:
    """The bracket workflow exactly as docs/concepts/workflows.md shows it."""

    @engine.workflow(name="bracket")
    async def bracket(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
        entry = await ctx.step(venue.place_entry, order, compensate=venue.close_position)
        # No compensate on the stop-loss: if a later step fails, the position stays
        # protected. If the stop cannot be placed, StepFailedError ends the workflow and
        # the entry's compensation closes the position.
        stop = await ctx.step(venue.place_stop_loss, entry, retry=STOP_RETRY)
        try:
            target = await ctx.step(venue.place_take_profit, entry)
        except StepFailedError:
            target = None  # protected by the stop-loss; a take-profit is a nice-to-have
        return {"entry": entry["client_id"], "stop": stop["client_id"], "target": target}


@pytest.fixture
def venue() -> PaperVenue:
    return PaperVenue()


@pytest.fixture
def engine(app: Orchestrator, venue: PaperVenue) -> WorkflowEngine:
    engine = WorkflowEngine(app)
    register_bracket(engine, venue)
    return engine


async def run_bracket(
    app: Orchestrator, engine: WorkflowEngine, running_worker: RunWorker, wait_until: WaitUntil
) -> WorkflowRecord:
    async def ended() -> WorkflowRecord | None:
        record = await engine.get_workflow(workflow_id)
        return record if record is not None and record.state.terminal else None

    async with app, running_worker():
        workflow_id = await engine.start(
            "bracket", {"symbol": "BTC-USD", "qty": 1.0}, idempotency_key="trade-1"
        )
        result: WorkflowRecord = await wait_until(ended, within=30)
        return result


async def test_a_bracket_places_entry_stop_and_take_profit_once_each(
    app: Orchestrator,
    engine: WorkflowEngine,
    venue: PaperVenue,
    running_worker: RunWorker,
    wait_until: WaitUntil,
) -> None:
    record = await run_bracket(app, engine, running_worker, wait_until)
    assert record.state is WorkflowState.SUCCEEDED
    assert venue.calls == ["entry", "stop", "take_profit"]
    assert venue.open_orders() == ["stop", "take_profit"]
    assert venue.position == 1.0


async def test_a_stop_loss_that_fails_for_a_while_is_retried_under_one_client_id(
    app: Orchestrator,
    engine: WorkflowEngine,
    venue: PaperVenue,
    running_worker: RunWorker,
    wait_until: WaitUntil,
) -> None:
    venue.stop_failures = 2
    record = await run_bracket(app, engine, running_worker, wait_until)
    assert record.state is WorkflowState.SUCCEEDED
    assert venue.calls == ["entry", "stop", "stop", "stop", "take_profit"]
    assert venue.open_orders() == ["stop", "take_profit"]
    assert record.journal[1].attempts == 3


async def test_a_stop_loss_that_cannot_be_placed_closes_the_position(
    app: Orchestrator,
    engine: WorkflowEngine,
    venue: PaperVenue,
    running_worker: RunWorker,
    wait_until: WaitUntil,
) -> None:
    venue.stop_failures = 100
    record = await run_bracket(app, engine, running_worker, wait_until)
    assert record.state is WorkflowState.COMPENSATED
    assert venue.calls == ["entry", "stop", "stop", "stop", "stop", "close"]
    assert venue.position == 0.0  # no unprotected position is left open
    assert venue.open_orders() == []
    assert "venue busy" in (record.error or "")


async def test_a_take_profit_that_cannot_be_placed_keeps_the_protected_position(
    app: Orchestrator,
    engine: WorkflowEngine,
    venue: PaperVenue,
    running_worker: RunWorker,
    wait_until: WaitUntil,
) -> None:
    venue.take_profit_fails = True
    record = await run_bracket(app, engine, running_worker, wait_until)
    assert record.state is WorkflowState.SUCCEEDED
    assert record.result is not None
    assert '"target":null' in record.result
    assert venue.position == 1.0
    assert venue.open_orders() == ["stop"]
