"""Group commit for the store's own writes: concurrent callers share one transaction.

A durable commit on PostgreSQL waits for the WAL flush, and one connection serves a
process's transactions one at a time. When many tasks of one process submit at the same
moment, each waiting its turn for its own commit, the commits set the pace, not the work.
A `CommitGroup` coalesces them:

- A caller that finds nothing in flight writes alone, at once, in its own task: a lone
  caller waits for nobody and pays nothing extra.
- Callers that arrive while a write is in flight queue up. When it ends, a flush task
  takes the queue (oldest first, up to `limit` items' worth) and writes it as one
  transaction; callers arriving meanwhile form the next batch. No timer waits for a batch
  to fill.
- Each caller gets its own result. When the database refuses a batch as a whole (the
  batch writer raises `BatchRejected`: nothing of it was written), each item is written
  again in its own transaction, so exactly the bad ones fail. Any other error (a broken
  connection, whose outcome nobody knows) fails every item of that batch, as it would
  have failed each of them written alone.
- A caller cancelled while queued leaves the queue: nothing of it is written. One
  cancelled while its batch is in flight does not disturb the batch, since the flush runs
  in the group's own task, which no caller's cancellation reaches.

The flush task belongs to the group: it only lives while there is a queue, `drain()` waits
for it, and whatever it fails to write is reported to the callers whose items it held.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from legato.kernel.errors import ValidationError
from legato.store.errors import StoreUnavailableError

__all__ = ["BatchRejected", "CommitGroup", "CommitGroupStats"]

T = TypeVar("T")
R = TypeVar("R")


class BatchRejected(Exception):
    """Raised by a batch writer: the database refused the whole batch and wrote nothing.

    The group then writes each item in its own transaction. Raise it from the original
    error (`raise BatchRejected() from error`); it never reaches a caller.
    """


@dataclass(slots=True)
class CommitGroupStats:
    """What a `CommitGroup` has done so far (counters only ever grow)."""

    calls: int = 0
    """Writes asked for."""
    transactions: int = 0
    """Write transactions sent: alone, grouped, and item by item after a rejection."""
    batches: int = 0
    """Transactions that carried the writes of two or more callers."""
    batched_calls: int = 0
    """Writes that travelled in such a shared transaction."""
    rejected: int = 0
    """Shared transactions the database refused whole (then written item by item)."""
    largest: int = 0
    """Most callers' writes in one transaction."""


@dataclass(slots=True, eq=False)
class _Waiter(Generic[T]):
    item: T
    weight: int
    future: asyncio.Future[object]


class CommitGroup(Generic[T, R]):
    """Coalesces concurrent `submit(item)` calls into shared transactions.

    `write_one(item)` writes one item in its own transaction; `write_many(items)` writes
    several in one transaction and returns one result per item, in order (or raises
    `BatchRejected`). `size(item)` is an item's weight against `limit` (1 by default; a
    batch submit weighs its number of tasks); an item heavier than `limit` is written
    alone. `on_flush`, when set, is called with the items of each transaction just before
    it is sent (for tests and metrics).
    """

    def __init__(
        self,
        write_one: Callable[[T], Awaitable[R]],
        write_many: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        limit: int,
        size: Callable[[T], int] | None = None,
        name: str = "writes",
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError("limit", limit, "an int >= 1")
        self._write_one = write_one
        self._write_many = write_many
        self._limit = limit
        self._size = size
        self._name = name
        self._queue: deque[_Waiter[T]] = deque()
        self._busy = False
        self._unshared = 0  # writes too big to share, in flight outside the group
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = CommitGroupStats()
        self.on_flush: Callable[[Sequence[T]], None] | None = None

    async def submit(self, item: T) -> R:
        """Write `item`, alone or with concurrent writes; return its own result or error."""
        if self._closing:
            raise StoreUnavailableError(f"{self._name}: the store is closing; nothing was written")
        self.stats.calls += 1
        weight = self._size(item) if self._size is not None else 1
        if weight > self._limit:
            # Too big to share a transaction; the database's own lock orders it.
            self._unshared += 1
            self._idle.clear()
            try:
                return await self._alone(item)
            finally:
                self._unshared -= 1
                self._set_busy(self._busy)
        if not self._busy:
            self._set_busy(True)
            try:
                return await self._alone(item)
            finally:
                self._set_busy(False)
                self._start_flush()
        waiter: _Waiter[T] = _Waiter(item, weight, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        # A cancelled caller cancels its future; `_take` then skips it, so it is not written.
        return await waiter.future  # type: ignore[return-value]

    async def drain(self) -> None:
        """Refuse new writes and wait until every queued one is written (or has failed)."""
        self._closing = True
        await self._idle.wait()

    # ------------------------------------------------------------ internals

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        if busy or self._queue or self._unshared:
            self._idle.clear()
        else:
            self._idle.set()

    def _start_flush(self) -> None:
        if self._busy or not self._queue:
            return
        self._set_busy(True)
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush_queue(), name=f"legato {self._name} group commit"
        )

    async def _flush_queue(self) -> None:
        batch: list[_Waiter[T]] = []
        try:
            while True:
                batch = self._take()
                if not batch:
                    return
                await self._write_batch(batch)
                batch = []
                # Let the loop breathe between batches: on SQLite a write never yields, so
                # without this a long queue would hold the loop until it is empty.
                await asyncio.sleep(0)
        finally:
            # Only a cancellation of this task (the loop shutting down) gets here with work
            # left: nobody knows whether the batch in flight committed.
            interrupted = StoreUnavailableError(
                f"{self._name}: a grouped write was interrupted; it may or may not have "
                "been written"
            )
            for waiter in [*batch, *self._queue]:
                _fail(waiter, interrupted)
            self._queue.clear()
            self._flusher = None
            self._set_busy(False)

    def _take(self) -> list[_Waiter[T]]:
        batch: list[_Waiter[T]] = []
        total = 0
        while self._queue:
            waiter = self._queue[0]
            if waiter.future.done():  # its caller was cancelled while it queued
                self._queue.popleft()
                continue
            if batch and total + waiter.weight > self._limit:
                break
            self._queue.popleft()
            batch.append(waiter)
            total += waiter.weight
        return batch

    async def _write_batch(self, batch: Sequence[_Waiter[T]]) -> None:
        if len(batch) == 1:
            await self._settle_alone(batch[0])
            return
        items = [waiter.item for waiter in batch]
        self._note(items)
        try:
            results = await self._write_many(items)
        except BatchRejected:
            self.stats.rejected += 1
            for waiter in batch:
                if not waiter.future.done():
                    await self._settle_alone(waiter)
            return
        except Exception as error:
            for waiter in batch:
                _fail(waiter, error)
            return
        for waiter, result in zip(batch, results, strict=True):
            if not waiter.future.done():
                waiter.future.set_result(result)

    async def _settle_alone(self, waiter: _Waiter[T]) -> None:
        try:
            result = await self._alone(waiter.item)
        except Exception as error:
            _fail(waiter, error)
        else:
            if not waiter.future.done():
                waiter.future.set_result(result)

    async def _alone(self, item: T) -> R:
        self._note([item])
        return await self._write_one(item)

    def _note(self, items: Sequence[T]) -> None:
        stats = self.stats
        stats.transactions += 1
        if len(items) > 1:
            stats.batches += 1
            stats.batched_calls += len(items)
        stats.largest = max(stats.largest, len(items))
        if self.on_flush is not None:
            self.on_flush(items)


def _fail(waiter: _Waiter[T], error: BaseException) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(error)
