"""The driver seam: one small async interface over sqlite3 and psycopg.

The task store writes its hot-path SQL once, with `?` placeholders, against this
interface; each backend translates what differs (placeholders, row locks, casts).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

__all__ = ["ByKey", "Database", "Row", "Transaction", "until_free"]

Row = tuple[Any, ...]


class ByKey(str):
    """SQL that names its rows by key (a batch of ids): PostgreSQL must not scan the table.

    The worker's batch statements join a table to a list of ids. PostgreSQL picks their plan
    from the table's statistics, which a table that was never analyzed (a new store, or any
    store on a server without autovacuum) does not have: it then estimates the table's
    rows from its pages and, while the table is a few thousand rows, finds a sequential
    scan cheaper than one index lookup per id. Measured on the workflow benchmark: about
    three in four claims and workflow updates scanned the whole table, 1-3 ms each, and
    the cost grows with the table until an ANALYZE; once psycopg has prepared such a
    statement, a generic plan chosen while the table was small can stay cached on the
    long-lived connection (30-50 ms a claim after 30,000 tasks, measured before this).
    The backend runs a `ByKey` statement with sequential scans disabled for that statement
    alone, so it reads the rows it names through their index, planned or cached alike.
    SQLite plans by its indexes without statistics and has nothing to change.
    """

    __slots__ = ()


async def until_free(lock: asyncio.Lock) -> None:
    """Return once `lock` is free: its holder, and whoever queued before us, let it go."""
    while lock.locked():
        async with lock:
            pass


class Transaction(Protocol):
    """Statements run inside one database transaction: all of them take effect, or none."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run `sql` and return every row it produced."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run `sql` and discard any rows."""
        ...

    async def fetch_many(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, commit: bool = False
    ) -> list[list[Row]]:
        """Run `statements` in order and return each one's rows.

        Where the backend can (PostgreSQL's pipeline mode), they travel in one round trip.
        With `commit`, the transaction commits right after them, in that same round trip:
        nothing more may run in it.
        """
        ...


class Database(Protocol):
    """A connection to one Legato store, handing out transactions one at a time."""

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        ...

    def transaction(
        self, *, write: bool = True, durable: bool = True
    ) -> AbstractAsyncContextManager[Transaction]:
        """Open a transaction; commit when the block ends, roll back if it raises.

        `durable=False` allows the commit to return before it is flushed to disk, where the
        backend supports it: a server crash may then forget it. Only for changes that are
        safe to lose (a lost claim or completion means the task runs again).
        """
        ...

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement as its own (durable) transaction and return its rows."""
        ...

    async def idle(self) -> None:
        """Return once no transaction holds the connection (at once if none does).

        A caller about to queue a write behind the one in flight can wait here instead and
        then take, in one batch, what arrived meanwhile.
        """
        ...

    def notifications(self, channel: str) -> AsyncIterator[str]:
        """Yield payloads published on `channel` by other processes (PostgreSQL only)."""
        ...

    async def notify(self, channel: str, payload: str) -> None:
        """Publish `payload` on `channel` to listeners in other processes, if supported."""
        ...

    async def close(self) -> None:
        """Close every connection; the object cannot be used afterwards."""
        ...
