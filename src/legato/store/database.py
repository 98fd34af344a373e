"""The driver seam: one small async interface over sqlite3 and psycopg.

The task store writes its hot-path SQL once, with `?` placeholders, against this
interface; each backend translates what differs (placeholders, row locks, casts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

__all__ = ["CustomPlan", "Database", "Row", "Transaction"]

Row = tuple[Any, ...]


class CustomPlan(str):
    """SQL that PostgreSQL plans for its parameters on every run, never from a cached plan.

    psycopg prepares a statement on the server after a few runs, and PostgreSQL then may
    switch to one generic plan for all parameters, chosen with the statistics of that
    moment. A worker's claim, which joins `legato_tasks` to a batch of ids, first runs while
    the table is small, where a sequential scan is the cheapest generic plan; that plan can
    stay cached on the long-lived connection as the table grows (until an ANALYZE, which a
    server without autovacuum never runs), and each claim then scans every row and dead row
    version: measured at 30-50 ms a claim after 30,000 tasks, on most benchmark runs here.
    Planned for its parameters, it reads the few rows it names through the primary key. The
    planning costs a fraction of a millisecond a run, which is why only the claim does this
    (marking the completions and the heartbeat too measured slower overall); SQLite has no
    plan cache to avoid.
    """

    __slots__ = ()


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

    def notifications(self, channel: str) -> AsyncIterator[str]:
        """Yield payloads published on `channel` by other processes (PostgreSQL only)."""
        ...

    async def notify(self, channel: str, payload: str) -> None:
        """Publish `payload` on `channel` to listeners in other processes, if supported."""
        ...

    async def close(self) -> None:
        """Close every connection; the object cannot be used afterwards."""
        ...
