"""The shared backend: PostgreSQL through psycopg 3's async connections.

One connection serves the transactions of one event loop in turn (a worker's claims,
completions and heartbeats are batched, so one connection is plenty); a second one,
opened on demand, LISTENs for new-task notifications. A broken connection surfaces as
`StoreUnavailableError` and is reopened by the next transaction, so callers only need to
back off and try again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql as pgsql

from legato.kernel.clock import Clock
from legato.kernel.simulation import SimulatedClock
from legato.store.database import ByKey, Row, until_free
from legato.store.errors import StoreUnavailableError

__all__ = ["PostgresDatabase"]

# Errors after which the same transaction, tried again later, may well succeed.
_TRANSIENT = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.AdminShutdown,
)

# Around a ByKey statement: sequential scans off for it alone, then back to the session's
# setting for whatever follows in the same transaction.
_NO_SEQSCAN = "SET LOCAL enable_seqscan = off"
_SEQSCAN_AS_BEFORE = "SET LOCAL enable_seqscan TO DEFAULT"


def _placeholders(sql: str, cache: dict[str, str]) -> str:
    translated = cache.get(sql)
    if translated is None:
        translated = cache[sql] = sql.replace("?", "%s")
    return translated


class _PostgresTransaction:
    """Statements of one transaction; BEGIN travels with the first of them.

    Opening the transaction costs no round trip of its own: the BEGIN (and the SET of a
    non-durable one) waits to be pipelined with the first statement, and `fetch_many` sends
    a list of statements, and optionally the COMMIT, in one round trip (libpq pipeline mode).
    """

    __slots__ = ("_cache", "_connection", "_opening", "_seqscan_off", "committed")

    def __init__(
        self,
        connection: psycopg.AsyncConnection[Any],
        cache: dict[str, str],
        opening: Sequence[str],
    ) -> None:
        self._connection = connection
        self._cache = cache
        self._opening = list(opening)
        self._seqscan_off = False
        self.committed = False

    @property
    def started(self) -> bool:
        """True once BEGIN has been sent."""
        return not self._opening

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run `sql` in this transaction and return every row."""
        return (await self.fetch_many([(sql, params)]))[0]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run `sql` in this transaction and discard any rows."""
        await self.fetch_many([(sql, params)])

    async def fetch_many(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, commit: bool = False
    ) -> list[list[Row]]:
        """Run `statements` in order, in one round trip; return each one's rows.

        With `commit`, the COMMIT goes in the same round trip and nothing more may run.
        """
        if self.committed:
            raise RuntimeError("this transaction already committed")
        # (sql, params, rows wanted): psycopg prepares a statement once it is used often.
        queue: list[tuple[str, Sequence[Any], bool]] = [(sql, (), False) for sql in self._opening]
        # Sequential scans go off before a ByKey statement and back on before the next
        # other statement: a run of ByKey statements shares one switch, and one that ends
        # the transaction needs no switch back.
        seqscan_off = self._seqscan_off
        for sql, params in statements:
            by_key = isinstance(sql, ByKey)
            if by_key != seqscan_off:
                queue.append((_NO_SEQSCAN if by_key else _SEQSCAN_AS_BEFORE, (), False))
                seqscan_off = by_key
            queue.append((_placeholders(sql, self._cache), params, True))
        self._seqscan_off = seqscan_off
        if commit:
            queue.append(("COMMIT", (), False))
        self._opening = []
        connection = self._connection
        if not queue:
            return []
        if len(queue) == 1:
            sql, params, _ = queue[0]
            cursor = await connection.execute(sql, params)
            rows = await cursor.fetchall() if cursor.description is not None else []
            self.committed = commit
            return [rows]
        cursors = []
        async with connection.pipeline():
            for sql, params, wanted in queue:
                cursor = connection.cursor()
                await cursor.execute(sql, params)
                if wanted:
                    cursors.append(cursor)
        self.committed = commit
        return [
            await cursor.fetchall() if cursor.description is not None else [] for cursor in cursors
        ]


class PostgresDatabase:
    """A lazily (re)opened psycopg connection to one PostgreSQL database."""

    def __init__(self, dsn: str, *, clock: Clock | None = None) -> None:
        self._dsn = dsn
        self._clock = clock
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._cache: dict[str, str] = {}

    @property
    def dialect(self) -> str:
        """Always 'postgresql'."""
        return "postgresql"

    def _real_io(self) -> AbstractAsyncContextManager[None]:
        # On simulated time a socket round trip is invisible to the loop, which would jump
        # virtual time past it; mark it so the clock stands still until the reply is in.
        if isinstance(self._clock, SimulatedClock):
            return self._clock.real_io()
        return contextlib.nullcontext()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._connection is None or self._connection.closed:
            try:
                # Autocommit: single statements commit on their own (one round trip), and
                # transaction() brackets multi-statement work with BEGIN/COMMIT.
                self._connection = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            except psycopg.Error as error:
                raise StoreUnavailableError(f"postgresql: cannot connect: {error}") from error
        return self._connection

    @asynccontextmanager
    async def transaction(
        self, *, write: bool = True, durable: bool = True
    ) -> AsyncIterator[_PostgresTransaction]:
        """Open a transaction on the shared connection; commit or roll back at the end.

        With `durable=False` the commit does not wait for the WAL flush (synchronous_commit
        off for this transaction only): about a millisecond less per commit, at the price
        of possibly forgetting it if the server itself crashes.
        """
        async with self._lock, self._real_io():
            connection = await self._connect()
            try:
                opening = ["BEGIN"] if durable else ["BEGIN", "SET LOCAL synchronous_commit = off"]
                transaction = _PostgresTransaction(connection, self._cache, opening)
                try:
                    yield transaction
                except BaseException:
                    if transaction.started:
                        await self._roll_back(connection)
                    raise
                if transaction.started and not transaction.committed:
                    await connection.execute("COMMIT")
            except _TRANSIENT as error:
                if connection.broken or connection.closed:
                    self._connection = None
                raise StoreUnavailableError(f"postgresql: {error}") from error

    async def _roll_back(self, connection: psycopg.AsyncConnection[Any]) -> None:
        # If even ROLLBACK fails (a query cut off mid-flight, a dead socket), drop the
        # connection: the server rolls back on disconnect and the next call reconnects.
        try:
            if not (connection.broken or connection.closed):
                await connection.execute("ROLLBACK")
                return
        except psycopg.Error:
            pass
        self._connection = None
        with contextlib.suppress(psycopg.Error):
            await connection.close()

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement as its own transaction (autocommit) and return its rows."""
        if isinstance(sql, ByKey):
            # Its setting needs a transaction to live in: BEGIN, SET, it, COMMIT, one trip.
            async with self.transaction() as transaction:
                return (await transaction.fetch_many([(sql, params)], commit=True))[0]
        async with self._lock, self._real_io():
            connection = await self._connect()
            try:
                cursor = await connection.execute(_placeholders(sql, self._cache), params)
                return await cursor.fetchall()
            except _TRANSIENT as error:
                if connection.broken or connection.closed:
                    self._connection = None
                raise StoreUnavailableError(f"postgresql: {error}") from error

    async def idle(self) -> None:
        """Return once no transaction holds the connection (at once if none does)."""
        await until_free(self._lock)

    async def notifications(self, channel: str) -> AsyncIterator[str]:
        """LISTEN on `channel` on a dedicated connection and yield each payload.

        Raises StoreUnavailableError when the connection breaks; call again to resume.
        """
        try:
            async with self._real_io():
                connection = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        except psycopg.Error as error:
            raise StoreUnavailableError(f"postgresql: cannot connect: {error}") from error
        try:
            async with self._real_io():
                await connection.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
            async for notice in connection.notifies():
                yield notice.payload
        except _TRANSIENT as error:
            raise StoreUnavailableError(f"postgresql listener: {error}") from error
        finally:
            await connection.close()

    async def notify(self, channel: str, payload: str) -> None:
        """NOTIFY `channel` with `payload` (delivered to listeners at commit)."""
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_notify(?, ?)", (channel, payload))

    async def backend_pids(self) -> list[int]:
        """Return the server process ids serving this object's open connections."""
        return [] if self._connection is None else [self._connection.info.backend_pid]

    async def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
