"""The desk's decisions as durable orchestrator tasks: one `legato.desk.decide` per bar.

A desk scheduled by the orchestrator (`Scheduling.ORCHESTRATOR`, what `legato run` uses)
does not start its decision pipelines itself. For every bar it feeds, `DeskTasks.submit`
stores a task ``legato.desk.decide(symbol, bar_time)`` on the desk's own store, with the
idempotency key ``desk-decide:{symbol}@{bar_time}#{run}``: however often one run of the
desk submits a bar, it is one task. `run` names this start of the desk (its worker's id and
start time), so a bar fed again after a restart (a recorded file resumed after the last
decided bar) gets a task of its own even if an earlier run's task for it ended without
deciding (stale, skipped, interrupted); at most one decision per bar is the decision log's
guarantee, across runs. A worker running inside the desk's process (the
bar's indicator snapshot lives in its memory) claims the tasks and runs the coordinator's
pipeline on them, so every decision has a task with a history an operator can read
(`legato tasks`, the dashboard's task pages).

A task decides only on the newest bar the desk has observed for its symbol. One whose bar
is older (overtaken by a newer bar, or left pending when the desk stopped or crashed) ends
succeeded with ``{"status": "stale", ...}`` and never trades on old data; one claimed
while the desk is stopping ends ``{"status": "skipped", ...}``. One pipeline per symbol
at a time and at most one decision per bar are the coordinator's guarantees (its
per-symbol lock and the decision log's claim), so concurrent tasks of one symbol neither
deadlock nor trade twice.

The pipeline a task runs joins the desk's runs in flight, so a stop gives it the same grace
as an inline run (and cancels it after that: the task then ends ``"interrupted"``; the
execution is durable and resumes at the next start). `settle()` waits until every task the
desk submitted has ended; `stop()` then stops the worker, which reports what it ran and
deregisters, leaving nothing running in the store. After a crash, the worker's leases
expire, the reaper returns the tasks, and the next desk's worker ends them as stale.

`Scheduling.INLINE` (the default, and what backtests use) runs the same pipeline as a
plain asyncio task of the desk per bar: no store round trip per bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from collections.abc import Callable, Coroutine, MutableSet
from typing import Any

import structlog

from legato.kernel.clock import Clock
from legato.kernel.retry import RetryPolicy
from legato.orchestrator.app import Orchestrator
from legato.orchestrator.task import TaskContext
from legato.orchestrator.worker import Worker, WorkerConfig
from legato.store.records import TaskState
from legato.trading.agents.snapshot import IndicatorSnapshot
from legato.trading.coordinator import PipelineOutcome

__all__ = [
    "DECIDE_QUEUE",
    "DECIDE_TASK",
    "DeskTasks",
    "Scheduling",
    "decide_key",
]

_log = structlog.get_logger(__name__)

DECIDE_TASK = "legato.desk.decide"
"""The task name of one bar's decision."""
DECIDE_QUEUE = "desk"
"""The queue the desk's decisions go on (the desk's own worker serves it)."""
_POLL_INTERVAL = 1.0
# The desk's submits wake its worker at once; the poll only finds tasks returned by the
# reaper or submitted by another process, so it need not query the store 20 times a second.
_REAPER_INTERVAL = 5.0
# A crashed desk's leases expire after 30 s: finding them within 5 s more is soon enough.
_SETTLE_POLL = 0.05
# How often `settle` asks the store whether the worker has reported its last tasks.

Decide = Callable[[str, IndicatorSnapshot], Coroutine[Any, Any, PipelineOutcome | None]]


class Scheduling(enum.Enum):
    """How a desk runs its decision pipelines."""

    INLINE = "inline"
    """An asyncio task of the desk per bar (backtests: nothing stored per bar)."""
    ORCHESTRATOR = "orchestrator"
    """A durable `legato.desk.decide` task per bar, run by the desk's own worker."""


def decide_key(symbol: str, bar_time: str, run: str) -> str:
    """The idempotency key of run `run`'s decision task of `symbol`'s bar at `bar_time` (ISO)."""
    return f"desk-decide:{symbol}@{bar_time}#{run}"


class DeskTasks:
    """Submits one decision task per bar and runs them on a worker in the desk's process.

    `decide` is the desk's pipeline (`Desk._pipeline`); each run it starts is added to
    `in_flight` (the desk's runs, which a stop waits for and cancels) until it ends.
    `stopping` says whether the desk is stopping (no new decision starts then).
    `concurrency` is the worker's: at least the number of symbols, so a symbol whose run
    waits for a fill never holds back another symbol's decision. `grace` is how long the
    worker lets a running task end at `stop()` before releasing it (the desk's own grace
    logic cancels its runs first, so this is a backstop).
    """

    def __init__(
        self,
        store_url: str,
        *,
        clock: Clock,
        rng: random.Random,
        decide: Decide,
        in_flight: MutableSet[asyncio.Task[PipelineOutcome | None]],
        stopping: Callable[[], bool],
        concurrency: int,
        grace: float,
    ) -> None:
        self.app = Orchestrator(store_url, clock=clock, rng=rng, upgrade=False)
        self._decide = decide
        self._in_flight = in_flight
        self._stopping = stopping
        self._concurrency = concurrency
        self._grace = grace
        self._latest: dict[str, IndicatorSnapshot] = {}
        # Tasks this desk submitted that have not ended yet, by id; `settle` waits for them.
        self._outstanding: dict[int, str] = {}
        self._ended = asyncio.Event()
        self._worker: Worker | None = None
        self._worker_run: asyncio.Task[None] | None = None
        self._run_name = ""
        self.app.task(
            name=DECIDE_TASK,
            queue=DECIDE_QUEUE,
            # A failed decision is not retried: the next bar decides again, as inline.
            retry=RetryPolicy(max_attempts=1),
        )(self._decide_task)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the orchestrator on the desk's store and start the worker."""
        await self.app.open()
        worker = self.app.worker(
            (DECIDE_QUEUE,),
            concurrency=self._concurrency,
            config=WorkerConfig(
                grace=self._grace,
                poll_interval=_POLL_INTERVAL,
                reaper_interval=_REAPER_INTERVAL,
            ),
        )
        self._worker = worker
        self._run_name = f"{worker.worker_id}@{self.app.clock.timestamp():.6f}"
        self._worker_run = asyncio.create_task(worker.run(), name="desk-decision-worker")
        ready = asyncio.ensure_future(worker.ready.wait())
        try:
            await asyncio.wait({ready, self._worker_run}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._worker_run.done():
            # The worker failed to start: surface why, and leave nothing open.
            try:
                self._worker_run.result()
            finally:
                await self.app.close()

    async def stop(self) -> None:
        """Stop the worker (running tasks end or are released within the grace) and close."""
        worker, run = self._worker, self._worker_run
        self._worker = self._worker_run = None
        try:
            if worker is not None and run is not None:
                worker.stop()
                await run
        finally:
            await self.app.close()

    # ------------------------------------------------------------ submitting

    @property
    def run_name(self) -> str:
        """This start of the desk, as its decision tasks' keys name it ('' before `start`)."""
        return self._run_name

    def key(self, symbol: str, bar_time: str) -> str:
        """The idempotency key this run gives the decision task of `symbol`'s bar."""
        return decide_key(symbol, bar_time, self._run_name)

    async def submit(self, snapshot: IndicatorSnapshot) -> int:
        """Make `snapshot` its symbol's latest bar and submit its decision task; return its id."""
        symbol = snapshot.symbol
        self._latest[symbol] = snapshot
        bar_time = snapshot.timestamp.isoformat()
        key = self.key(symbol, bar_time)
        task_id = await self.app.submit(DECIDE_TASK, symbol, bar_time, idempotency_key=key)
        if task_id not in self._outstanding:
            self._outstanding[task_id] = key
        return task_id

    async def settle(self) -> None:
        """Wait until every decision task this desk submitted has ended, and is stored so.

        A task's end is reported by the worker's next pass after its function returns;
        waiting for the store too means a `stop()` that follows finds nothing to report
        (the worker then deregisters at once instead of waiting out its grace period).
        """
        store = self.app.store
        worker, run = self._worker, self._worker_run
        if worker is None or run is None:
            return
        while not run.done():
            for task_id in list(self._outstanding):
                # A resubmitted bar whose task ended in an earlier run never runs here.
                record = await store.get_task(task_id)
                if record is None or record.state.terminal:
                    self._outstanding.pop(task_id, None)
            held = await store.list_tasks(
                states=(TaskState.RUNNING,), queue=DECIDE_QUEUE, name=DECIDE_TASK, limit=1_000
            )
            if not self._outstanding and not any(
                record.lease_owner == worker.worker_id for record in held
            ):
                return
            self._ended.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SETTLE_POLL):
                    await _ended_or_done(self._ended, run)
        # A dead worker runs nothing more: the rest stays pending and ends stale later.

    # ------------------------------------------------------------ the task

    async def _decide_task(self, symbol: str, bar_time: str, ctx: TaskContext) -> dict[str, Any]:
        try:
            return await self._decide_bar(symbol, bar_time)
        finally:
            if self._outstanding.pop(ctx.task_id, None) is not None:
                self._ended.set()

    async def _decide_bar(self, symbol: str, bar_time: str) -> dict[str, Any]:
        result: dict[str, Any] = {"symbol": symbol, "bar_time": bar_time}
        snapshot = self._latest.get(symbol)
        if snapshot is None or snapshot.timestamp.isoformat() != bar_time:
            latest = None if snapshot is None else snapshot.timestamp.isoformat()
            _log.info("desk_decision_stale", symbol=symbol, bar_time=bar_time, latest=latest)
            return {
                **result,
                "status": "stale",
                "detail": "skipped: not the latest bar the desk has observed "
                f"for {symbol} (latest: {latest or 'none since the desk started'})",
            }
        if self._stopping():
            return {**result, "status": "skipped", "detail": "skipped: the desk is stopping"}
        run = asyncio.create_task(
            self._decide(symbol, snapshot), name=f"pipeline:{symbol}:{bar_time}"
        )
        self._in_flight.add(run)
        run.add_done_callback(self._in_flight.discard)
        try:
            outcome = await run
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the worker stops this task (cancel, lease lost, shutdown)
            # The desk's stop cancelled the run after its grace: the execution is durable
            # and `recover()` carries it on at the next start.
            return {
                **result,
                "status": "interrupted",
                "detail": "the desk stopped during the decision; its execution resumes "
                "at the next start",
            }
        if outcome is None:
            return {**result, "status": "failed", "detail": "the pipeline failed (see the log)"}
        return {
            **result,
            "status": outcome.disposition.value,
            "key": outcome.key,
            "decision": None if outcome.status is None else outcome.status.value,
            "detail": outcome.detail,
        }


async def _ended_or_done(event: asyncio.Event, worker: asyncio.Task[None]) -> None:
    # Wait until `event` is set or the worker has ended (a dead worker ends no more tasks).
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, worker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
