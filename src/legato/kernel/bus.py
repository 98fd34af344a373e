"""The in-process message bus: topics, isolated subscribers, backpressure and dead letters.

Guarantees (docs/concepts/bus.md explains them for operators):

- Every subscriber has its own bounded FIFO queue and its own consumer task. It receives the
  messages whose topic matches its pattern in publish order, one at a time. A subscriber that
  raises, hangs or is slow never delays or drops another subscriber's messages.
- A full queue makes `publish` wait for room (backpressure); the bus never drops a message.
- A failing handler is retried per its `RetryPolicy` (sleeping on the bus clock); when the
  policy gives up, the message becomes a `DeadLetter`: it is kept in `bus.dead_letters` and
  published on ``_dead_letter.<original topic>``.

The consumer awaits each handler inline, so a handler that finishes without suspending costs
one coroutine call and no trip through the event loop; the consumer only yields to the loop
when its queue is empty or a handler really waits.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import structlog

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import (
    CircuitOpenError,
    DeadlineExceeded,
    ErrorKind,
    PermanentError,
    RateLimitedError,
    ValidationError,
    classify,
)
from legato.kernel.message import (
    Message,
    MessageIds,
    stamped_message,
    validate_pattern,
    validate_topic,
)
from legato.kernel.retry import Jitter, RetryPolicy

__all__ = [
    "DEAD_LETTER_PREFIX",
    "BusClosedError",
    "BusStats",
    "DeadLetter",
    "Handler",
    "MessageBus",
    "SubscriberStats",
    "topic_matches",
]

_log = structlog.get_logger(__name__)

Handler = Callable[[Message], Awaitable[Any]]
"""What a subscriber gives the bus: an async callable that takes one message."""

DEAD_LETTER_PREFIX = "_dead_letter"
"""First segment of the topics dead letters are published on: ``_dead_letter.<topic>``."""

_DEFAULT_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=5.0, jitter=Jitter.FULL)
_ROUTE_CACHE_LIMIT = 10_000


class BusClosedError(PermanentError):
    """The bus is not running (never started, or closed): nothing was published."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a subscriber failed to handle, with why and after how many attempts."""

    message: Message
    subscriber_id: str
    error: Exception
    error_kind: ErrorKind
    attempts: int
    timestamp: float

    @property
    def error_text(self) -> str:
        """Return the error as ``Type: message`` for logs and dashboards."""
        return f"{type(self.error).__name__}: {self.error}"


@dataclass(frozen=True, slots=True)
class SubscriberStats:
    """Counters and queue depth of one subscriber at the moment of `MessageBus.stats()`."""

    subscriber_id: str
    pattern: str
    queue_depth: int
    max_queue: int
    delivered: int
    failed: int
    retried: int
    dead_lettered: int


@dataclass(frozen=True, slots=True)
class BusStats:
    """A snapshot of the bus counters; totals include subscribers that have unsubscribed.

    `delivered` counts successful handler calls, `failed` failed attempts (each retry that
    fails counts again), `retried` attempts after a failure, `dead_lettered` messages given up.
    """

    published: int
    delivered: int
    failed: int
    retried: int
    dead_lettered: int
    history_size: int
    subscribers: tuple[SubscriberStats, ...]


def topic_matches(pattern: str, topic: str) -> bool:
    """Return True when concrete `topic` matches subscription `pattern`.

    ``*`` matches exactly one segment, ``>`` one or more trailing segments (NATS semantics).
    A pattern that starts with a wildcard does not match system topics (first segment starting
    with ``_``, such as dead letters): subscribe to them by name, e.g. ``_dead_letter.>``.
    """
    return _matches(validate_pattern(pattern), validate_topic(topic).split("."))


def _matches(pattern: tuple[str, ...], topic: list[str]) -> bool:
    if pattern[0] in ("*", ">") and topic[0].startswith("_"):
        return False
    for index, segment in enumerate(pattern):
        if segment == ">":
            return len(topic) > index
        if index >= len(topic):
            return False
        if segment != "*" and segment != topic[index]:
            return False
    return len(pattern) == len(topic)


class _Subscriber:
    """One subscription: its queue, its consumer task and its counters."""

    __slots__ = (
        "attention",
        "dead_lettered",
        "delivered",
        "drain_waiters",
        "failed",
        "handler",
        "handler_timeout",
        "id",
        "limit",
        "max_queue",
        "pattern",
        "queue",
        "retried",
        "retry",
        "room_waiters",
        "segments",
        "task",
        "waiter",
    )

    def __init__(
        self,
        subscriber_id: str,
        pattern: str,
        handler: Handler,
        max_queue: int,
        handler_timeout: float | None,
        retry: RetryPolicy,
    ) -> None:
        self.id = subscriber_id
        self.pattern = pattern
        self.segments = validate_pattern(pattern)
        self.handler = handler
        self.max_queue = max_queue
        # What publish compares the queue length with: max_queue normally, 0 while publishers
        # wait in line (newcomers queue behind them) or once the subscriber is gone. One
        # comparison per delivery covers all three cases.
        self.limit = max_queue
        self.handler_timeout = handler_timeout
        self.retry = retry
        # The message being handled stays at the head of the queue until it is finished, so
        # the queue always holds exactly the messages not yet handled or dead-lettered.
        self.queue: deque[Message] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.room_waiters: deque[asyncio.Future[None]] = deque()
        # drain() targets count enqueued messages, which only grow: later waiters never have
        # smaller targets, so the head of this deque is always the next one due.
        self.drain_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        # True while publishers wait for room or callers wait in drain(): the consumer checks
        # this one flag per message instead of both lists.
        self.attention = False
        self.task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.retried = 0
        self.dead_lettered = 0

    def snapshot(self) -> SubscriberStats:
        return SubscriberStats(
            subscriber_id=self.id,
            pattern=self.pattern,
            queue_depth=len(self.queue),
            max_queue=self.max_queue,
            delivered=self.delivered,
            failed=self.failed,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
        )

    def update_attention(self) -> None:
        self.limit = 0 if self.room_waiters else self.max_queue
        # The consumer needs to call serve_waiters only while a drain() target is ahead or a
        # publisher still waits to be let in (not one already let in but not yet resumed).
        attention = bool(self.drain_waiters)
        if not attention:
            for waiter in self.room_waiters:
                if not waiter.done():
                    attention = True
                    break
        self.attention = attention

    def retire(self) -> None:
        """Make every later publish attempt take the slow path, which sees it is gone."""
        self.max_queue = 0
        self.limit = 0

    @property
    def processed(self) -> int:
        # Handled or given up. The consumer bumps a counter and pops the queue head with no
        # await in between, so processed + len(queue) never counts a message twice.
        return self.delivered + self.dead_lettered

    def wake_consumer(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def serve_waiters(self) -> None:
        """Let one blocked publisher in per free slot and release satisfied drain() calls."""
        if self.room_waiters:
            free = self.max_queue - len(self.queue)
            for waiter in self.room_waiters:
                if free <= 0:
                    break
                if not waiter.done():
                    waiter.set_result(None)
                free -= 1
        drain_waiters = self.drain_waiters
        while drain_waiters and self.processed >= drain_waiters[0][0]:
            _, future = drain_waiters.popleft()
            if not future.done():
                future.set_result(None)
        self.update_attention()

    def release_all(self, error: BaseException | None) -> None:
        """Release every waiter: publishers get `error`, drain() calls return."""
        for waiter in self.room_waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
        for _, future in self.drain_waiters:
            if not future.done():
                future.set_result(None)
        self.drain_waiters.clear()
        self.update_attention()


class MessageBus:
    """Publish/subscribe on dotted topics with isolated, ordered, backpressured subscribers.

    Use it as ``async with MessageBus() as bus:`` or call `start()` and `close()`. The bus owns
    one consumer task per subscriber, named ``<name>-subscriber:<id>``, and stops them on close.

    `max_queue` (per subscriber, overridable in `subscribe`) bounds each queue: when a
    subscriber's queue is full, `publish` waits until that subscriber makes room.
    `retry` decides how often a failing handler is tried again; `handler_timeout` (seconds)
    turns a handler that runs too long into a `DeadlineExceeded` failure. `rng` drives retry
    jitter and message ids: pass a seeded one for reproducible runs.
    """

    def __init__(
        self,
        *,
        max_history: int = 10_000,
        max_queue: int = 10_000,
        max_dead_letters: int = 10_000,
        retry: RetryPolicy = _DEFAULT_RETRY,
        handler_timeout: float | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        name: str = "bus",
    ) -> None:
        _check_count("max_history", max_history, minimum=0)
        _check_count("max_queue", max_queue, minimum=1)
        _check_count("max_dead_letters", max_dead_letters, minimum=0)
        _check_timeout(handler_timeout)
        if not isinstance(retry, RetryPolicy):
            raise ValidationError("retry", retry, "a legato.kernel.retry.RetryPolicy")
        self._clock: Clock = clock if clock is not None else RealClock()
        self._rng = rng if rng is not None else random.Random()
        self._ids = MessageIds(self._rng)
        self._name = name
        self._max_queue = max_queue
        self._retry = retry
        self._handler_timeout = handler_timeout
        self._history: deque[Message] = deque(maxlen=max_history)
        self._dead_letters: deque[DeadLetter] = deque(maxlen=max_dead_letters)
        self._subscribers: dict[str, _Subscriber] = {}
        # topic -> subscribers whose pattern matches it; cleared on every (un)subscribe.
        self._routes: dict[str, tuple[_Subscriber, ...]] = {}
        self._running = False
        self._closed = False
        self._published = 0
        # Final counters of subscribers that have gone, so bus totals never go backwards.
        self._departed: list[SubscriberStats] = []
        self._crashes: list[BaseException] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # On a clean exit everything published is handled first; when the block failed,
        # waiting on possibly hung handlers would hide the error, so stop at once.
        await self.close(drain=exc_type is None)

    @property
    def running(self) -> bool:
        """True between `start()` and `close()`."""
        return self._running

    @property
    def clock(self) -> Clock:
        """The clock that stamps messages and times retries."""
        return self._clock

    async def start(self) -> None:
        """Start a consumer task for every subscriber; publishing is allowed from now on."""
        if self._closed:
            raise BusClosedError("a closed bus cannot be started again; create a new one")
        if self._running:
            return
        self._running = True
        for subscriber in self._subscribers.values():
            self._start_consumer(subscriber)

    async def close(
        self, *, drain: bool = True, drain_timeout: float | None = None
    ) -> dict[str, tuple[Message, ...]]:
        """Stop accepting messages, optionally drain, then stop every consumer task.

        With `drain=True` close waits until every published message is handled or
        dead-lettered (at most `drain_timeout` seconds of the bus clock's loop when given). Then the
        consumers are cancelled: a handler still running is interrupted. Returns, per
        subscriber, the messages that were never handled (empty when the drain finished), so
        nothing is lost silently. Publishers still waiting for room get `BusClosedError`.
        Raises a `BaseExceptionGroup` if a consumer task died of something other than a handler
        exception (a bug or a `BaseException` such as `SystemExit`).
        """
        if self._closed:
            return {}
        if drain and self._running:
            try:
                async with asyncio.timeout(drain_timeout):
                    await self.drain()
            except TimeoutError:
                _log.warning("bus_drain_timed_out", bus=self._name, drain_timeout=drain_timeout)
        self._closed = True
        self._running = False
        error = BusClosedError("the bus was closed while publish waited for room")
        tasks = []
        for subscriber in self._subscribers.values():
            # A publish suspended mid-way then finds the bus closed instead of queueing.
            subscriber.retire()
            subscriber.release_all(error)
            if subscriber.task is not None:
                subscriber.task.cancel()
                tasks.append(subscriber.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        undelivered = {
            subscriber.id: tuple(subscriber.queue)
            for subscriber in self._subscribers.values()
            if subscriber.queue
        }
        for subscriber_id, messages in undelivered.items():
            _log.warning(
                "bus_closed_with_unhandled_messages",
                bus=self._name,
                subscriber_id=subscriber_id,
                unhandled=len(messages),
            )
        if self._crashes:
            raise BaseExceptionGroup(f"bus {self._name}: consumer tasks crashed", self._crashes)
        return undelivered

    def _start_consumer(self, subscriber: _Subscriber) -> None:
        task = asyncio.get_running_loop().create_task(
            self._consume(subscriber), name=f"{self._name}-subscriber:{subscriber.id}"
        )
        task.add_done_callback(self._consumer_done)
        subscriber.task = task

    def _consumer_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # Handler exceptions never get here (they are retried or dead-lettered); this is
            # a bug or a BaseException, surfaced by close().
            _log.error("bus_consumer_crashed", bus=self._name, task=task.get_name(), exc_info=error)
            self._crashes.append(error)

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(
        self,
        *,
        subscriber_id: str,
        topic: str,
        handler: Handler,
        max_queue: int | None = None,
        handler_timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Deliver every later message whose topic matches pattern `topic` to `handler`.

        `topic` may use ``*`` (one segment) and ``>`` (one or more trailing segments).
        `max_queue`, `handler_timeout` and `retry` override the bus defaults for this
        subscriber. Each `subscriber_id` may hold one subscription at a time.
        """
        if not isinstance(subscriber_id, str) or not subscriber_id:
            raise ValidationError("subscriber_id", subscriber_id, "a non-empty string")
        if subscriber_id in self._subscribers:
            raise ValidationError(
                "subscriber_id",
                subscriber_id,
                "an id not already subscribed (unsubscribe it first)",
            )
        validate_pattern(topic)
        if not callable(handler):
            raise ValidationError("handler", handler, "an async callable taking a Message")
        if max_queue is not None:
            _check_count("max_queue", max_queue, minimum=1)
        if handler_timeout is not None:
            _check_timeout(handler_timeout)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValidationError("retry", retry, "a legato.kernel.retry.RetryPolicy")
        if self._closed:
            raise BusClosedError("cannot subscribe to a closed bus")
        subscriber = _Subscriber(
            subscriber_id,
            topic,
            handler,
            max_queue if max_queue is not None else self._max_queue,
            handler_timeout if handler_timeout is not None else self._handler_timeout,
            retry if retry is not None else self._retry,
        )
        self._subscribers[subscriber_id] = subscriber
        self._routes.clear()
        if self._running:
            self._start_consumer(subscriber)

    async def unsubscribe(self, subscriber_id: str, *, drain: bool = True) -> tuple[Message, ...]:
        """Stop delivering to `subscriber_id` and stop its consumer task.

        No message published after this call reaches it. With `drain=True` the messages
        already in its queue are handled first; with `drain=False` its handler is interrupted.
        Returns the messages it never handled (empty after a completed drain). A handler
        cannot unsubscribe its own subscriber: it would wait for itself.
        """
        subscriber = self._subscribers.get(subscriber_id)
        if subscriber is None:
            raise ValidationError(
                "subscriber_id", subscriber_id, f"one of {sorted(self._subscribers)}"
            )
        if subscriber.task is not None and subscriber.task is asyncio.current_task():
            raise ValidationError(
                "subscriber_id",
                subscriber_id,
                "the id of another subscriber: a handler cannot unsubscribe its own "
                "subscriber (do it from another task)",
            )
        del self._subscribers[subscriber_id]
        self._routes.clear()
        # A publish suspended mid-way may still hold this subscriber in its route: a zero
        # bound sends it to _wait_for_room, which sees the subscriber is gone.
        subscriber.retire()
        # Publishers blocked on this queue go on to the other subscribers.
        subscriber.release_all(None)
        if drain and subscriber.task is not None and subscriber.queue:
            await self._wait_processed(subscriber, subscriber.processed + len(subscriber.queue))
        if subscriber.task is not None:
            subscriber.task.cancel()
            await asyncio.gather(subscriber.task, return_exceptions=True)
            subscriber.task = None
        subscriber.release_all(None)
        self._departed.append(subscriber.snapshot())
        return tuple(subscriber.queue)

    def subscriber_ids(self) -> tuple[str, ...]:
        """Return the ids of the current subscribers, in subscription order."""
        return tuple(self._subscribers)

    # -- publishing --------------------------------------------------------------------------

    def create_message(
        self,
        topic: str,
        source: str,
        payload: Any = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        *,
        caused_by: Message | None = None,
    ) -> Message:
        """Create a message stamped by the bus clock (see `legato.kernel.create_message`)."""
        return stamped_message(
            topic, source, payload, correlation_id, causation_id, caused_by, self._clock, self._ids
        )

    async def publish(self, message: Message) -> None:
        """Record `message` in history and queue it for every matching subscriber.

        Waits while a matching subscriber's queue is full (backpressure); never drops.
        Returns once every matching subscriber has it queued, not once handled: use `drain()`.
        """
        if not self._running:
            raise BusClosedError(
                "publish on a bus that is not running: use `async with MessageBus() as bus` "
                "or `await bus.start()`",
                topic=getattr(message, "topic", None),
            )
        subscribers = self._routes.get(message.topic)
        if subscribers is None:
            subscribers = self._route(message)
        self._history.append(message)
        self._published += 1
        for subscriber in subscribers:
            queue = subscriber.queue
            if len(queue) >= subscriber.limit and not await self._wait_for_room(subscriber):
                continue
            queue.append(message)
            # wake_consumer() inlined: this loop runs once per delivery.
            waiter = subscriber.waiter
            if waiter is not None:
                subscriber.waiter = None
                if not waiter.done():
                    waiter.set_result(None)

    def _route(self, message: Message) -> tuple[_Subscriber, ...]:
        if not isinstance(message, Message):
            raise ValidationError("message", message, "a legato.kernel.message.Message")
        validate_topic(message.topic)
        segments = message.topic.split(".")
        subscribers = tuple(s for s in self._subscribers.values() if _matches(s.segments, segments))
        if len(self._routes) >= _ROUTE_CACHE_LIMIT:
            self._routes.clear()
        self._routes[message.topic] = subscribers
        return subscribers

    async def _wait_for_room(self, subscriber: _Subscriber) -> bool:
        """Wait in FIFO order for a free slot; False if the subscriber went away meanwhile."""
        if self._closed:
            raise BusClosedError("the bus was closed while publish was in progress")
        if self._subscribers.get(subscriber.id) is not subscriber:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        subscriber.room_waiters.append(future)
        subscriber.update_attention()
        # The consumer may have made room already (or be idle with room to spare).
        subscriber.serve_waiters()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # We were let in but will not use the slot: pass it on.
                subscriber.room_waiters.remove(future)
                subscriber.serve_waiters()
            raise
        finally:
            if future in subscriber.room_waiters:
                subscriber.room_waiters.remove(future)
            subscriber.update_attention()
        return self._subscribers.get(subscriber.id) is subscriber

    # -- consuming ---------------------------------------------------------------------------

    async def _consume(self, subscriber: _Subscriber) -> None:
        queue = subscriber.queue
        popleft = queue.popleft
        create_future = asyncio.get_running_loop().create_future
        call: Handler = subscriber.handler
        if subscriber.handler_timeout is not None:
            call = functools.partial(self._call_with_timeout, subscriber)
        while True:
            # The hot loop. Handlers are awaited inline, so one that never suspends runs
            # without a trip through the event loop; try/except costs nothing in 3.11 until
            # something raises. The message leaves the queue only once it is finished.
            while queue:
                message = queue[0]
                try:
                    await call(message)
                    subscriber.delivered += 1
                except Exception as error:
                    await self._recover(subscriber, call, message, error)
                popleft()
                if subscriber.attention:
                    subscriber.serve_waiters()
            waiter: asyncio.Future[None] = create_future()
            subscriber.waiter = waiter
            await waiter

    async def _call_with_timeout(self, subscriber: _Subscriber, message: Message) -> None:
        timeout = subscriber.handler_timeout
        try:
            async with asyncio.timeout(timeout) as scope:
                await subscriber.handler(message)
        except TimeoutError as error:
            if scope.expired():
                raise DeadlineExceeded(
                    f"handler of subscriber {subscriber.id!r} ran longer than {timeout}s",
                    timeout=timeout,
                    subscriber_id=subscriber.id,
                    message_id=message.id,
                ) from error
            raise

    async def _recover(
        self, subscriber: _Subscriber, call: Handler, message: Message, error: Exception
    ) -> None:
        """Retry a failed handler call per the policy; dead-letter the message when it gives up."""
        policy = subscriber.retry
        attempt = 1
        while True:
            subscriber.failed += 1
            kind = classify(error)
            if not policy.should_retry(attempt, kind):
                break
            delay = policy.delay(attempt, self._rng)
            if isinstance(error, RateLimitedError | CircuitOpenError) and error.retry_after:
                # The hint is a floor: coming back sooner would only be refused again.
                delay = max(delay, error.retry_after)
            await self._clock.sleep(delay)
            attempt += 1
            subscriber.retried += 1
            try:
                await call(message)
            except Exception as next_error:
                error = next_error
                continue
            subscriber.delivered += 1
            return
        self._dead_letter(subscriber, message, error, kind, attempt)

    def _dead_letter(
        self,
        subscriber: _Subscriber,
        message: Message,
        error: Exception,
        kind: ErrorKind,
        attempts: int,
    ) -> None:
        letter = DeadLetter(
            message=message,
            subscriber_id=subscriber.id,
            error=error,
            error_kind=kind,
            attempts=attempts,
            timestamp=self._clock.timestamp(),
        )
        subscriber.dead_lettered += 1
        self._dead_letters.append(letter)
        _log.warning(
            "bus_message_dead_lettered",
            bus=self._name,
            subscriber_id=subscriber.id,
            message_id=message.id,
            topic=message.topic,
            correlation_id=message.correlation_id,
            attempts=attempts,
            error=letter.error_text,
        )
        if message.topic.startswith(DEAD_LETTER_PREFIX + "."):
            # A dead letter whose own handler failed is kept in dead_letters but not
            # republished: that could loop forever.
            return
        if not self._running:
            return
        notice = self.create_message(
            f"{DEAD_LETTER_PREFIX}.{message.topic}",
            f"{self._name}/{subscriber.id}",
            letter,
            caused_by=message,
        )
        self._publish_unbounded(notice)

    def _publish_unbounded(self, message: Message) -> None:
        # Dead letters are published by a consumer task: waiting for room here could let one
        # hung dead-letter subscriber stall every other subscriber, so they skip the bound.
        subscribers = self._routes.get(message.topic)
        if subscribers is None:
            subscribers = self._route(message)
        self._history.append(message)
        self._published += 1
        for subscriber in subscribers:
            subscriber.queue.append(message)
            subscriber.wake_consumer()

    # -- observing ---------------------------------------------------------------------------

    async def drain(self) -> None:
        """Return once every message published so far is handled or dead-lettered.

        Messages published while draining (replies from handlers, dead-letter notices) are
        waited for too, so after `drain()` the bus is quiet. A publisher that never stops
        can therefore keep `drain()` waiting. Handlers cannot call it: they would wait for
        themselves.
        """
        current = asyncio.current_task()
        if any(s.task is current for s in self._subscribers.values()):
            raise PermanentError(
                "drain() was called from a handler, which would wait for itself; "
                "call it from the task that publishes"
            )
        while True:
            published = self._published
            pending = [
                (subscriber, subscriber.processed + len(subscriber.queue))
                for subscriber in self._subscribers.values()
                if subscriber.queue and subscriber.task is not None
            ]
            if not pending:
                return
            for subscriber, target in pending:
                await self._wait_processed(subscriber, target)
            if self._published == published:
                return

    async def _wait_processed(self, subscriber: _Subscriber, target: int) -> None:
        if subscriber.processed >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        subscriber.drain_waiters.append((target, future))
        subscriber.attention = True
        await future

    def history(self, topic: str | None = None, limit: int | None = None) -> list[Message]:
        """Return retained messages, oldest first; only those matching pattern `topic` if given.

        At most the last `limit` of them. History keeps the last `max_history` messages.
        """
        if limit is not None:
            _check_count("limit", limit, minimum=0)
        if topic is None:
            selected = list(self._history)
        else:
            segments = validate_pattern(topic)
            selected = [m for m in self._history if _matches(segments, m.topic.split("."))]
        if limit is not None:
            selected = selected[-limit:] if limit else []
        return selected

    def trace(self, correlation_id: str) -> list[Message]:
        """Return the retained messages of one correlation chain, oldest first."""
        return [m for m in self._history if m.correlation_id == correlation_id]

    @property
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The retained dead letters, oldest first (the last `max_dead_letters`)."""
        return tuple(self._dead_letters)

    def stats(self) -> BusStats:
        """Return a snapshot of the counters and every subscriber's queue depth."""
        subscribers = tuple(s.snapshot() for s in self._subscribers.values())
        every = (*self._departed, *subscribers)
        return BusStats(
            published=self._published,
            delivered=sum(s.delivered for s in every),
            failed=sum(s.failed for s in every),
            retried=sum(s.retried for s in every),
            dead_lettered=sum(s.dead_lettered for s in every),
            history_size=len(self._history),
            subscribers=subscribers,
        )

    def __repr__(self) -> str:
        state = "running" if self._running else ("closed" if self._closed else "not started")
        return f"MessageBus(name={self._name!r}, {state}, subscribers={len(self._subscribers)})"


def _check_count(field: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(field, value, f"an integer >= {minimum}")


def _check_timeout(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValidationError("handler_timeout", value, "None or a number of seconds > 0")
