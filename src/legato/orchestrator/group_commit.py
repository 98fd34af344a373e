"""Group commit: many concurrent writes of one kind share one transaction.

Dozens of workflow runs in one worker each journal a step at about the same moment; each
durable commit waits for the disk, and one connection serves them one at a time. A
`GroupCommit` queues the writes and lets the first caller flush the queue for everyone:
while its transaction is in flight, later callers queue up, and its next pass takes them
all. No background task is involved: a flush always runs in some caller's task.

Before it takes a batch, the flusher yields to the event loop for as long as each pass
brings more writes (and the batch is not full): the runs a claim started all become ready
in the same loop pass, and without this the first of them to write would flush alone, the
rest waiting a whole round trip for the next flush (measured on the workflow benchmark: a
batch of one, then one of 63, for every 64 runs). A lone writer pays one loop pass, no timer.

If the flushing caller is cancelled, the writes it had not sent yet are handed back to
their callers, who queue them again (one of them becomes the next flusher); writes that
were in flight when it was cancelled fail with `StoreUnavailableError`, since nobody
knows whether their transaction committed (journal writes are idempotent, so the run
that retries them is safe).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from legato.kernel.errors import ValidationError
from legato.store.errors import StoreUnavailableError

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")

_REQUEUE = object()


class GroupCommit(Generic[T, R]):
    """Batches `submit(item)` calls into `flush(items)` calls of at most `limit` items.

    `flush` returns one result per item, in order; an exception it raises fails every
    item of that batch.
    """

    def __init__(
        self, flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]], *, limit: int = 256
    ) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise ValidationError("limit", limit, "an int >= 1")
        self._flush = flush
        self._limit = limit
        self._pending: list[tuple[T, asyncio.Future[object]]] = []
        self._flushing = False

    async def submit(self, item: T) -> R:
        """Queue `item`, flushing the queue if nobody is; return its result."""
        loop = asyncio.get_running_loop()
        while True:
            future: asyncio.Future[object] = loop.create_future()
            self._pending.append((item, future))
            if not self._flushing:
                await self._lead()
            outcome = await future
            if outcome is not _REQUEUE:
                return outcome  # type: ignore[return-value]

    async def _gather(self) -> None:
        """Yield to the loop while each pass queues more writes, up to a full batch."""
        while len(self._pending) < self._limit:
            queued = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) == queued:
                return

    async def _lead(self) -> None:
        self._flushing = True
        batch: list[tuple[T, asyncio.Future[object]]] = []
        try:
            while self._pending:
                await self._gather()
                batch = self._pending[: self._limit]
                del self._pending[: self._limit]
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                batch = []
        finally:
            self._flushing = False
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        StoreUnavailableError("a grouped write was interrupted; try again")
                    )
                    # Its caller may be the cancelled flusher itself, who will never look.
                    future.exception()
            requeue, self._pending = self._pending, []
            for _, future in requeue:
                if not future.done():
                    future.set_result(_REQUEUE)
