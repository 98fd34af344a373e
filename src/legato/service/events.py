"""The service's live event feed: task, worker, loop and alert changes fanned out to listeners.

The `ChangeWatcher` publishes here; each `GET /events` connection subscribes. Every event has
a increasing id; the hub keeps the last `history` events so a client that reconnects with
`Last-Event-ID` misses nothing recent. A listener too slow to keep up with its bounded queue
is disconnected (its stream ends), and catches up from the history when it reconnects.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["EventHub", "ServiceEvent", "Subscription"]


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    """One change: `kind` is task, worker, loop or alert; `data` is its JSON body."""

    id: int
    kind: str
    data: dict[str, Any]

    def encode(self) -> str:
        """The event in server-sent events wire format."""
        return f"id: {self.id}\nevent: {self.kind}\ndata: {json.dumps(self.data)}\n\n"


class Subscription:
    """One listener's queue of events; `None` in it means the stream must end."""

    __slots__ = ("overflowed", "queue")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[ServiceEvent | None] = asyncio.Queue(maxsize=size)
        self.overflowed = False

    async def next(self) -> ServiceEvent | None:
        """Wait for the next event (None: the hub closed or this listener fell behind)."""
        return await self.queue.get()


class EventHub:
    """Fan-out of service events to every subscription, with a replay buffer."""

    def __init__(self, *, history: int = 1000, queue_size: int = 1000) -> None:
        self._next_id = 1
        self._history: deque[ServiceEvent] = deque(maxlen=history)
        self._subscriptions: set[Subscription] = set()
        self._queue_size = queue_size
        self._closed = False

    @property
    def listeners(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)

    @property
    def last_id(self) -> int:
        """Id of the newest event (0 before the first)."""
        return self._next_id - 1

    def publish(self, kind: str, data: dict[str, Any]) -> ServiceEvent:
        """Record and deliver one event."""
        event = ServiceEvent(self._next_id, kind, data)
        self._next_id += 1
        self._history.append(event)
        for subscription in list(self._subscriptions):
            if subscription.overflowed:
                continue
            if subscription.queue.qsize() >= self._queue_size - 1:
                # Keep one slot for the end marker: the listener reconnects and replays.
                subscription.overflowed = True
                subscription.queue.put_nowait(None)
            else:
                subscription.queue.put_nowait(event)
        return event

    def since(self, last_id: int) -> list[ServiceEvent]:
        """Buffered events newer than `last_id`, oldest first."""
        return [event for event in self._history if event.id > last_id]

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        """`async with hub.subscribe() as subscription:` listens until the block ends."""
        subscription = Subscription(self._queue_size)
        if self._closed:
            subscription.queue.put_nowait(None)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every open stream (service shutdown)."""
        self._closed = True
        for subscription in self._subscriptions:
            if not subscription.queue.full():
                subscription.queue.put_nowait(None)
