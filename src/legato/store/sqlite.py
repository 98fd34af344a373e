"""The embedded backend: stdlib sqlite3 in WAL mode.

Statements run synchronously on the event loop thread. A SQLite statement on a local file
takes microseconds, far less than a hop to a thread, and keeping them on the loop means
simulated time never jumps while a statement runs. `BEGIN IMMEDIATE` takes the write lock
up front, so a claim's read and update form one atomic step across processes; a busy
database waits up to `busy_timeout` (blocking this loop meanwhile, which is why lease
timeouts must stay well above it).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from legato.store.database import Row, until_free
from legato.store.errors import StoreUnavailableError

__all__ = ["SqliteDatabase"]

# sqlite3 binds an exact int, float, str or bytes directly; any other parameter (None, a
# bool) goes through its adaptation protocol first, which, with no adapter registered,
# looks up `__adapt__` and `__conform__` and builds and clears an AttributeError for each.
# Stored rows are full of NULLs and flags: with these two adapters the lookup finds its
# answer at once. They bind exactly what sqlite3 binds without them (NULL, and the integer
# 0 or 1), so no value changes; they are process-wide, as sqlite3's adapters are.
sqlite3.register_adapter(type(None), lambda value: value)
sqlite3.register_adapter(bool, int)


class _SqliteTransaction:
    __slots__ = ("_connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run `sql` in this transaction and return every row."""
        return self._connection.execute(sql, params).fetchall()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run `sql` in this transaction and discard any rows."""
        self._connection.execute(sql, params)

    async def fetch_many(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, commit: bool = False
    ) -> list[list[Row]]:
        """Run `statements` in order and return each one's rows (the block commits at its end).

        `commit` is the caller's promise that nothing more runs; SQLite has no round trips
        to save, so the commit simply happens when the transaction block ends.
        """
        return [self._connection.execute(sql, params).fetchall() for sql, params in statements]


class SqliteDatabase:
    """One sqlite3 connection to a WAL-mode file, shared by the tasks of one event loop."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self._path = path
        self._connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
        self._connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives any process crash (kill -9); only an OS crash or power
        # loss can drop the last commits. That is the durability contract of the embedded mode.
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA foreign_keys=ON")
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def dialect(self) -> str:
        """Always 'sqlite'."""
        return "sqlite"

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @asynccontextmanager
    async def transaction(
        self, *, write: bool = True, durable: bool = True
    ) -> AsyncIterator[_SqliteTransaction]:
        """Open a transaction (`BEGIN IMMEDIATE` for writes); commit or roll back at the end.

        `durable` changes nothing here: in WAL mode with synchronous=NORMAL every commit
        survives a process crash, and none waits for an fsync.
        """
        async with self._lock:
            self._check_open()
            try:
                self._connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as error:
                raise StoreUnavailableError(f"sqlite: {error}", path=self._path) from error
            try:
                yield _SqliteTransaction(self._connection)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            else:
                try:
                    self._connection.execute("COMMIT")
                except sqlite3.OperationalError as error:
                    self._connection.execute("ROLLBACK")
                    raise StoreUnavailableError(f"sqlite: {error}", path=self._path) from error

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement in autocommit mode (a statement is atomic on its own)."""
        async with self._lock:
            self._check_open()
            try:
                return self._connection.execute(sql, params).fetchall()
            except sqlite3.OperationalError as error:
                raise StoreUnavailableError(f"sqlite: {error}", path=self._path) from error

    async def idle(self) -> None:
        """Return once no transaction holds the connection (at once if none does)."""
        await until_free(self._lock)

    async def notifications(self, channel: str) -> AsyncIterator[str]:
        """SQLite has no cross-process notifications: this yields nothing and never ends."""
        await asyncio.Event().wait()
        yield ""  # pragma: no cover - unreachable, makes this an async generator

    async def notify(self, channel: str, payload: str) -> None:
        """Nothing to do: same-process workers are woken by the orchestrator itself."""

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError("sqlite: the store is closed", path=self._path)

    async def close(self) -> None:
        """Close the connection; later calls raise StoreUnavailableError."""
        self._closed = True
        self._connection.close()
