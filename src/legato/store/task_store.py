"""The task store: every read and write of tasks, leases, workers and queues, in SQL.

Each public method is one transaction: a claim, a batch of completions, a reaper pass or a
batch submit either happens whole or not at all, and every state change writes its history
event in that same transaction. Times are POSIX seconds passed in by the caller (from its
`Clock`); nothing here reads a clock.

The store is mechanical: it applies the transitions it is given under the fencing rules and
leaves policy (retry delays, what a timeout means) to `legato.orchestrator`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.store import migrate
from legato.store.commit_groups import BatchRejected, CommitGroup
from legato.store.database import ByKey, Database, Row, Transaction
from legato.store.errors import StaleLeaseError, StoreUnavailableError
from legato.store.postgres import PostgresDatabase
from legato.store.records import (
    EndReason,
    ExpiredLease,
    HeartbeatReply,
    Lease,
    NewTask,
    Outcome,
    QueueLimits,
    Submitted,
    TaskChange,
    TaskEvent,
    TaskRecord,
    TaskState,
    WorkerRecord,
    WorkerState,
)
from legato.store.sql_batches import chunks, in_list, row_set
from legato.store.sqlite import SqliteDatabase
from legato.store.url import DEFAULT_STORE_URL, StoreUrl

__all__ = [
    "NOTIFY_CHANNEL",
    "SUBMIT_GROUP_LIMIT",
    "TASK_INSERT_COLUMNS",
    "TASK_INSERT_TYPES",
    "ClaimRider",
    "TaskStore",
    "running",
    "task_row",
]

NOTIFY_CHANNEL = "legato_tasks"
"""PostgreSQL channel on which a submit announces the queues that have new due work."""

# SQLite's default limit on bound parameters is 32766; stay far below it per statement.
_CHUNK = 500
_ARRAY_CHUNK = 10_000  # PostgreSQL: rows per statement when each column is one array
_SUBMIT_CHUNK = 2_000  # 13 parameters a task on SQLite: 26,000 parameters

SUBMIT_GROUP_LIMIT = 256
"""Most tasks that concurrent submits of one process share a transaction for (group commit)."""

_SubmitCall = tuple[Sequence[NewTask], float]

_TASK_COLUMNS = (
    "id, name, queue, payload, priority, state, end_reason, idempotency_key, run_at, "
    "created_at, updated_at, started_at, finished_at, attempts, retry, timeout, resources, "
    "protected, lease_owner, lease_expires_at, fencing_token, cancel_requested, result, "
    "error, error_kind, traceback"
)

_CLAIMABLE = "('pending', 'retrying')"


def running(alias: str) -> str:
    """SQL that `alias`'s task row is running, for statements that name their tasks by id.

    Written `state = 'running'`, the check hands PostgreSQL's planner another way in: read
    every running task (through the partial lease index or the state index) and hash-join them
    with the ids. While a table's statistics are young it takes it, and then each batch reads
    the whole running set, with the index entries of every earlier lease not yet vacuumed:
    measured on a drain of 2,000 workflows, 1,728 index entries read for a batch of 64 by each
    of the completion and the journal's fence. COALESCE of a NOT NULL column means the same,
    and no index on the state column can serve it: the rows are found by their primary key.
    """
    return f"COALESCE({alias}.state, '') = 'running'"


_EVENT_TYPES = ("bigint", "double precision", "text", "text", "text", "text", "bigint", "text")
TASK_INSERT_TYPES = (
    "text",
    "text",
    "text",
    "integer",
    "text",
    "text",
    "double precision",
    "double precision",
    "double precision",
    "text",
    "double precision",
    "text",
    "boolean",
)
"""PostgreSQL types of the TASK_INSERT_COLUMNS, in order (for typed parameters and arrays)."""
_OUTCOME_TYPES = (
    "bigint",
    "bigint",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "double precision",
    "double precision",
    "text",
)


TASK_INSERT_COLUMNS = (
    "name, queue, payload, priority, state, idempotency_key, run_at, created_at, updated_at, "
    "retry, timeout, resources, protected"
)
"""The columns of a new task row, in the order `task_row` gives their values."""


def task_row(task: NewTask, now: float) -> tuple[Any, ...]:
    """The values of `task` as a new pending row submitted at `now` (see TASK_INSERT_COLUMNS).

    Each value has the one Python type of its column (an int time becomes a float), so a
    batch of rows can travel as binary arrays (`row_set`'s `binary`).
    """
    timeout = task.timeout
    return (
        task.name,
        task.queue,
        task.payload,
        int(task.priority),
        "pending",
        task.idempotency_key,
        float(task.run_at),
        float(now),
        float(now),
        task.retry,
        None if timeout is None else float(timeout),
        task.resources,
        bool(task.protected),
    )


def _plain_success(outcome: Outcome) -> bool:
    """True for a success with nothing but its result to record (what most reports are)."""
    return (
        outcome.state is TaskState.SUCCEEDED
        and outcome.reason == "succeeded"
        and outcome.end_reason is None
        and outcome.error is None
        and outcome.error_kind is None
        and outcome.traceback is None
        and outcome.run_at is None
    )


def _due_queues(tasks: Sequence[NewTask], now: float) -> list[str]:
    return sorted({t.queue for t in tasks if t.run_at <= now})


def _match_keyless(inserted: Sequence[Row]) -> list[Submitted]:
    # Without keys every task was inserted, and ids ascend in input order.
    return [Submitted(row[0], created=True) for row in sorted(inserted)]


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    return chunks(items, size)


def _task_record(row: Row, history: tuple[TaskEvent, ...] = ()) -> TaskRecord:
    return TaskRecord(
        task_id=row[0],
        name=row[1],
        queue=row[2],
        payload=row[3],
        priority=row[4],
        state=TaskState(row[5]),
        end_reason=EndReason(row[6]) if row[6] else None,
        idempotency_key=row[7],
        run_at=row[8],
        created_at=row[9],
        updated_at=row[10],
        started_at=row[11],
        finished_at=row[12],
        attempts=row[13],
        retry=row[14],
        timeout=row[15],
        resources=row[16],
        protected=bool(row[17]),
        lease_owner=row[18],
        lease_expires_at=row[19],
        fencing_token=row[20],
        cancel_requested=bool(row[21]),
        result=row[22],
        error=row[23],
        error_kind=row[24],
        traceback=row[25],
        history=history,
    )


class ClaimRider(Protocol):
    """Statements about the tasks a claim takes, sent in the claim's last round trip.

    PostgreSQL only (`complete_and_claim` ignores a rider on SQLite, where a round trip costs
    nothing): the statements run in the claim's transaction, after the claim and before its
    COMMIT, so what they change commits with the claim. The workflow engine rides this way
    to mark the workflows of the run tasks it claims running.
    """

    def claim_statements(
        self, tasks: Sequence[tuple[int, str]], now: float
    ) -> Sequence[tuple[str, Sequence[Any]]]:
        """The statements to send for the tasks about to be claimed: (id, name) of each."""
        ...

    def claimed(self, results: Sequence[list[Row]], now: float) -> None:
        """The rows each statement returned, once the claim has committed."""
        ...


class TaskStore:
    """Tasks, leases, workers and queue limits on one `Database` (SQLite or PostgreSQL)."""

    @classmethod
    async def open(
        cls,
        url: str | StoreUrl = DEFAULT_STORE_URL,
        *,
        upgrade: bool = True,
        clock: Clock | None = None,
    ) -> TaskStore:
        """Connect to the store at `url`, first migrating it to the current schema if `upgrade`.

        `clock` lets the PostgreSQL backend mark its socket round trips as real I/O when the
        caller runs on simulated time.
        """
        store_url = url if isinstance(url, StoreUrl) else StoreUrl.parse(url)
        if upgrade:
            migrate.upgrade(store_url)
        if store_url.backend == "sqlite":
            return cls(SqliteDatabase(store_url.target))
        return cls(PostgresDatabase(store_url.target, clock=clock))

    async def close(self) -> None:
        """Finish the submits already handed over, then close the database connections."""
        await self.submit_group.drain()
        await self.database.close()

    def __init__(self, database: Database) -> None:
        self.database = database
        self._postgres = database.dialect == "postgresql"
        # Row locks only exist on PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes.
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if self._postgres else ""
        self._for_update = " FOR UPDATE" if self._postgres else ""
        self.submit_group: CommitGroup[_SubmitCall, list[Submitted]] = CommitGroup(
            self._submit_alone,
            self._submit_together,
            limit=SUBMIT_GROUP_LIMIT,
            size=lambda call: len(call[0]),
            name="submit",
        )
        """Group commit of concurrent submits; its `stats` count the transactions."""

    # ----------------------------------------------------------------- helpers

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return in_list(column, values, postgres=self._postgres)

    def _rows(
        self, types: Sequence[str], rows: Sequence[Sequence[Any]], *, binary: bool = False
    ) -> tuple[str, list[Any]]:
        return row_set(types, rows, postgres=self._postgres, binary=binary)

    async def _insert_events(
        self,
        tx: Transaction,
        events: Sequence[
            tuple[int, float, str | None, str, str, str | None, int | None, str | None]
        ],
    ) -> None:
        for chunk in _chunks(events, _ARRAY_CHUNK if self._postgres else _CHUNK // 8):
            table, params = self._rows(_EVENT_TYPES, chunk)
            await tx.execute(
                "INSERT INTO legato_task_events (task_id, at, from_state, to_state, reason, "
                f"worker_id, fencing_token, detail) SELECT * FROM {table}",
                params,
            )

    # ----------------------------------------------------------------- submit

    async def submit(self, tasks: Sequence[NewTask], now: float) -> list[Submitted]:
        """Insert `tasks` atomically; a task whose idempotency key exists is not added again.

        Returns one `Submitted` per input, in order: the new id, or the id of the task that
        already holds the key, with `created=False`. Up to `_SUBMIT_CHUNK` tasks go in one
        statement, which is its own transaction (one round trip on PostgreSQL, including the
        NOTIFY that wakes workers); larger batches run in one explicit transaction.

        Group commit: submits of this process that arrive while another one is in flight
        share the next transaction (up to SUBMIT_GROUP_LIMIT tasks; see `submit_group` and
        `legato.store.commit_groups`). Each call still gets its own ids, or its own error,
        and its tasks commit whole or not at all.
        """
        if not tasks:
            return []
        if len(tasks) > _SUBMIT_CHUNK:
            async with self.database.transaction() as tx:
                return await self.submit_in(tx, tasks, now)
        return await self.submit_group.submit((tasks, now))

    async def _submit_alone(self, call: _SubmitCall) -> list[Submitted]:
        tasks, now = call
        sql, params = self._insert_tasks([task_row(t, now) for t in tasks], _due_queues(tasks, now))
        inserted = await self.database.run(sql, params)
        if all(t.idempotency_key is None for t in tasks):
            return _match_keyless(inserted)
        return await self._match_submitted(self.database.run, tasks, inserted)

    async def _submit_together(self, calls: Sequence[_SubmitCall]) -> list[list[Submitted]]:
        # One statement for every call (its own transaction): each row keeps its caller's
        # `now`, and the NOTIFY names every due queue of the batch.
        rows = [task_row(t, now) for tasks, now in calls for t in tasks]
        due = sorted({q for tasks, now in calls for q in _due_queues(tasks, now)})
        sql, params = self._insert_tasks(rows, due)
        try:
            inserted = await self.database.run(sql, params)
        except StoreUnavailableError:
            raise  # the connection broke: nobody knows whether it committed
        except Exception as error:
            raise BatchRejected() from error  # the statement failed: nothing was written
        flat = [t for tasks, _ in calls for t in tasks]
        if all(t.idempotency_key is None for t in flat):
            submitted = _match_keyless(inserted)
        else:
            submitted = await self._match_submitted(self.database.run, flat, inserted)
        results: list[list[Submitted]] = []
        start = 0
        for tasks, _ in calls:
            results.append(submitted[start : start + len(tasks)])
            start += len(tasks)
        return results

    async def submit_in(
        self, tx: Transaction, tasks: Sequence[NewTask], now: float
    ) -> list[Submitted]:
        """`submit`, inside the caller's transaction: the tasks commit with the caller's work.

        This is the one way task rows are written: a workflow start or a schedule tick
        inserts its task here, so every insert has the same columns, idempotency rule and
        (on PostgreSQL) the NOTIFY that wakes workers, delivered when the caller commits.
        """
        if not tasks:
            return []
        due = _due_queues(tasks, now)
        inserted: list[Row] = []
        for index, chunk in enumerate(_chunks(tasks, _SUBMIT_CHUNK)):
            rows = [task_row(t, now) for t in chunk]
            sql, params = self._insert_tasks(rows, due if index == 0 else ())
            inserted += await tx.fetch(sql, params)
        return await self._match_submitted(tx.fetch, tasks, inserted)

    def _insert_tasks(
        self, rows: Sequence[Sequence[Any]], due: Sequence[str]
    ) -> tuple[str, list[Any]]:
        table, params = self._rows(TASK_INSERT_TYPES, rows, binary=True)
        # No event row for the submission: the task row itself (created_at) describes it, and
        # `get_task` puts it first in the history. `WHERE true` tells SQLite's parser that
        # ON CONFLICT belongs to the INSERT, not to the SELECT's join.
        insert = (
            f"INSERT INTO legato_tasks ({TASK_INSERT_COLUMNS}) "
            f"SELECT * FROM {table} WHERE true ON CONFLICT (idempotency_key) DO NOTHING "
            "RETURNING id, idempotency_key"
        )
        if not self._postgres:
            return insert, params
        if not due:
            return f"WITH ins AS ({insert}) SELECT id, idempotency_key FROM ins", params
        # The NOTIFY rides in the same statement: delivered at commit, no extra round trip.
        return (
            f"WITH ins AS ({insert}) SELECT ins.id, ins.idempotency_key FROM ins "
            "CROSS JOIN (SELECT pg_notify(?, ?)) AS notified",
            [*params, NOTIFY_CHANNEL, ",".join(due)],
        )

    async def _match_submitted(
        self,
        fetch: Callable[[str, Sequence[Any]], Awaitable[list[Row]]],
        tasks: Sequence[NewTask],
        inserted: Sequence[Row],
    ) -> list[Submitted]:
        # Ids come back ascending in VALUES order on both backends; keyless tasks take them
        # in turn, keyed ones by key. A key that inserted nothing belongs to an older task.
        ordered = sorted(inserted)
        keyless = iter([row[0] for row in ordered if row[1] is None])
        created = {row[1]: row[0] for row in ordered if row[1] is not None}
        missing = sorted(
            {t.idempotency_key for t in tasks if t.idempotency_key is not None} - created.keys()
        )
        existing: dict[str, int] = {}
        for chunk in _chunks(missing):
            where, params = self._in("idempotency_key", chunk)
            rows = await fetch(
                f"SELECT idempotency_key, id FROM legato_tasks WHERE {where}", params
            )
            existing.update({key: task_id for key, task_id in rows})
        results: list[Submitted] = []
        for task in tasks:
            key = task.idempotency_key
            if key is None:
                results.append(Submitted(next(keyless), created=True))
            elif key in created:
                results.append(Submitted(created.pop(key), created=True))
                existing[key] = results[-1].task_id
            else:
                results.append(Submitted(existing[key], created=False))
        return results

    # ----------------------------------------------------------------- claim

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_seconds: float,
        accept: Callable[[str], bool] | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Lease]:
        """Lease up to `limit` due tasks from `queues`, highest priority first, FIFO within.

        Queue concurrency limits and token buckets are enforced under a row lock on each
        limited queue, so they hold across every worker. `accept(resources_json)` is asked,
        in claim order, whether this worker can place each candidate (resource fit).
        `names`, when given, restricts the claim to tasks this worker can run.
        """
        if limit <= 0 or not queues:
            return []
        async with self.database.transaction(durable=False) as tx:
            limits = (await tx.fetch_many([self._limits_statement(queues)]))[0]
            return await self._claim(
                tx, limits, worker_id, queues, limit, now, lease_seconds, accept, names
            )

    def _limits_statement(self, queues: Sequence[str]) -> tuple[str, list[Any]]:
        where, params = self._in("name", queues)
        return (
            "SELECT name, concurrency_limit, rate_limit, burst, tokens, tokens_updated_at, "
            f"paused FROM legato_queues WHERE {where}" + self._for_update,
            params,
        )

    async def _claim(
        self,
        tx: Transaction,
        limits: Sequence[Row],
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_seconds: float,
        accept: Callable[[str], bool] | None,
        names: Sequence[str] | None,
        rider: ClaimRider | None = None,
    ) -> list[Lease]:
        """The claim, given the queues' limit rows (read and locked by the caller).

        Commits the transaction with its last statement (one round trip less): the caller
        must run nothing after it. `rider`'s statements (PostgreSQL) go in that round trip.
        """
        allowance: dict[str, int] = {}
        buckets: dict[str, float] = {}
        for name, concurrency, rate, burst, tokens, updated, paused in limits:
            room = limit
            if paused:
                room = 0
            if concurrency is not None:
                running = (
                    await tx.fetch(
                        "SELECT count(*) FROM legato_tasks WHERE state = 'running' AND queue = ?",
                        (name,),
                    )
                )[0][0]
                room = min(room, max(0, concurrency - running))
            if rate is not None:
                capacity = burst if burst is not None else max(1.0, rate)
                level = capacity if tokens is None else tokens
                level = min(capacity, level + max(0.0, now - (updated or now)) * rate)
                buckets[name] = level
                room = min(room, int(level))
            allowance[name] = room
        open_queues = [q for q in queues if allowance.get(q, limit) > 0]
        if not open_queues:
            return []
        # Look past the first `limit` rows so one full queue or one oversized task does not
        # hide placeable work behind it.
        window = limit if not allowance and accept is None else max(limit * 2, 16)
        # One indexed scan per queue, merged here: a single query over several queues
        # cannot walk the (queue, priority, id) index in order and would sort every due row.
        name_filter, name_params = ("", []) if names is None else self._in("name", names)
        if name_filter:
            name_filter = f" AND {name_filter}"
        candidates: list[Row] = []
        for rows in await tx.fetch_many(
            [
                (
                    "SELECT id, queue, resources, state, priority, name FROM legato_tasks "
                    f"WHERE state IN {_CLAIMABLE} AND queue = ? AND run_at <= ?{name_filter} "
                    "ORDER BY priority DESC, id LIMIT ?" + self._skip_locked,
                    (queue, now, *name_params, window),
                )
                for queue in open_queues
            ]
        ):
            candidates += rows
        if len(open_queues) > 1:
            candidates.sort(key=lambda row: (-row[4], row[0]))
        chosen: list[int] = []
        from_state: dict[int, str] = {}
        taken: dict[str, int] = {}
        names_of: dict[int, str] = {}
        for task_id, queue, resources, state, _, name in candidates:
            if len(chosen) >= limit:
                break
            if taken.get(queue, 0) >= allowance.get(queue, limit):
                continue
            if accept is not None and not accept(resources):
                continue
            chosen.append(task_id)
            names_of[task_id] = name
            from_state[task_id] = state
            taken[queue] = taken.get(queue, 0) + 1
        if not chosen:
            return []
        expires = now + lease_seconds
        table, params = self._rows(
            ("bigint", "text"), [(i, from_state[i]) for i in chosen], binary=True
        )
        update = (
            "UPDATE legato_tasks SET state = 'running', lease_owner = ?, lease_expires_at = ?, "
            "fencing_token = legato_tasks.fencing_token + 1, "
            "attempts = legato_tasks.attempts + 1, started_at = ?, updated_at = ?, "
            f"end_reason = NULL FROM {table} WHERE legato_tasks.id = v.column1 "
            "RETURNING legato_tasks.id, legato_tasks.name, legato_tasks.queue, "
            "legato_tasks.payload, legato_tasks.priority, legato_tasks.attempts, "
            "legato_tasks.fencing_token, legato_tasks.retry, legato_tasks.timeout, "
            "legato_tasks.resources, legato_tasks.protected, legato_tasks.idempotency_key"
        )
        bucket_updates = [
            (
                "UPDATE legato_queues SET tokens = ?, tokens_updated_at = ? WHERE name = ?",
                (buckets[name] - taken.get(name, 0), now, name),
            )
            for name in buckets
        ]
        if self._postgres:
            # The history rows ride in the same statement, and the bucket updates and the
            # COMMIT in the same round trip.
            # Read through the primary key whatever the table's statistics say (see ByKey).
            claim: tuple[str, Sequence[Any]] = (
                ByKey(
                    f"WITH c AS ({update}, v.column2 AS from_state), ev AS (INSERT INTO "
                    "legato_task_events (task_id, at, from_state, to_state, reason, worker_id, "
                    "fencing_token) SELECT c.id, ?, c.from_state, 'running', 'claimed', ?, "
                    "c.fencing_token FROM c) SELECT id, name, queue, payload, priority, attempts, "
                    "fencing_token, retry, timeout, resources, protected, idempotency_key FROM c"
                ),
                [worker_id, expires, now, now, *params, now, worker_id],
            )
        else:
            claim = (update, [worker_id, expires, now, now, *params])
        # The candidates were locked by this transaction (SKIP LOCKED): every chosen id is
        # claimed, so a rider may name them before the claim's rows come back.
        riding = (
            rider.claim_statements([(i, names_of[i]) for i in chosen], now)
            if rider is not None
            else ()
        )
        results = await tx.fetch_many([claim, *bucket_updates, *riding], commit=self._postgres)
        rows = results[0]
        if rider is not None:
            rider.claimed(results[len(results) - len(riding) :], now)
        position = {task_id: index for index, task_id in enumerate(chosen)}
        leases = sorted(
            (
                Lease(
                    task_id=row[0],
                    name=row[1],
                    queue=row[2],
                    payload=row[3],
                    priority=row[4],
                    attempt=row[5],
                    fencing_token=row[6],
                    lease_expires_at=expires,
                    retry=row[7],
                    timeout=row[8],
                    resources=row[9],
                    protected=bool(row[10]),
                    idempotency_key=row[11],
                )
                for row in rows
            ),
            key=lambda lease: position[lease.task_id],
        )
        if not self._postgres:
            await self._insert_events(
                tx,
                [
                    (
                        lease.task_id,
                        now,
                        from_state[lease.task_id],
                        "running",
                        "claimed",
                        worker_id,
                        lease.fencing_token,
                        None,
                    )
                    for lease in leases
                ],
            )
        return leases

    # ----------------------------------------------------------------- report

    async def complete(
        self, outcomes: Sequence[Outcome], worker_id: str | None, now: float
    ) -> list[bool]:
        """Apply `outcomes` in one transaction; return, per outcome, whether it was accepted.

        An outcome is accepted only while the task is running under the same fencing token;
        a stale one changes nothing (its entry is False).
        """
        if not outcomes:
            return []
        async with self.database.transaction(durable=False) as tx:
            return await self._complete(tx, outcomes, worker_id, now)

    async def complete_and_claim(
        self,
        outcomes: Sequence[Outcome],
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_seconds: float,
        accept: Callable[[str], bool] | None = None,
        names: Sequence[str] | None = None,
        rider: ClaimRider | None = None,
    ) -> tuple[list[bool], list[Lease]]:
        """`complete` then `claim` in one transaction: the worker's group commit.

        On PostgreSQL, `rider`'s statements about the claimed tasks commit with the claim.
        """
        claiming = limit > 0 and bool(queues)
        async with self.database.transaction(durable=False) as tx:
            # Completions and the queue limits travel together (one round trip on PostgreSQL).
            extra = [self._limits_statement(queues)] if claiming else []
            accepted, results = await self._complete_with(tx, outcomes, worker_id, now, extra)
            leases = (
                await self._claim(
                    tx,
                    results[0],
                    worker_id,
                    queues,
                    limit,
                    now,
                    lease_seconds,
                    accept,
                    names,
                    rider if self._postgres else None,
                )
                if claiming
                else []
            )
            return accepted, leases

    async def complete_one(self, outcome: Outcome, worker_id: str | None, now: float) -> None:
        """Apply one outcome; raise StaleLeaseError (changing nothing) if the lease is gone."""
        if not (await self.complete([outcome], worker_id, now))[0]:
            raise StaleLeaseError(outcome.task_id, outcome.fencing_token, worker_id=worker_id)

    async def _complete(
        self, tx: Transaction, outcomes: Sequence[Outcome], worker_id: str | None, now: float
    ) -> list[bool]:
        return (await self._complete_with(tx, outcomes, worker_id, now, ()))[0]

    async def _complete_with(
        self,
        tx: Transaction,
        outcomes: Sequence[Outcome],
        worker_id: str | None,
        now: float,
        extra: Sequence[tuple[str, Sequence[Any]]],
    ) -> tuple[list[bool], list[list[Row]]]:
        """Apply `outcomes`, then run the `extra` statements; on PostgreSQL all in one trip.

        Returns whether each outcome was accepted, and the rows of each extra statement.
        """
        statements: list[tuple[str, Sequence[Any]]] = []
        general: Sequence[Outcome] = outcomes
        if self._postgres:
            # Plain successes (nearly every report) take a narrower statement: three arrays
            # instead of eleven to encode, and nothing to COALESCE. Same row changes and
            # history as the general statement gives them.
            plain = [o for o in outcomes if _plain_success(o)]
            if plain:
                general = (
                    [o for o in outcomes if not _plain_success(o)]
                    if len(plain) < len(outcomes)
                    else ()
                )
                statements += [
                    self._succeeded_statement(chunk, worker_id, now)
                    for chunk in _chunks(plain, _ARRAY_CHUNK)
                ]
        # PostgreSQL takes one array per column, so any batch is one statement; SQLite's
        # VALUES list counts every value against its bound-parameter limit.
        for chunk in _chunks(general, _ARRAY_CHUNK if self._postgres else _CHUNK // 11):
            table, params = self._rows(
                _OUTCOME_TYPES,
                [
                    (
                        o.task_id,
                        o.fencing_token,
                        o.state.value,
                        o.end_reason.value if o.end_reason else None,
                        o.result,
                        o.error,
                        o.error_kind,
                        o.traceback,
                        None if o.run_at is None else float(o.run_at),
                        float(now) if o.state.terminal else None,
                        o.reason,
                    )
                    for o in chunk
                ],
                binary=True,
            )
            update = ByKey(
                "UPDATE legato_tasks SET state = v.column3, end_reason = v.column4, "
                "result = v.column5, error = COALESCE(v.column6, legato_tasks.error), "
                "error_kind = COALESCE(v.column7, legato_tasks.error_kind), "
                "traceback = COALESCE(v.column8, legato_tasks.traceback), "
                "run_at = COALESCE(v.column9, legato_tasks.run_at), finished_at = v.column10, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = ?, "
                "attempts = CASE WHEN v.column3 = 'pending' THEN legato_tasks.attempts - 1 "
                f"ELSE legato_tasks.attempts END FROM {table} "
                "WHERE legato_tasks.id = v.column1 AND legato_tasks.fencing_token = v.column2 "
                f"AND {running('legato_tasks')} "
                "RETURNING legato_tasks.id, legato_tasks.fencing_token"
            )
            if self._postgres:
                # The history rows ride in the same statement.
                statements.append(
                    (
                        ByKey(
                            f"WITH done AS ({update}, v.column3 AS to_state, "
                            "v.column11 AS reason, v.column6 AS detail), ev AS (INSERT INTO "
                            "legato_task_events (task_id, at, from_state, to_state, reason, "
                            "worker_id, fencing_token, detail) SELECT id, ?, 'running', "
                            "to_state, reason, ?, fencing_token, detail FROM done) "
                            "SELECT id, fencing_token FROM done"
                        ),
                        [now, *params, now, worker_id],
                    )
                )
            else:
                statements.append((update, [now, *params]))
        if self._postgres:
            results = await tx.fetch_many([*statements, *extra])
            updated, extra_rows = results[: len(statements)], results[len(statements) :]
        else:
            updated = await tx.fetch_many(statements)
        accepted_ids = {(row[0], row[1]) for rows in updated for row in rows}
        accepted = [(o.task_id, o.fencing_token) in accepted_ids for o in outcomes]
        if not self._postgres:
            await self._insert_events(
                tx,
                [
                    (
                        o.task_id,
                        now,
                        "running",
                        o.state.value,
                        o.reason,
                        worker_id,
                        o.fencing_token,
                        o.error,
                    )
                    for o, ok in zip(outcomes, accepted, strict=True)
                    if ok
                ],
            )
            extra_rows = await tx.fetch_many(extra)
        return accepted, extra_rows

    def _succeeded_statement(
        self, outcomes: Sequence[Outcome], worker_id: str | None, now: float
    ) -> tuple[str, Sequence[Any]]:
        """PostgreSQL: apply plain successes and write their history rows, in one statement."""
        table, params = self._rows(
            ("bigint", "bigint", "text"),
            [(o.task_id, o.fencing_token, o.result) for o in outcomes],
            binary=True,
        )
        return (
            ByKey(
                "WITH done AS (UPDATE legato_tasks SET state = 'succeeded', end_reason = NULL, "
                "result = v.column3, finished_at = ?, lease_owner = NULL, "
                f"lease_expires_at = NULL, updated_at = ? FROM {table} WHERE "
                "legato_tasks.id = v.column1 AND legato_tasks.fencing_token = v.column2 AND "
                f"{running('legato_tasks')} RETURNING legato_tasks.id, "
                "legato_tasks.fencing_token), ev AS (INSERT INTO legato_task_events (task_id, "
                "at, from_state, to_state, reason, worker_id, fencing_token, detail) "
                "SELECT id, ?, 'running', 'succeeded', 'succeeded', ?, fencing_token, NULL "
                "FROM done) SELECT id, fencing_token FROM done"
            ),
            [now, now, *params, now, worker_id],
        )

    async def heartbeat(
        self, worker_id: str, held: Mapping[int, int], now: float, lease_seconds: float
    ) -> HeartbeatReply:
        """Extend the leases in `held` ({task_id: fencing_token}) and the worker's heartbeat.

        The reply lists {task_id: cancel_requested} for every lease still held. A task missing
        from it was reaped or reassigned: the worker lost that lease and must stop it. Leases
        the worker does not list (say, claimed by a commit whose reply was lost) are not
        extended and expire on their own. `draining` tells the worker an operator drained it.
        """
        still_held: dict[int, bool] = {}
        async with self.database.transaction(durable=False) as tx:
            items = sorted(held.items())
            for chunk in _chunks(items, _ARRAY_CHUNK if self._postgres else _CHUNK):
                table, params = self._rows(("bigint", "bigint"), chunk, binary=True)
                rows = await tx.fetch(
                    ByKey(
                        f"UPDATE legato_tasks SET lease_expires_at = ? FROM {table} "
                        "WHERE legato_tasks.id = v.column1 AND "
                        f"legato_tasks.fencing_token = v.column2 AND {running('legato_tasks')} "
                        "RETURNING legato_tasks.id, legato_tasks.cancel_requested"
                    ),
                    [now + lease_seconds, *params],
                )
                still_held.update((row[0], bool(row[1])) for row in rows)
            states = await tx.fetch(
                "UPDATE legato_workers SET heartbeat_at = ? WHERE id = ? RETURNING state",
                (now, worker_id),
            )
        draining = bool(states) and states[0][0] == WorkerState.DRAINING.value
        return HeartbeatReply(leases=still_held, draining=draining)

    async def reap_expired(
        self,
        now: float,
        decide: Callable[[ExpiredLease], Outcome],
        reaper_id: str | None = None,
        limit: int = 500,
    ) -> list[Outcome]:
        """Settle running tasks whose lease expired before `now`; return what was applied.

        `decide` maps each expired lease to its next state (back to retrying with a delay,
        dead, or cancelled if a cancel was pending). All of one pass is one transaction.
        """
        async with self.database.transaction(durable=False) as tx:
            rows = await tx.fetch(
                "SELECT id, name, attempts, fencing_token, lease_owner, retry, protected, "
                "cancel_requested FROM legato_tasks WHERE state = 'running' AND "
                "lease_expires_at < ? ORDER BY lease_expires_at LIMIT ?" + self._skip_locked,
                (now, limit),
            )
            outcomes = [
                decide(
                    ExpiredLease(
                        task_id=row[0],
                        name=row[1],
                        attempt=row[2],
                        fencing_token=row[3],
                        lease_owner=row[4],
                        retry=row[5],
                        protected=bool(row[6]),
                        cancel_requested=bool(row[7]),
                    )
                )
                for row in rows
            ]
            accepted = await self._complete(tx, outcomes, reaper_id, now) if outcomes else []
        return [o for o, ok in zip(outcomes, accepted, strict=True) if ok]

    async def release_leases(self, worker_id: str, now: float) -> list[int]:
        """Hand every lease `worker_id` holds to the reaper now; return the task ids.

        For a worker the health policy evicted: its leases are made to expire at `now`, so
        the next reaper pass settles them by each task's retry policy (an attempt lost, as
        when any lease expires). The worker, if it still lives, finds them gone at its next
        heartbeat, and the fencing token rejects anything it reports for them.
        """
        async with self.database.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE legato_tasks SET lease_expires_at = ? WHERE lease_owner = ? AND "
                "state = 'running' AND lease_expires_at > ? RETURNING id, fencing_token",
                (now, worker_id, now),
            )
            released = sorted(rows)
            await self._insert_events(
                tx,
                [
                    (task_id, now, "running", "running", "lease_released", worker_id, token, None)
                    for task_id, token in released
                ],
            )
        return [task_id for task_id, _ in released]

    async def record_event(
        self, task_id: int, reason: str, now: float, worker_id: str | None, detail: str | None
    ) -> None:
        """Add a history note to a task without changing its state (e.g. a protected overrun)."""
        async with self.database.transaction() as tx:
            rows = await tx.fetch(
                "SELECT state, fencing_token FROM legato_tasks WHERE id = ?", (task_id,)
            )
            if rows:
                state, token = rows[0]
                await self._insert_events(
                    tx, [(task_id, now, state, state, reason, worker_id, token, detail)]
                )

    # ----------------------------------------------------------------- operate

    async def cancel(self, task_id: int, now: float) -> TaskState:
        """Cancel a task: at once if it waits, by request to its worker if it runs.

        Returns the state after the call (cancelled, or running with the request recorded,
        or the unchanged terminal state).
        """
        async with self.database.transaction() as tx:
            rows = await tx.fetch(
                "SELECT state, fencing_token FROM legato_tasks WHERE id = ?" + self._for_update,
                (task_id,),
            )
            if not rows:
                raise ValidationError("task_id", task_id, "the id of an existing task")
            state, token = TaskState(rows[0][0]), rows[0][1]
            if state in (TaskState.PENDING, TaskState.RETRYING):
                await tx.execute(
                    "UPDATE legato_tasks SET state = 'cancelled', end_reason = 'cancelled', "
                    "finished_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, task_id),
                )
                await self._insert_events(
                    tx, [(task_id, now, state.value, "cancelled", "cancelled", None, token, None)]
                )
                return TaskState.CANCELLED
            if state is TaskState.RUNNING:
                await tx.execute(
                    "UPDATE legato_tasks SET cancel_requested = TRUE, updated_at = ? WHERE id = ?",
                    (now, task_id),
                )
                await self._insert_events(
                    tx,
                    [(task_id, now, "running", "running", "cancel_requested", None, token, None)],
                )
            return state

    async def replay(self, task_ids: Sequence[int], now: float) -> list[int]:
        """Send dead or cancelled tasks back to pending with a fresh attempt budget.

        The task keeps its id, idempotency key and history. Returns the ids replayed; ids in
        any other state are left alone.
        """
        replayed: list[int] = []
        async with self.database.transaction() as tx:
            for chunk in _chunks(task_ids):
                where, params = self._in("id", chunk)
                rows = await tx.fetch(
                    "UPDATE legato_tasks SET state = 'pending', end_reason = NULL, attempts = 0, "
                    "run_at = ?, finished_at = NULL, cancel_requested = FALSE, updated_at = ? "
                    f"WHERE {where} AND state IN ('dead', 'cancelled') "
                    "RETURNING id, fencing_token",
                    [now, now, *params],
                )
                replayed += [row[0] for row in rows]
                await self._insert_events(
                    tx,
                    [
                        (row[0], now, None, "pending", "replayed", None, row[1], None)
                        for row in rows
                    ],
                )
        return sorted(replayed)

    async def purge(
        self, task_ids: Sequence[int] | None = None, *, before: float | None = None
    ) -> int:
        """Delete dead tasks (these ids, or all finished before `before`); return how many.

        Each task's history goes with it, in the same transaction.
        """
        deleted: list[int] = []
        async with self.database.transaction() as tx:
            if task_ids is not None:
                for chunk in _chunks(task_ids):
                    where, params = self._in("id", chunk)
                    rows = await tx.fetch(
                        f"DELETE FROM legato_tasks WHERE {where} AND state = 'dead' RETURNING id",
                        params,
                    )
                    deleted += [row[0] for row in rows]
            else:
                rows = await tx.fetch(
                    "DELETE FROM legato_tasks WHERE state = 'dead' AND finished_at < ? "
                    "RETURNING id",
                    (before if before is not None else float("inf"),),
                )
                deleted += [row[0] for row in rows]
            for chunk in _chunks(deleted):
                where, params = self._in("task_id", chunk)
                await tx.execute(ByKey(f"DELETE FROM legato_task_events WHERE {where}"), params)
        return len(deleted)

    # ----------------------------------------------------------------- read

    async def get_task(self, task_id: int, *, history: bool = True) -> TaskRecord | None:
        """Return one task, with its history events oldest first, or None."""
        async with self.database.transaction(write=False) as tx:
            rows = await tx.fetch(
                f"SELECT {_TASK_COLUMNS} FROM legato_tasks WHERE id = ?", (task_id,)
            )
            if not rows:
                return None
            events: tuple[TaskEvent, ...] = ()
            if history:
                event_rows = await tx.fetch(
                    "SELECT at, from_state, to_state, reason, worker_id, fencing_token, detail "
                    "FROM legato_task_events WHERE task_id = ? ORDER BY id",
                    (task_id,),
                )
                events = (
                    TaskEvent(
                        at=rows[0][9],
                        from_state=None,
                        to_state=TaskState.PENDING,
                        reason="submitted",
                        worker_id=None,
                        fencing_token=None,
                        detail=None,
                    ),
                    *(
                        TaskEvent(
                            at=r[0],
                            from_state=TaskState(r[1]) if r[1] else None,
                            to_state=TaskState(r[2]),
                            reason=r[3],
                            worker_id=r[4],
                            fencing_token=r[5],
                            detail=r[6],
                        )
                        for r in event_rows
                    ),
                )
        return _task_record(rows[0], events)

    async def list_tasks(
        self,
        *,
        states: Sequence[TaskState] = (),
        queue: str | None = None,
        name: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        limit: int = 100,
        after_id: int = 0,
        before_id: int | None = None,
        descending: bool = False,
    ) -> list[TaskRecord]:
        """Return tasks (without history) by id, filtered in SQL.

        Filters: any of `states`, `queue`, `name`, `created_after <= created_at <
        created_before`, and the id window `after_id < id < before_id` (the cursor). Oldest
        first, or newest first with `descending`.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValidationError("limit", limit, "an int >= 0")
        clauses = ["id > ?"]
        params: list[Any] = [after_id]
        if before_id is not None:
            clauses.append("id < ?")
            params.append(before_id)
        if states:
            where, values = self._in("state", [state.value for state in states])
            clauses.append(where)
            params += values
        for column, operator, value in (
            ("queue", "=", queue),
            ("name", "=", name),
            ("created_at", ">=", created_after),
            ("created_at", "<", created_before),
        ):
            if value is not None:
                clauses.append(f"{column} {operator} ?")
                params.append(value)
        order = "DESC" if descending else ""
        rows = await self.database.run(
            f"SELECT {_TASK_COLUMNS} FROM legato_tasks WHERE {' AND '.join(clauses)} "
            f"ORDER BY id {order} LIMIT ?",
            [*params, limit],
        )
        return [_task_record(row) for row in rows]

    async def count_by_state(self, queue: str | None = None) -> dict[TaskState, int]:
        """Return how many tasks are in each state (states with none are absent)."""
        where, params = ("WHERE queue = ?", [queue]) if queue is not None else ("", [])
        rows = await self.database.run(
            f"SELECT state, count(*) FROM legato_tasks {where} GROUP BY state", params
        )
        return {TaskState(state): count for state, count in rows}

    async def count_by_queue_and_state(self) -> dict[tuple[str, TaskState], int]:
        """Return how many tasks each queue holds in each state, in one query (absent: 0)."""
        rows = await self.database.run(
            "SELECT queue, state, count(*) FROM legato_tasks GROUP BY queue, state"
        )
        return {(queue, TaskState(state)): count for queue, state, count in rows}

    async def commit_horizon(self) -> float | None:
        """A mark of "now" for `commits_settled`: the server's clock, in epoch seconds.

        None on SQLite, where writers take turns (an event id becomes visible only after
        every lower id's transaction has committed or rolled back), so there is nothing to
        wait for.
        """
        if not self._postgres:
            return None
        rows = await self.database.run("SELECT extract(epoch FROM clock_timestamp())")
        return float(rows[0][0])

    async def commits_settled(self, horizon: float) -> bool:
        """True when no transaction that was open at `horizon` (from `commit_horizon`) is.

        A transaction holding an event id that is not visible yet began before a reader saw
        the higher ids around it; once every transaction begun by `horizon` has ended, a
        fresh read shows that id, or it was rolled back. PostgreSQL only (see
        `pg_stat_activity`; sessions of other roles whose start is hidden are not counted).
        """
        rows = await self.database.run(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL "
            "AND xact_start <= to_timestamp(?) + interval '1 millisecond'",
            (horizon,),
        )
        return int(rows[0][0]) == 0

    async def events_since(self, event_id: int, limit: int = 500) -> list[TaskChange]:
        """Return recorded transitions with ids above `event_id`, oldest first, at most `limit`.

        Submissions have no event (a new task row is one); read new tasks by id. On
        PostgreSQL ids are drawn before commit, so a later id can become visible before an
        earlier one: a reader that must not miss any keeps looking at gaps for a while
        (see `legato.service.watcher`).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError("limit", limit, "an int >= 1")
        rows = await self.database.run(
            "SELECT e.id, e.task_id, t.name, t.queue, t.attempts, t.run_at, e.at, "
            "e.from_state, e.to_state, e.reason, e.worker_id, e.fencing_token, e.detail "
            "FROM legato_task_events e JOIN legato_tasks t ON t.id = e.task_id "
            "WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (event_id, limit),
        )
        return [
            TaskChange(
                event_id=r[0],
                task_id=r[1],
                name=r[2],
                queue=r[3],
                attempts=r[4],
                run_at=r[5],
                event=TaskEvent(
                    at=r[6],
                    from_state=TaskState(r[7]) if r[7] else None,
                    to_state=TaskState(r[8]),
                    reason=r[9],
                    worker_id=r[10],
                    fencing_token=r[11],
                    detail=r[12],
                ),
            )
            for r in rows
        ]

    async def latest_event_id(self) -> int:
        """The highest event id recorded so far (0 when there is none)."""
        rows = await self.database.run("SELECT max(id) FROM legato_task_events")
        return int(rows[0][0] or 0)

    async def latest_task_id(self) -> int:
        """The highest task id so far (0 when there is none)."""
        rows = await self.database.run("SELECT max(id) FROM legato_tasks")
        return int(rows[0][0] or 0)

    # ----------------------------------------------------------------- queues

    async def set_queue(self, limits: QueueLimits) -> None:
        """Create or replace a queue's limits (a fresh bucket starts full)."""
        async with self.database.transaction() as tx:
            await tx.execute("DELETE FROM legato_queues WHERE name = ?", (limits.name,))
            await tx.execute(
                "INSERT INTO legato_queues (name, concurrency_limit, rate_limit, burst, tokens, "
                "tokens_updated_at, paused) VALUES (?, ?, ?, ?, NULL, NULL, ?)",
                (
                    limits.name,
                    limits.concurrency_limit,
                    limits.rate_limit,
                    limits.burst,
                    limits.paused,
                ),
            )

    # ----------------------------------------------------------------- workers

    async def register_worker(self, worker: WorkerRecord) -> None:
        """Insert a worker incarnation in the registry."""
        async with self.database.transaction() as tx:
            await tx.execute(
                "INSERT INTO legato_workers (id, host, pid, queues, resources, concurrency, "
                "version, state, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                # Idempotent, so a retry after a lost reply does not fail.
                "ON CONFLICT (id) DO NOTHING",
                (
                    worker.worker_id,
                    worker.host,
                    worker.pid,
                    json.dumps(list(worker.queues)),
                    worker.resources,
                    worker.concurrency,
                    worker.version,
                    worker.state,
                    worker.started_at,
                    worker.heartbeat_at,
                ),
            )

    async def set_worker_state(self, worker_id: str, state: WorkerState | str) -> bool:
        """Set a live worker's state ("active" or "draining"); False if it is unknown or stopped.

        A draining worker sees the flag at its next heartbeat: it claims nothing more, lets
        its running attempts finish, and deregisters. This works across processes and
        machines, since the flag lives in the store.
        """
        allowed = (WorkerState.ACTIVE.value, WorkerState.DRAINING.value)
        if state not in allowed:
            raise ValidationError("state", state, f"one of {', '.join(allowed)}")
        rows = await self.database.run(
            "UPDATE legato_workers SET state = ? WHERE id = ? AND state <> 'stopped' RETURNING id",
            (str(state), worker_id),
        )
        return bool(rows)

    async def deregister_worker(self, worker_id: str, now: float) -> None:
        """Mark a worker stopped after a clean shutdown."""
        async with self.database.transaction() as tx:
            await tx.execute(
                "UPDATE legato_workers SET state = 'stopped', stopped_at = ?, heartbeat_at = ? "
                "WHERE id = ?",
                (now, now, worker_id),
            )

    async def list_workers(self, *, include_stopped: bool = False) -> list[WorkerRecord]:
        """Return registered workers, oldest first."""
        where = "" if include_stopped else "WHERE state <> 'stopped'"
        async with self.database.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT id, host, pid, queues, resources, concurrency, version, state, "
                "started_at, heartbeat_at, stopped_at FROM legato_workers "
                f"{where} ORDER BY started_at",
            )
        return [
            WorkerRecord(
                worker_id=r[0],
                host=r[1],
                pid=r[2],
                queues=tuple(json.loads(r[3])),
                resources=r[4],
                concurrency=r[5],
                version=r[6],
                state=r[7],
                started_at=r[8],
                heartbeat_at=r[9],
                stopped_at=r[10],
            )
            for r in rows
        ]
