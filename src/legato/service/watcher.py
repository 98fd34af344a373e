"""The change watcher: reads task and worker changes from the store and turns them into events.

Events come from the store rather than in-process notification because workers usually run
in other processes: the store is the one place every change is visible. Each pass (a
supervised loop, every `interval` seconds):

1. reads tasks with ids beyond its task cursor (new submissions: a `task` event, pending);
2. reads the task events table beyond its event cursor (`TaskStore.events_since`) and
   publishes one `task` event per recorded transition, so no state is skipped however short,
   and feeds the latency windows (due-to-start at each claim, run time at each end);
3. observes every registered worker through the health policy (`worker` events, and an
   `alert` when one turns unhealthy or is evicted); an evicted worker's leases are released
   to the reaper at once (`TaskStore.release_leases`). It diffs loop health too (`loop`
   events, and an `alert` when a loop backs off or crashes).

Event ids are drawn before commit, so on PostgreSQL a later id can become visible before an
earlier one still committing. The watcher therefore advances its event cursor only over ids
it has seen. When it first sees a gap it takes the server's clock (`commit_horizon`); the
missing id belongs to a transaction begun before then. Once no transaction begun by that
horizon is still open (`commits_settled`, checked before a pass reads), a gap that pass
still sees was rolled back, and the cursor moves past it. However long a commit stays open,
its event is not skipped; only after `max_gap_wait` seconds (a session left idle in a
transaction) does the watcher give up on a gap, with a warning naming the ids. SQLite has
no such gaps in practice (writers take turns), so there a gap is given up after
`gap_timeout` seconds. The first pass only takes a baseline, so a restart does not replay
old history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from legato.kernel.clock import Clock
from legato.kernel.logs import get_logger
from legato.kernel.supervisor import LoopHealth, LoopState
from legato.orchestrator.health import WorkerHealth
from legato.service.events import EventHub
from legato.service.latency import LatencyWindow, Throughput
from legato.service.registry import WorkerRegistry
from legato.store.records import TaskChange, TaskState
from legato.store.task_store import TaskStore

__all__ = ["ChangeWatcher", "TaskFigures"]

_PAGE = 500
_GAP_TIMEOUT = 10.0
_MAX_GAP_WAIT = 600.0

_log = get_logger(__name__)


class TaskFigures:
    """Counters and latency windows derived from observed transitions since the start."""

    def __init__(self) -> None:
        self.enqueue_to_start = LatencyWindow()
        self.run_time = LatencyWindow()
        self.throughput = Throughput()
        self.retries = 0
        self.dead_lettered = 0
        self.succeeded = 0
        self.reaped = 0


class ChangeWatcher:
    """Reads one store's changes and publishes them; see the module docstring."""

    def __init__(
        self,
        store: Callable[[], TaskStore],
        clock: Clock,
        hub: EventHub,
        registry: WorkerRegistry,
        loops: Callable[[], Mapping[str, LoopHealth]],
        *,
        gap_timeout: float = _GAP_TIMEOUT,
        max_gap_wait: float = _MAX_GAP_WAIT,
    ) -> None:
        self._store = store
        self._clock = clock
        self._hub = hub
        self._registry = registry
        self._loops = loops
        self._gap_timeout = gap_timeout
        self._max_gap_wait = max_gap_wait
        self._cursor = 0
        # Every event id <= _event_cursor is handled; ids above it in _handled are too.
        self._event_cursor = 0
        self._handled: set[int] = set()
        self._gap_since: float | None = None
        # The server's clock when the current gap was first seen (None: SQLite, or no gap).
        self._gap_horizon: float | None = None
        # task id -> (claim time, owner) of its attempt in flight, for run time and health.
        self._claims: dict[int, tuple[float, str | None]] = {}
        self._loop_states: dict[str, LoopState] = {}
        self._baseline = True
        self.queues: set[str] = set()
        self.figures = TaskFigures()
        self.baseline_taken = asyncio.Event()
        """Set after the first pass: every change from then on is published."""

    @property
    def last_task_id(self) -> int:
        """The newest task id seen so far."""
        return self._cursor

    async def poll(self) -> None:
        """One pass over tasks, task events, workers and loops."""
        store = self._store()
        if self._baseline:
            self._event_cursor = await store.latest_event_id()
            self._cursor = await store.latest_task_id()
        await self._read_new_tasks(store)
        await self._read_events(store)
        now = self._clock.timestamp()
        workers = await store.list_workers()
        for change in self._registry.observe(workers, now):
            self._hub.publish(
                "worker",
                {
                    "id": change.worker_id,
                    "state": change.after.value,
                    "from": None if change.before is None else change.before.value,
                    "reason": change.reason,
                },
            )
            if change.after in (WorkerHealth.UNHEALTHY, WorkerHealth.EVICTED):
                self._hub.publish(
                    "alert",
                    {
                        "severity": "high" if change.after is WorkerHealth.EVICTED else "warning",
                        "subject": f"worker {change.worker_id}",
                        "message": f"worker {change.after.value}: {change.reason}",
                    },
                )
            if change.after is WorkerHealth.EVICTED and not self._baseline:
                # Its leases go to the reaper now rather than whenever they would expire.
                await store.release_leases(change.worker_id, now)
        for worker in workers:
            self.queues.update(worker.queues)
        self._diff_loops()
        self._baseline = False
        self.baseline_taken.set()

    async def _read_new_tasks(self, store: TaskStore) -> None:
        while True:
            fresh = await store.list_tasks(after_id=self._cursor, limit=_PAGE)
            for record in fresh:
                self._cursor = record.task_id
                self.queues.add(record.queue)
                self._hub.publish(
                    "task",
                    {
                        "id": record.task_id,
                        "name": record.name,
                        "queue": record.queue,
                        "state": TaskState.PENDING.value,
                        "from": None,
                        "attempts": 0,
                        "at": record.created_at,
                    },
                )
            if len(fresh) < _PAGE:
                return

    async def _read_events(self, store: TaskStore) -> None:
        # Each pass starts at the cursor, so ids missing last time (a commit in flight) are
        # looked for again; pages within the pass follow what was read.
        # Asked before reading: if every transaction open at the horizon has ended, this
        # read sees whatever they committed, so a gap it still shows was rolled back.
        settled = (
            self._gap_horizon is not None
            and bool(self._handled)
            and await store.commits_settled(self._gap_horizon)
        )
        position = self._event_cursor
        while True:
            changes = await store.events_since(position, limit=_PAGE)
            for change in changes:
                position = change.event_id
                if change.task_id > self._cursor:
                    # Submitted after this pass read new tasks: announce the task first.
                    return
                if change.event_id > self._event_cursor and change.event_id not in self._handled:
                    self._handled.add(change.event_id)
                    self._see(change)
                self._advance()
            if len(changes) < _PAGE:
                break
        if self._handled:
            # A gap below the lowest handled id: a commit still in flight, or a rollback.
            now = self._clock.monotonic()
            if self._gap_since is None:
                self._gap_since = now
                self._gap_horizon = await store.commit_horizon()
                return
            waited = now - self._gap_since
            if self._gap_horizon is None:
                give_up = waited >= self._gap_timeout
            elif settled:
                give_up = True
            else:
                give_up = waited >= self._max_gap_wait
                if give_up:
                    _log.warning(
                        "event gap given up while a transaction begun before it is still open",
                        missing_from=self._event_cursor + 1,
                        missing_to=min(self._handled) - 1,
                        waited_seconds=round(waited, 1),
                    )
            if give_up:
                self._event_cursor = min(self._handled) - 1
                self._gap_since = None
                self._gap_horizon = None
                self._advance()

    def _advance(self) -> None:
        while self._event_cursor + 1 in self._handled:
            self._event_cursor += 1
            self._handled.discard(self._event_cursor)
        if not self._handled:
            self._gap_since = None
            self._gap_horizon = None

    def _see(self, change: TaskChange) -> None:
        event = change.event
        figures = self.figures
        self.queues.add(change.queue)
        if event.to_state is TaskState.RUNNING and event.from_state is not TaskState.RUNNING:
            self._claims[change.task_id] = (event.at, event.worker_id)
            # run_at is when the attempt became due, unless the task has been moved since.
            if change.run_at <= event.at:
                figures.enqueue_to_start.record(event.at - change.run_at)
        elif event.from_state is TaskState.RUNNING and event.to_state is not TaskState.RUNNING:
            claimed_at, owner = self._claims.pop(change.task_id, (None, None))
            if event.to_state is TaskState.RETRYING:
                figures.retries += 1
            if event.to_state.terminal:
                figures.throughput.record(event.at)
                if claimed_at is not None and event.to_state is not TaskState.CANCELLED:
                    figures.run_time.record(event.at - claimed_at)
            if owner is not None:
                if event.to_state is TaskState.SUCCEEDED:
                    self._registry.record_outcome(owner, failed=False)
                elif event.to_state in (TaskState.RETRYING, TaskState.DEAD):
                    self._registry.record_outcome(owner, failed=True)
        if event.to_state is TaskState.DEAD:
            figures.dead_lettered += 1
        elif event.to_state is TaskState.SUCCEEDED:
            figures.succeeded += 1
        if event.from_state is event.to_state:
            return  # a note (cancel requested, lease released), not a transition
        self._hub.publish(
            "task",
            {
                "id": change.task_id,
                "name": change.name,
                "queue": change.queue,
                "state": event.to_state.value,
                "from": None if event.from_state is None else event.from_state.value,
                "attempts": change.attempts,
                "at": event.at,
                "reason": event.reason,
            },
        )

    def _diff_loops(self) -> None:
        for name, health in self._loops().items():
            before = self._loop_states.get(name)
            self._loop_states[name] = health.state
            if before is health.state or self._baseline:
                continue
            self._hub.publish(
                "loop",
                {"name": name, "state": health.state.value, "error": health.last_error},
            )
            if health.state in (LoopState.BACKING_OFF, LoopState.CRASHED):
                self._hub.publish(
                    "alert",
                    {
                        "severity": "high" if health.state is LoopState.CRASHED else "warning",
                        "subject": f"loop {name}",
                        "message": f"loop {health.state.value}: {health.last_error}",
                    },
                )
