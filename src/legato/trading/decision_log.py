"""The decision log: every decision pipeline run, its model votes and its conflicts, stored.

`DecisionLog` keeps the audit trail of the coordinator on the store's `Database` (SQLite or
PostgreSQL, the tables of `legato.store.desk_schema`):

- `claim(record, votes)` writes a run's decision and its votes in one transaction, keyed by
  the run's idempotency key (symbol and bar time). A key already stored is not written
  again and `claim` returns False: that is how two runs for the same bar, in one process or
  several, never both trade.
- `record_conflict(...)` stores the conflicts found and how they were resolved.
- `finish(...)` stores how the run ended (its `PipelineStatus`), with the proposal, the
  risk decision and the execution intent id.
- `record_no_trade(record, votes)` keeps a run that ended without acting (HOLD, or nothing
  to do for the position held) in a batch, written in one transaction every
  `no_trade_batch` runs, before any query, and by `flush()` (and `close()`). Those runs
  can lead to no order, so the batch only trades audit durability for speed: a crash loses
  at most one batch of them, and replaying those bars decides (and stores) them again.
  `has(key)` sees the batch, so idempotency holds all the same.
- With `buffer_claims` (a backtest's fresh store, which no other process writes and no
  crash needs to be recovered from), claimed runs join that batch too and `finish` updates
  them there: a run is stored at the next batch write, not before it acts. A live desk
  leaves it off, so every run that may trade is stored before it acts. As nothing else
  writes that store, `has` answers from the keys the log has written once it has seen the
  decisions table empty, instead of asking the store each time. Conflicts are kept for
  that batch write too (in the order they were recorded, so they get the same row ids).

The query methods (`decisions`, `decision`, `votes`, `conflicts`, `by_correlation`) are what
the service and the dashboard show. A decision's `correlation_id` is the bus chain of the
run and its `intent_id` the execution manager's: together they lead from the signal to the
orders (docs/concepts/decisions.md shows how).
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from legato.kernel.errors import ValidationError
from legato.store import migrate
from legato.store.database import Database, Row, Transaction
from legato.store.postgres import PostgresDatabase
from legato.store.sql_batches import chunks, placeholders
from legato.store.sqlite import SqliteDatabase
from legato.store.url import DEFAULT_STORE_URL, StoreUrl
from legato.trading.agents.models import ModelDecision, TradeAction
from legato.trading.agents.records import slot_init
from legato.trading.conflicts import Conflict, ConflictKind, Resolution, ResolutionAction
from legato.trading.copies import RecordCopier

__all__ = [
    "ConflictRecord",
    "DecisionLog",
    "DecisionRecord",
    "PipelineStatus",
]


class PipelineStatus(enum.Enum):
    """How a decision pipeline run ended (CLAIMED while it is still running)."""

    CLAIMED = "claimed"  # decided and stored; the rest of the pipeline is under way
    NO_TRADE = "no_trade"  # HOLD, or nothing to do for the position held
    WAITED = "waited"  # a conflict resolved as WAIT
    ABORTED = "aborted"  # a conflict resolved as ABORT
    REJECTED = "rejected"  # the risk engine said no
    INVALID = "invalid"  # no valid proposal could be built (size or levels)
    EXECUTED = "executed"  # the executor reports the position protected
    FAILED = "failed"  # the executor reports failure
    CLOSE_REQUESTED = "close_requested"  # a CLOSE was handed to the position closer
    PAUSED = "paused"  # the symbol is paused: decided, not acted on


@slot_init
@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One stored decision pipeline run.

    `key` is the idempotency key ("SYMBOL@bar time"). `analysis` holds the technical and
    regime readings the decision was made on. `proposal` and `risk` are the JSON forms of
    the trade proposal and the risk decision, when the run got that far.
    """

    key: str
    symbol: str
    bar_time: datetime
    strategy: str
    correlation_id: str
    action: TradeAction
    leading_action: TradeAction
    consensus: float
    split: bool
    entry: Decimal | None
    stop: Decimal | None
    target: Decimal | None
    reasoning: str
    analysis: Mapping[str, Any]
    status: PipelineStatus
    created_at: datetime
    updated_at: datetime
    detail: str | None = None
    intent_id: str | None = None
    proposal: Mapping[str, Any] | None = None
    risk: Mapping[str, Any] | None = None


# A buffered claim's record is copied as its run ends: cheaper than `dataclasses.replace`.
_RECORDS = RecordCopier(DecisionRecord)


@dataclass(frozen=True, slots=True)
class ConflictRecord:
    """The conflicts of one run and their resolution."""

    key: str
    symbol: str
    conflicts: tuple[Conflict, ...]
    resolution: Resolution
    at: datetime


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _num(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


# What `json.dumps(value, sort_keys=True, default=str)` builds on every call, built once.
_ENCODER = json.JSONEncoder(sort_keys=True, default=str)


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else _ENCODER.encode(value)


_DECISION_COLUMNS = (
    "decision_key, symbol, bar_time, strategy, correlation_id, action, leading_action, "
    "consensus, split, entry, stop, target, reasoning, analysis, status, detail, intent_id, "
    "proposal, risk, created_at, updated_at"
)
_VOTE_COLUMNS = (
    "model, action, confidence, reasoning, fallback_reason, error, prompt_tokens, "
    "completion_tokens, cost"
)
_CONFLICT_COLUMNS = (
    "decision_key, symbol, conflicts, resolution, size_factor, reasoning, confidence, source, "
    "fallback_reason, prompt_tokens, completion_tokens, cost, created_at"
)


_VOTE_ROW = f"({placeholders(10)})"
_VOTES_PER_STATEMENT = 500
_DECISION_ROW = f"({placeholders(21)})"
_DECISIONS_PER_STATEMENT = 200
_CONFLICT_ROW = f"({placeholders(13)})"
_CONFLICTS_PER_STATEMENT = 200


@functools.cache
def _vote_insert(count: int) -> str:
    """The INSERT of `count` votes (a desk polls a fixed set of models, so few texts)."""
    rows = ", ".join(_VOTE_ROW for _ in range(count))
    return f"INSERT INTO legato_desk_votes (decision_key, {_VOTE_COLUMNS}) VALUES {rows}"


@functools.cache
def _decision_insert(count: int) -> str:
    """The INSERT of `count` decisions none of which is stored (a batch of new runs)."""
    rows = ", ".join(_DECISION_ROW for _ in range(count))
    return f"INSERT INTO legato_desk_decisions ({_DECISION_COLUMNS}) VALUES {rows}"


@functools.cache
def _conflict_insert(count: int) -> str:
    """The INSERT of `count` conflict rows (a batch of buffered ones, or a single one)."""
    rows = ", ".join(_CONFLICT_ROW for _ in range(count))
    return f"INSERT INTO legato_desk_conflicts ({_CONFLICT_COLUMNS}) VALUES {rows}"


def _conflict_params(record: ConflictRecord) -> tuple[Any, ...]:
    resolution = record.resolution
    conflicts = [
        {"kind": conflict.kind.value, "description": conflict.description}
        for conflict in record.conflicts
    ]
    return (
        record.key,
        record.symbol,
        json.dumps(conflicts),
        resolution.action.value,
        str(resolution.size_factor),
        resolution.reasoning,
        resolution.confidence,
        resolution.source,
        resolution.fallback_reason,
        resolution.prompt_tokens,
        resolution.completion_tokens,
        str(resolution.cost),
        record.at.timestamp(),
    )


# The rows read enum members' `_value_` (what `.value` returns without its Python-level
# property): every run stores a decision and its votes.
def _decision_params(record: DecisionRecord) -> tuple[Any, ...]:
    return (
        record.key,
        record.symbol,
        record.bar_time.timestamp(),
        record.strategy,
        record.correlation_id,
        record.action._value_,
        record.leading_action._value_,
        record.consensus,
        record.split,
        _text(record.entry),
        _text(record.stop),
        _text(record.target),
        record.reasoning,
        _json(record.analysis),
        record.status._value_,
        record.detail,
        record.intent_id,
        _json(record.proposal),
        _json(record.risk),
        record.created_at.timestamp(),
        record.updated_at.timestamp(),
    )


def _vote_params(votes: Sequence[tuple[str, ModelDecision]]) -> list[Any]:
    # The parameters of `_vote_insert(len(votes))`: each vote with its run's key.
    params: list[Any] = []
    for key, vote in votes:
        params.extend(
            (
                key,
                vote.model,
                vote.action._value_,
                vote.confidence,
                vote.reasoning,
                vote.fallback_reason,
                vote.error,
                vote.prompt_tokens,
                vote.completion_tokens,
                str(vote.cost),
            )
        )
    return params


def _decision_row(row: Row) -> DecisionRecord:
    return DecisionRecord(
        key=row[0],
        symbol=row[1],
        bar_time=_dt(row[2]),
        strategy=row[3],
        correlation_id=row[4],
        action=TradeAction(row[5]),
        leading_action=TradeAction(row[6]),
        consensus=float(row[7]),
        split=bool(row[8]),
        entry=_num(row[9]),
        stop=_num(row[10]),
        target=_num(row[11]),
        reasoning=row[12],
        analysis=json.loads(row[13]),
        status=PipelineStatus(row[14]),
        detail=row[15],
        intent_id=row[16],
        proposal=None if row[17] is None else json.loads(row[17]),
        risk=None if row[18] is None else json.loads(row[18]),
        created_at=_dt(row[19]),
        updated_at=_dt(row[20]),
    )


def _vote_row(row: Row) -> ModelDecision:
    return ModelDecision(
        model=row[0],
        action=TradeAction(row[1]),
        confidence=float(row[2]),
        reasoning=row[3],
        fallback_reason=row[4],
        error=row[5],
        prompt_tokens=int(row[6]),
        completion_tokens=int(row[7]),
        cost=Decimal(row[8]),
    )


def _conflict_row(row: Row) -> ConflictRecord:
    return ConflictRecord(
        key=row[0],
        symbol=row[1],
        conflicts=tuple(
            Conflict(ConflictKind(item["kind"]), item["description"]) for item in json.loads(row[2])
        ),
        resolution=Resolution(
            action=ResolutionAction(row[3]),
            size_factor=Decimal(row[4]),
            reasoning=row[5],
            confidence=float(row[6]),
            source=row[7],
            fallback_reason=row[8],
            prompt_tokens=int(row[9]),
            completion_tokens=int(row[10]),
            cost=Decimal(row[11]),
        ),
        at=_dt(row[12]),
    )


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError("limit", limit, "an integer >= 1")


class DecisionLog:
    """The stored decisions, votes and conflicts of the desk; times are the callers'.

    `no_trade_batch` is how many no-trade runs are kept before they are written together
    (1 writes each at once). `buffer_claims` batches claimed runs as well (see the module
    docstring: only for a store no other process writes, such as a backtest's).
    """

    __slots__ = (
        "_batch",
        "_batch_keys",
        "_buffer_claims",
        "_conflicts",
        "_database",
        "_found_rows",
        "_no_trade_batch",
        "_written",
    )

    def __init__(
        self, database: Database, *, no_trade_batch: int = 256, buffer_claims: bool = False
    ) -> None:
        if isinstance(no_trade_batch, bool) or not isinstance(no_trade_batch, int):
            raise ValidationError("no_trade_batch", no_trade_batch, "an integer >= 1")
        if no_trade_batch < 1:
            raise ValidationError("no_trade_batch", no_trade_batch, "an integer >= 1")
        self._database = database
        self._no_trade_batch = no_trade_batch
        self._buffer_claims = bool(buffer_claims)
        self._batch: list[tuple[DecisionRecord, Sequence[ModelDecision]]] = []
        # Each batched run's key and its place in the batch.
        self._batch_keys: dict[str, int] = {}
        # With `buffer_claims` only: the parameters of conflict rows not written yet.
        self._conflicts: list[tuple[Any, ...]] = []
        # With `buffer_claims` only, once the decisions table was seen empty: every key
        # stored since, all written by this log (no other writer), so `has` reads no row.
        self._written: set[str] | None = None
        self._found_rows = False

    @classmethod
    async def open(
        cls,
        url: str | StoreUrl = DEFAULT_STORE_URL,
        *,
        upgrade: bool = True,
        no_trade_batch: int = 256,
        buffer_claims: bool = False,
    ) -> DecisionLog:
        """Connect to the store at `url` (migrating it first if `upgrade`)."""
        store_url = url if isinstance(url, StoreUrl) else StoreUrl.parse(url)
        if upgrade:
            migrate.upgrade(store_url)
        database: Database
        if store_url.backend == "sqlite":
            database = SqliteDatabase(store_url.target)
        else:
            database = PostgresDatabase(store_url.target)
        return cls(database, no_trade_batch=no_trade_batch, buffer_claims=buffer_claims)

    @property
    def database(self) -> Database:
        """The database the log writes to."""
        return self._database

    async def close(self) -> None:
        """Write the no-trade batch, then close the database connection."""
        await self.flush()
        await self._database.close()

    # -- writes

    async def claim(self, record: DecisionRecord, votes: Sequence[ModelDecision]) -> bool:
        """Store `record` and its `votes`; False (nothing written) if its key is stored.

        With `buffer_claims`, the run joins the batch instead (False if its key is in it).
        """
        if record.key in self._batch_keys:
            return False
        if self._buffer_claims:
            return await self._keep(record, votes)
        async with self._database.transaction() as tx:
            return await self._insert(tx, record, votes)

    async def record_no_trade(self, record: DecisionRecord, votes: Sequence[ModelDecision]) -> bool:
        """Keep a run that ended without acting for the next batch write.

        False (nothing kept) if its key is already in the batch. See the module
        docstring for what batching these runs trades away.
        """
        # The caller checked `has` already (the coordinator does, under the symbol's lock); a
        # key another process stored meanwhile is skipped by the batch insert itself.
        if record.key in self._batch_keys:
            return False
        return await self._keep(record, votes)

    async def _keep(self, record: DecisionRecord, votes: Sequence[ModelDecision]) -> bool:
        self._batch_keys[record.key] = len(self._batch)
        self._batch.append((record, tuple(votes)))
        if len(self._batch) >= self._no_trade_batch:
            await self.flush()
        return True

    @property
    def batched(self) -> int:
        """How many no-trade runs wait for the next batch write."""
        return len(self._batch)

    async def flush(self) -> int:
        """Write the no-trade batch in one transaction; return how many runs it held.

        Buffered conflicts (with `buffer_claims`) are written in the same transaction.
        """
        if not self._batch and not self._conflicts:
            return 0
        batch = self._batch
        conflicts = self._conflicts
        async with self._database.transaction() as tx:
            if self._written is not None:
                # Every stored key is in `_written`: the others are new, inserted together.
                await self._insert_new(
                    tx, [run for run in batch if run[0].key not in self._written]
                )
            else:
                for record, votes in batch:
                    await self._insert(tx, record, votes)
            for chunk in chunks(conflicts, _CONFLICTS_PER_STATEMENT):
                params: list[Any] = []
                for row in chunk:
                    params.extend(row)
                await tx.execute(_conflict_insert(len(chunk)), params)
        if self._written is not None:
            self._written.update(self._batch_keys)
        # Cleared only once written: a failed write keeps the batch for the next try.
        self._batch = []
        self._batch_keys = {}
        self._conflicts = []
        return len(batch)

    @staticmethod
    async def _insert(
        tx: Transaction, record: DecisionRecord, votes: Sequence[ModelDecision]
    ) -> bool:
        inserted = await tx.fetch(
            f"INSERT INTO legato_desk_decisions ({_DECISION_COLUMNS}) VALUES {_DECISION_ROW} "
            "ON CONFLICT (decision_key) DO NOTHING RETURNING id",
            _decision_params(record),
        )
        if not inserted:
            return False
        # One statement for the votes (per `_VOTES_PER_STATEMENT`, which keeps SQLite under
        # its bound-parameter limit): a multi-row VALUES list inserts its rows in list order
        # on both backends, so the ids keep the polling order that `votes` reads back.
        for chunk in chunks(votes, _VOTES_PER_STATEMENT):
            await tx.execute(
                _vote_insert(len(chunk)), _vote_params([(record.key, vote) for vote in chunk])
            )
        return True

    @staticmethod
    async def _insert_new(
        tx: Transaction, runs: Sequence[tuple[DecisionRecord, Sequence[ModelDecision]]]
    ) -> None:
        """Insert runs none of whose keys is stored: the decisions, then all their votes.

        Multi-row VALUES lists insert in list order, so the ids are those `_insert` run by
        run would give (each table numbers its own rows).
        """
        for chunk in chunks(runs, _DECISIONS_PER_STATEMENT):
            params: list[Any] = []
            for record, _ in chunk:
                params.extend(_decision_params(record))
            await tx.execute(_decision_insert(len(chunk)), params)
        votes = [(record.key, vote) for record, run_votes in runs for vote in run_votes]
        for rows in chunks(votes, _VOTES_PER_STATEMENT):
            await tx.execute(_vote_insert(len(rows)), _vote_params(rows))

    async def record_conflict(self, record: ConflictRecord) -> None:
        """Store the conflicts of one run with their resolution.

        With `buffer_claims`, they wait for the next batch write (as the run's claim does).
        """
        params = _conflict_params(record)
        if self._buffer_claims:
            self._conflicts.append(params)
            return
        await self._execute(_conflict_insert(1), params)

    async def finish(
        self,
        key: str,
        status: PipelineStatus,
        at: datetime,
        *,
        detail: str | None = None,
        intent_id: str | None = None,
        proposal: Mapping[str, Any] | None = None,
        risk: Mapping[str, Any] | None = None,
    ) -> None:
        """Store how run `key` ended; fields left None keep what is stored."""
        index = self._batch_keys.get(key)
        if index is not None:
            # A buffered claim: updated where it waits, as the UPDATE would update the row.
            record, votes = self._batch[index]
            self._batch[index] = (
                _RECORDS.copy(
                    record,
                    {
                        "status": status,
                        "detail": record.detail if detail is None else detail,
                        "intent_id": record.intent_id if intent_id is None else intent_id,
                        "proposal": record.proposal if proposal is None else proposal,
                        "risk": record.risk if risk is None else risk,
                        "updated_at": at,
                    },
                ),
                votes,
            )
            return
        await self._execute(
            "UPDATE legato_desk_decisions SET status = ?, detail = COALESCE(?, detail), "
            "intent_id = COALESCE(?, intent_id), proposal = COALESCE(?, proposal), "
            "risk = COALESCE(?, risk), updated_at = ? WHERE decision_key = ?",
            (status.value, detail, intent_id, _json(proposal), _json(risk), at.timestamp(), key),
        )

    async def _execute(self, sql: str, params: Sequence[Any]) -> None:
        # `Database.run` fetches rows, which PostgreSQL refuses for a statement without any.
        async with self._database.transaction() as tx:
            await tx.execute(sql, params)

    # -- queries (what the service exposes)

    async def has(self, key: str) -> bool:
        """True when a run with this idempotency key is stored (or in the no-trade batch)."""
        if key in self._batch_keys:
            return True
        if self._buffer_claims and self._written is None and not self._found_rows:
            if await self._database.run("SELECT 1 FROM legato_desk_decisions LIMIT 1"):
                self._found_rows = True  # stored by someone before: ask the store
            else:
                self._written = set()
        if self._written is not None:
            return key in self._written
        rows = await self._database.run(
            "SELECT 1 FROM legato_desk_decisions WHERE decision_key = ?", (key,)
        )
        return bool(rows)

    async def decision(self, key: str) -> DecisionRecord | None:
        """The run with this idempotency key, or None."""
        await self.flush()
        rows = await self._database.run(
            f"SELECT {_DECISION_COLUMNS} FROM legato_desk_decisions WHERE decision_key = ?",
            (key,),
        )
        return _decision_row(rows[0]) if rows else None

    async def decisions(
        self,
        *,
        symbol: str | None = None,
        status: PipelineStatus | None = None,
        limit: int = 100,
    ) -> list[DecisionRecord]:
        """The latest `limit` runs (of one symbol, of one status), newest first."""
        await self.flush()
        _check_limit(limit)
        clauses: list[str] = []
        params: list[Any] = []
        if symbol is not None:
            clauses.append("symbol = ?")
            params.append(symbol)
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._database.run(
            f"SELECT {_DECISION_COLUMNS} FROM legato_desk_decisions{where} "
            "ORDER BY bar_time DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [_decision_row(row) for row in rows]

    async def by_correlation(self, correlation_id: str) -> DecisionRecord | None:
        """The run whose bus messages carry `correlation_id`, or None."""
        await self.flush()
        rows = await self._database.run(
            f"SELECT {_DECISION_COLUMNS} FROM legato_desk_decisions WHERE correlation_id = ?",
            (correlation_id,),
        )
        return _decision_row(rows[0]) if rows else None

    async def votes(self, key: str) -> list[ModelDecision]:
        """The model votes of run `key`, in polling order."""
        await self.flush()
        rows = await self._database.run(
            f"SELECT {_VOTE_COLUMNS} FROM legato_desk_votes WHERE decision_key = ? ORDER BY id",
            (key,),
        )
        return [_vote_row(row) for row in rows]

    async def conflicts(
        self, *, symbol: str | None = None, key: str | None = None, limit: int = 100
    ) -> list[ConflictRecord]:
        """The latest `limit` conflict resolutions (of one symbol or run), newest first."""
        if self._conflicts:
            await self.flush()
        _check_limit(limit)
        clauses: list[str] = []
        params: list[Any] = []
        if symbol is not None:
            clauses.append("symbol = ?")
            params.append(symbol)
        if key is not None:
            clauses.append("decision_key = ?")
            params.append(key)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._database.run(
            f"SELECT {_CONFLICT_COLUMNS} FROM legato_desk_conflicts{where} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [_conflict_row(row) for row in rows]
