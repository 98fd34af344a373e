"""The message bus: routing, ordering, isolation, backpressure, retries, dead letters."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

from legato.kernel.bus import (
    DEAD_LETTER_PREFIX,
    BusClosedError,
    DeadLetter,
    MessageBus,
    topic_matches,
)
from legato.kernel.clock import Clock
from legato.kernel.errors import (
    DeadlineExceeded,
    ErrorKind,
    PermanentError,
    RateLimitedError,
    TransientError,
    ValidationError,
)
from legato.kernel.message import Message
from legato.kernel.retry import Jitter, RetryPolicy
from legato.kernel.simulation import SimulatedClock, run_simulated

NO_RETRY = RetryPolicy(max_attempts=1)


class Recorder:
    """A subscriber that records every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def payloads(self) -> list[object]:
        return [message.payload for message in self.messages]


def make_bus(clock: Clock, **options: object) -> MessageBus:
    return MessageBus(clock=clock, rng=random.Random(7), **options)  # type: ignore[arg-type]


async def still_pending(future: asyncio.Future[None], seconds: float) -> bool:
    """Wait up to `seconds` of the loop's time for `future`; True if it has not finished."""
    done, _ = await asyncio.wait({future}, timeout=seconds)
    return not done


async def publish_many(bus: MessageBus, topic: str, count: int) -> list[Message]:
    messages = [bus.create_message(topic, "test", index) for index in range(count)]
    for message in messages:
        await bus.publish(message)
    return messages


# -- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("orders.filled", "orders.filled", True),
        ("orders.filled", "orders.filled.btc", False),
        ("orders.*", "orders.filled", True),
        ("orders.*", "orders", False),
        ("orders.*", "orders.filled.btc", False),
        ("*.filled", "orders.filled", True),
        ("orders.*.btc", "orders.filled.btc", True),
        ("orders.>", "orders.filled", True),
        ("orders.>", "orders.filled.btc.usd", True),
        ("orders.>", "orders", False),
        (">", "orders", True),
        ("*.>", "orders", False),
        (">", "_dead_letter.orders", False),
        ("*.orders", "_dead_letter.orders", False),
        ("_dead_letter.>", "_dead_letter.orders.filled", True),
    ],
)
def test_topic_matching_follows_nats_wildcards(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


async def test_subscriber_receives_only_messages_matching_its_pattern(clock: Clock) -> None:
    exact, star, tail = Recorder(), Recorder(), Recorder()
    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="exact", topic="orders.filled", handler=exact)
        await bus.subscribe(subscriber_id="star", topic="orders.*", handler=star)
        await bus.subscribe(subscriber_id="tail", topic="orders.>", handler=tail)
        for topic in ["orders.filled", "orders.cancelled", "orders.filled.btc", "market.tick"]:
            await bus.publish(bus.create_message(topic, "test", topic))
        await bus.drain()

    assert exact.payloads == ["orders.filled"]
    assert star.payloads == ["orders.filled", "orders.cancelled"]
    assert tail.payloads == ["orders.filled", "orders.cancelled", "orders.filled.btc"]


async def test_subscribing_later_changes_routing_of_known_topics(clock: Clock) -> None:
    first, second = Recorder(), Recorder()
    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="first", topic="a.b", handler=first)
        await bus.publish(bus.create_message("a.b", "test", 1))
        await bus.subscribe(subscriber_id="second", topic="a.*", handler=second)
        await bus.publish(bus.create_message("a.b", "test", 2))
        await bus.drain()

    assert first.payloads == [1, 2]
    assert second.payloads == [2]


@pytest.mark.parametrize("pattern", ["", "a..b", "a.>.b", "a b", "a.#"])
async def test_subscribe_rejects_invalid_patterns(clock: Clock, pattern: str) -> None:
    async with make_bus(clock) as bus:
        with pytest.raises(ValidationError) as caught:
            await bus.subscribe(subscriber_id="s", topic=pattern, handler=Recorder())

        assert caught.value.field == "topic"
        assert caught.value.value == pattern
        assert bus.subscriber_ids() == ()


async def test_publish_rejects_a_message_with_an_invalid_topic(clock: Clock) -> None:
    valid = Message(
        id="1", topic="a.b", source="s", payload=None, timestamp=0.0, correlation_id="1"
    )
    async with make_bus(clock) as bus:
        with pytest.raises(ValidationError) as caught:
            await bus.publish(dataclasses.replace(valid, topic="a.*"))

        assert caught.value.field == "topic"
        assert bus.history() == []


async def test_duplicate_subscriber_id_is_rejected(clock: Clock) -> None:
    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="s", topic="a", handler=Recorder())

        with pytest.raises(ValidationError) as caught:
            await bus.subscribe(subscriber_id="s", topic="b", handler=Recorder())

        assert caught.value.field == "subscriber_id"


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_queue", 0), ("max_history", -1), ("handler_timeout", 0), ("max_queue", 1.5)],
)
def test_bus_rejects_invalid_settings(clock: Clock, option: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        make_bus(clock, **{option: value})

    assert caught.value.field == option
    assert caught.value.value == value


# -- ordering and isolation --------------------------------------------------------------------


async def test_ten_subscribers_each_receive_ten_thousand_messages_in_publish_order(
    clock: Clock,
) -> None:
    recorders = [Recorder() for _ in range(10)]
    async with make_bus(clock, max_queue=256) as bus:
        for index, recorder in enumerate(recorders):
            pattern = "load.test" if index % 2 else "load.*"
            await bus.subscribe(subscriber_id=f"s{index}", topic=pattern, handler=recorder)
        published = await publish_many(bus, "load.test", 10_000)
        await bus.drain()

    for recorder in recorders:
        assert recorder.messages == published
    assert bus.stats().delivered == 100_000


async def test_failing_subscriber_does_not_block_or_drop_other_subscribers(clock: Clock) -> None:
    healthy = Recorder()

    async def always_fails(message: Message) -> None:
        raise PermanentError("broken subscriber")

    async with make_bus(clock, retry=NO_RETRY) as bus:
        await bus.subscribe(subscriber_id="broken", topic="a.>", handler=always_fails)
        await bus.subscribe(subscriber_id="healthy", topic="a.>", handler=healthy)
        published = await publish_many(bus, "a.b", 50)
        await bus.drain()

    assert healthy.messages == published
    assert [letter.message for letter in bus.dead_letters] == published


async def test_fast_subscriber_next_to_a_hung_one_still_gets_everything(clock: Clock) -> None:
    fast = Recorder()
    release = asyncio.Event()
    hung_started = asyncio.Event()

    async def hangs(message: Message) -> None:
        hung_started.set()
        await release.wait()

    async with make_bus(clock, max_queue=1_000) as bus:
        await bus.subscribe(subscriber_id="hung", topic="a.b", handler=hangs)
        await bus.subscribe(subscriber_id="fast", topic="a.b", handler=fast)
        published = await publish_many(bus, "a.b", 500)
        await hung_started.wait()
        await bus.unsubscribe("fast")

        assert fast.messages == published
        depths = {s.subscriber_id: s.queue_depth for s in bus.stats().subscribers}
        assert depths == {"hung": 500}
        release.set()


async def test_slow_subscriber_with_small_queue_slows_the_publisher_but_loses_nothing(
    clock: Clock,
) -> None:
    slow = Recorder()
    fast = Recorder()

    async def slow_handler(message: Message) -> None:
        await clock.sleep(1.0)
        await slow(message)

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="slow", topic="a.b", handler=slow_handler, max_queue=2)
        await bus.subscribe(subscriber_id="fast", topic="a.b", handler=fast)
        started = clock.monotonic()
        published = await publish_many(bus, "a.b", 10)
        publishing_took = clock.monotonic() - started
        await bus.drain()

    # Ten messages, two fit: the publisher had to wait for the slow handler to make room
    # for the rest, about one message per second.
    assert publishing_took >= 8.0
    assert slow.messages == published
    assert fast.messages == published
    assert bus.stats().delivered == 20


async def test_full_queue_makes_publish_wait_until_there_is_room(clock: Clock) -> None:
    release = asyncio.Event()
    received = Recorder()

    async def gated(message: Message) -> None:
        await release.wait()
        await received(message)

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="gated", topic="a", handler=gated, max_queue=3)
        await publish_many(bus, "a", 3)
        blocked = asyncio.ensure_future(bus.publish(bus.create_message("a", "test", 3)))
        assert await still_pending(blocked, seconds=60.0)
        assert bus.stats().subscribers[0].queue_depth == 3

        release.set()
        await blocked
        await bus.drain()

    assert received.payloads == [0, 1, 2, 3]


async def test_a_newcomer_cannot_jump_ahead_of_a_publisher_waiting_for_room(
    clock: Clock,
) -> None:
    received = Recorder()
    first_done = asyncio.Event()

    async def slow(message: Message) -> None:
        await clock.sleep(1.0)
        # Wakes the newcomer just before the consumer frees the slot the waiter was promised.
        first_done.set()
        await received(message)

    async def newcomer(bus: MessageBus) -> None:
        await first_done.wait()
        await bus.publish(bus.create_message("a", "newcomer", 2))

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="s", topic="a", handler=slow, max_queue=1)
        await publish_many(bus, "a", 1)
        async with asyncio.TaskGroup() as group:
            group.create_task(bus.publish(bus.create_message("a", "waiter", 1)))
            group.create_task(newcomer(bus))
        await bus.drain()

    assert received.payloads == [0, 1, 2]


async def test_concurrent_publishers_blocked_on_a_full_queue_keep_one_order(
    clock: Clock,
) -> None:
    slow, fast = Recorder(), Recorder()

    async def slow_handler(message: Message) -> None:
        await clock.sleep(0.5)
        await slow(message)

    async def producer(bus: MessageBus, name: str) -> None:
        for index in range(20):
            await bus.publish(bus.create_message("a", name, index))

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="slow", topic="a", handler=slow_handler, max_queue=2)
        await bus.subscribe(subscriber_id="fast", topic="a", handler=fast, max_queue=2)
        async with asyncio.TaskGroup() as group:
            group.create_task(producer(bus, "p1"))
            group.create_task(producer(bus, "p2"))
        await bus.drain()

    assert len(slow.messages) == 40
    assert slow.messages == fast.messages
    for name in ("p1", "p2"):
        assert [m.payload for m in slow.messages if m.source == name] == list(range(20))


# -- retries and dead letters ------------------------------------------------------------------


async def test_failing_handler_is_retried_with_backoff_on_the_clock(clock: Clock) -> None:
    attempts: list[float] = []

    async def flaky(message: Message) -> None:
        attempts.append(clock.monotonic())
        if len(attempts) < 3:
            raise TransientError("venue busy")

    policy = RetryPolicy(max_attempts=5, initial_delay=1.0, multiplier=2.0, jitter=Jitter.NONE)
    async with make_bus(clock, retry=policy) as bus:
        await bus.subscribe(subscriber_id="flaky", topic="a", handler=flaky)
        await bus.publish(bus.create_message("a", "test"))
        await bus.drain()

    assert [round(t - attempts[0], 6) for t in attempts] == [0.0, 1.0, 3.0]
    stats = bus.stats()
    assert (stats.delivered, stats.failed, stats.retried, stats.dead_lettered) == (1, 2, 2, 0)
    assert bus.dead_letters == ()


async def test_retry_waits_at_least_the_retry_after_hint(clock: Clock) -> None:
    attempts: list[float] = []

    async def rate_limited_once(message: Message) -> None:
        attempts.append(clock.monotonic())
        if len(attempts) == 1:
            raise RateLimitedError("slow down", retry_after=30.0)

    policy = RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=Jitter.NONE)
    async with make_bus(clock, retry=policy) as bus:
        await bus.subscribe(subscriber_id="s", topic="a", handler=rate_limited_once)
        await bus.publish(bus.create_message("a", "test"))
        await bus.drain()

    assert attempts[1] - attempts[0] == pytest.approx(30.0)


async def test_handler_that_keeps_failing_is_dead_lettered_with_error_and_attempts(
    clock: Clock,
) -> None:
    dead = Recorder()

    async def always_fails(message: Message) -> None:
        raise TransientError("still down")

    policy = RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=Jitter.NONE)
    async with make_bus(clock, retry=policy) as bus:
        await bus.subscribe(subscriber_id="orders", topic="orders.new", handler=always_fails)
        await bus.subscribe(subscriber_id="dlq", topic=f"{DEAD_LETTER_PREFIX}.>", handler=dead)
        original = bus.create_message("orders.new", "desk", {"qty": 1})
        await bus.publish(original)
        await bus.drain()

    (letter,) = bus.dead_letters
    assert letter.message == original
    assert letter.subscriber_id == "orders"
    assert letter.attempts == 3
    assert isinstance(letter.error, TransientError)
    assert letter.error_kind is ErrorKind.TRANSIENT
    assert letter.error_text == "TransientError: still down"
    (notice,) = dead.messages
    assert notice.topic == "_dead_letter.orders.new"
    assert notice.payload == letter
    assert notice.causation_id == original.id
    assert notice.correlation_id == original.correlation_id
    stats = bus.stats()
    assert (stats.failed, stats.retried, stats.dead_lettered) == (3, 2, 1)


async def test_permanent_error_goes_to_dead_letters_without_retry(clock: Clock) -> None:
    calls = 0

    async def rejects(message: Message) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("malformed payload")

    async with make_bus(clock, retry=RetryPolicy(max_attempts=5)) as bus:
        await bus.subscribe(subscriber_id="s", topic="a", handler=rejects)
        await bus.publish(bus.create_message("a", "test"))
        await bus.drain()

    assert calls == 1
    (letter,) = bus.dead_letters
    assert letter.attempts == 1
    assert letter.error_kind is ErrorKind.VALIDATION


async def test_hung_handler_times_out_and_is_dead_lettered(clock: Clock) -> None:
    never = asyncio.Event()
    after = Recorder()

    async def hangs_on_first(message: Message) -> None:
        if message.payload == 0:
            await never.wait()
        await after(message)

    async with make_bus(clock, retry=NO_RETRY) as bus:
        await bus.subscribe(
            subscriber_id="s", topic="a", handler=hangs_on_first, handler_timeout=5.0
        )
        started = clock.monotonic()
        await publish_many(bus, "a", 3)
        await bus.drain()
        waited = clock.monotonic() - started

    (letter,) = bus.dead_letters
    assert isinstance(letter.error, DeadlineExceeded)
    assert letter.message.payload == 0
    assert after.payloads == [1, 2]
    assert waited == pytest.approx(5.0)


async def test_timed_out_handler_is_retried_as_a_timeout(clock: Clock) -> None:
    calls = 0

    async def slow_first_time(message: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await clock.sleep(60)

    policy = RetryPolicy(max_attempts=2, initial_delay=0.1, jitter=Jitter.NONE)
    async with make_bus(clock, retry=policy, handler_timeout=1.0) as bus:
        await bus.subscribe(subscriber_id="s", topic="a", handler=slow_first_time)
        await bus.publish(bus.create_message("a", "test"))
        await bus.drain()

    assert calls == 2
    assert bus.dead_letters == ()
    assert bus.stats().delivered == 1


async def test_failing_dead_letter_handler_does_not_loop(clock: Clock) -> None:
    async def fails(message: Message) -> None:
        raise PermanentError("nope")

    async with make_bus(clock, retry=NO_RETRY) as bus:
        await bus.subscribe(subscriber_id="worker", topic="a", handler=fails)
        await bus.subscribe(subscriber_id="dlq", topic="_dead_letter.>", handler=fails)
        await bus.publish(bus.create_message("a", "test"))
        await bus.drain()

    letters = bus.dead_letters
    assert [letter.subscriber_id for letter in letters] == ["worker", "dlq"]
    assert isinstance(letters[1].message.payload, DeadLetter)
    assert [m.topic for m in bus.history()] == ["a", "_dead_letter.a"]


async def test_dead_letters_never_wait_on_a_full_dead_letter_queue(clock: Clock) -> None:
    never = asyncio.Event()

    async def fails(message: Message) -> None:
        raise PermanentError("nope")

    async def hangs(message: Message) -> None:
        await never.wait()

    async with make_bus(clock, retry=NO_RETRY) as bus:
        await bus.subscribe(subscriber_id="worker", topic="a", handler=fails)
        await bus.subscribe(subscriber_id="dlq", topic="_dead_letter.>", handler=hangs, max_queue=1)
        await publish_many(bus, "a", 3)
        # Returns only once "worker" has dealt with all three: it never blocked on "dlq".
        await bus.unsubscribe("worker")

        assert len(bus.dead_letters) == 3
        (dlq,) = bus.stats().subscribers
        assert dlq.queue_depth == 3
        never.set()


# -- history and tracing -----------------------------------------------------------------------


async def test_history_is_bounded_and_keeps_the_newest_in_order(clock: Clock) -> None:
    async with make_bus(clock, max_history=5) as bus:
        published = await publish_many(bus, "a.b", 12)

    assert bus.history() == published[-5:]
    assert bus.stats().history_size == 5


async def test_history_filters_by_pattern_and_limit(clock: Clock) -> None:
    async with make_bus(clock) as bus:
        for topic in ["orders.new", "market.tick", "orders.filled", "orders.new"]:
            await bus.publish(bus.create_message(topic, "test", topic))

    assert [m.payload for m in bus.history("orders.*")] == [
        "orders.new",
        "orders.filled",
        "orders.new",
    ]
    assert [m.payload for m in bus.history("orders.*", limit=2)] == ["orders.filled", "orders.new"]
    assert bus.history(limit=0) == []
    assert len(bus.history(limit=100)) == 4


async def test_a_decision_can_be_traced_from_signal_to_order(clock: Clock) -> None:
    orders = Recorder()

    async with make_bus(clock) as bus:

        async def decide(signal: Message) -> None:
            await bus.publish(bus.create_message("decisions.btc", "coordinator", caused_by=signal))

        async def execute(decision: Message) -> None:
            await bus.publish(bus.create_message("orders.btc", "execution", caused_by=decision))

        await bus.subscribe(subscriber_id="coordinator", topic="signals.*", handler=decide)
        await bus.subscribe(subscriber_id="execution", topic="decisions.*", handler=execute)
        await bus.subscribe(subscriber_id="audit", topic="orders.*", handler=orders)
        await bus.publish(bus.create_message("market.noise", "feed"))
        signal = bus.create_message("signals.btc", "ta-agent", {"side": "buy"})
        await bus.publish(signal)
        await bus.drain()

    (order,) = orders.messages
    chain = bus.trace(order.correlation_id)
    assert [m.topic for m in chain] == ["signals.btc", "decisions.btc", "orders.btc"]
    assert chain[0] == signal
    # Walking causation ids back from the order reaches the signal.
    by_id = {m.id: m for m in chain}
    walked = [order]
    while walked[-1].causation_id is not None:
        walked.append(by_id[walked[-1].causation_id])
    assert walked[::-1] == chain


async def test_bus_messages_carry_the_bus_clock_time(clock: Clock) -> None:
    await clock.sleep(42.0)
    bus = make_bus(clock)

    message = bus.create_message("a", "test")

    assert message.timestamp == clock.timestamp()


def test_same_seed_same_scenario_gives_the_same_ids_and_retry_times() -> None:
    async def scenario(clock: SimulatedClock) -> list[tuple[str, float]]:
        seen: list[tuple[str, float]] = []

        async def flaky(message: Message) -> None:
            seen.append((message.id, clock.monotonic()))
            if len(seen) % 2:
                raise TransientError("flaky")

        policy = RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=Jitter.FULL)
        async with MessageBus(clock=clock, rng=random.Random(99), retry=policy) as bus:
            await bus.subscribe(subscriber_id="s", topic="a", handler=flaky)
            await publish_many(bus, "a", 5)
            await bus.drain()
        return seen

    runs = []
    for _ in range(2):
        clock = SimulatedClock()
        runs.append(run_simulated(scenario(clock), clock=clock))
    first, second = runs

    assert first == second
    assert len({time for _, time in first}) > 1


# -- drain, stats, lifecycle ---------------------------------------------------------------------


async def test_drain_waits_for_handlers_that_suspend(clock: Clock) -> None:
    done = Recorder()

    async def slow(message: Message) -> None:
        await clock.sleep(3.0)
        await done(message)

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="s", topic="a", handler=slow)
        await publish_many(bus, "a", 4)
        await bus.drain()

        assert done.payloads == [0, 1, 2, 3]


async def test_drain_waits_for_messages_that_handlers_publish(clock: Clock) -> None:
    final = Recorder()

    async with make_bus(clock) as bus:

        async def relay(message: Message) -> None:
            await clock.sleep(1.0)
            hops = int(message.topic.split(".")[1])
            if hops < 3:
                await bus.publish(bus.create_message(f"hop.{hops + 1}", "relay", caused_by=message))
            else:
                await final(message)

        await bus.subscribe(subscriber_id="relay", topic="hop.*", handler=relay)
        await bus.publish(bus.create_message("hop.0", "test"))
        await bus.drain()

        assert [m.topic for m in final.messages] == ["hop.3"]


async def test_drain_from_a_handler_is_refused_instead_of_deadlocking(clock: Clock) -> None:
    async with make_bus(clock, retry=NO_RETRY) as bus:

        async def drains(message: Message) -> None:
            await bus.drain()

        await bus.subscribe(subscriber_id="s", topic="a", handler=drains)
        await bus.publish(bus.create_message("a", "test"))
        await bus.drain()

    (letter,) = bus.dead_letters
    assert isinstance(letter.error, PermanentError)
    assert "drain()" in str(letter.error)


async def test_stats_snapshot_counts_and_queue_depths(clock: Clock) -> None:
    release = asyncio.Event()

    async def gated(message: Message) -> None:
        await release.wait()

    failures = 0
    all_failed = asyncio.Event()

    async def fails(message: Message) -> None:
        nonlocal failures
        failures += 1
        if failures == 4:
            all_failed.set()
        raise PermanentError("no")

    async with make_bus(clock, retry=NO_RETRY) as bus:
        await bus.subscribe(subscriber_id="gated", topic="a", handler=gated, max_queue=50)
        await bus.subscribe(subscriber_id="fails", topic="a", handler=fails)
        await bus.subscribe(subscriber_id="ok", topic="a", handler=Recorder())
        await publish_many(bus, "a", 4)
        # "ok" comes after "fails" in every route, so it has had all four by now too.
        await all_failed.wait()
        snapshot = bus.stats()
        release.set()
        await bus.drain()

    # Four originals and, as the failing handler already gave up on them, four dead-letter
    # notices (nobody subscribes to those).
    assert snapshot.published == 8
    by_id = {s.subscriber_id: s for s in snapshot.subscribers}
    assert by_id["gated"].queue_depth == 4
    assert by_id["gated"].max_queue == 50
    assert (by_id["ok"].delivered, by_id["ok"].queue_depth) == (4, 0)
    assert (by_id["fails"].failed, by_id["fails"].dead_lettered) == (4, 4)
    final = bus.stats()
    assert final.delivered == 8
    with pytest.raises(AttributeError):
        final.published = 0  # type: ignore[misc]


async def test_unsubscribe_handles_queued_messages_then_stops_delivery(clock: Clock) -> None:
    received = Recorder()

    async def slow(message: Message) -> None:
        await clock.sleep(1.0)
        await received(message)

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="s", topic="a", handler=slow)
        await publish_many(bus, "a", 3)
        left = await bus.unsubscribe("s")
        await publish_many(bus, "a", 2)
        await bus.drain()

    assert left == ()
    assert received.payloads == [0, 1, 2]
    assert bus.subscriber_ids() == ()
    assert bus.stats().delivered == 3


async def test_unsubscribe_without_drain_returns_what_was_not_handled(clock: Clock) -> None:
    never = asyncio.Event()
    started = asyncio.Event()

    async def hangs(message: Message) -> None:
        started.set()
        await never.wait()

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="s", topic="a", handler=hangs)
        published = await publish_many(bus, "a", 3)
        await started.wait()
        # The interrupted message counts as not handled, with the two behind it.
        left = await bus.unsubscribe("s", drain=False)

    assert left == tuple(published)


async def test_handler_cannot_unsubscribe_its_own_subscriber(clock: Clock) -> None:
    errors: list[ValidationError] = []

    async with make_bus(clock) as bus:

        async def leaves(message: Message) -> None:
            try:
                await bus.unsubscribe("self")
            except ValidationError as error:
                errors.append(error)

        await bus.subscribe(subscriber_id="self", topic="a", handler=leaves)
        await bus.publish(bus.create_message("a", "test"))
        await bus.drain()

    (error,) = errors
    assert error.field == "subscriber_id"


async def test_unsubscribe_unknown_id_is_rejected(clock: Clock) -> None:
    async with make_bus(clock) as bus:
        with pytest.raises(ValidationError) as caught:
            await bus.unsubscribe("ghost")

    assert caught.value.field == "subscriber_id"


async def test_publisher_blocked_on_an_unsubscribed_queue_moves_on(clock: Clock) -> None:
    never = asyncio.Event()
    other = Recorder()

    async def hangs(message: Message) -> None:
        await never.wait()

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="hung", topic="a", handler=hangs, max_queue=1)
        await bus.subscribe(subscriber_id="other", topic="a", handler=other)
        await publish_many(bus, "a", 1)
        blocked = asyncio.ensure_future(bus.publish(bus.create_message("a", "test", 1)))
        assert await still_pending(blocked, seconds=60.0)

        await bus.unsubscribe("hung", drain=False)
        await blocked
        await bus.drain()

    assert other.payloads == [0, 1]


async def test_publish_suspended_mid_way_skips_a_subscriber_that_left(clock: Clock) -> None:
    release = asyncio.Event()
    later = Recorder()

    async def gated(message: Message) -> None:
        await release.wait()

    async def records_then_works(message: Message) -> None:
        await later(message)
        await clock.sleep(1.0)

    async def release_soon() -> None:
        await clock.sleep(0.5)
        release.set()

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="gate", topic="a", handler=gated, max_queue=1)
        await bus.subscribe(subscriber_id="later", topic="a", handler=records_then_works)
        await publish_many(bus, "a", 1)
        # This publish waits for room at "gate" before it reaches "later".
        blocked = asyncio.ensure_future(bus.publish(bus.create_message("a", "test", 1)))
        releaser = asyncio.ensure_future(release_soon())
        assert await still_pending(blocked, seconds=0.1)

        # "later" leaves while that publish is suspended; the publish resumes mid-way.
        left = await bus.unsubscribe("later")
        await blocked
        await releaser
        await bus.drain()

    assert later.payloads == [0]
    assert left == ()


async def test_consumer_tasks_are_named_and_stopped_on_close(clock: Clock) -> None:
    bus = make_bus(clock, name="desk")
    await bus.subscribe(subscriber_id="s", topic="a", handler=Recorder())
    await bus.start()
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert "desk-subscriber:s" in names

    await bus.close()

    names = {task.get_name() for task in asyncio.all_tasks()}
    assert "desk-subscriber:s" not in names
    assert not bus.running


async def test_close_drains_by_default(clock: Clock) -> None:
    received = Recorder()

    async def slow(message: Message) -> None:
        await clock.sleep(2.0)
        await received(message)

    bus = make_bus(clock)
    await bus.subscribe(subscriber_id="s", topic="a", handler=slow)
    await bus.start()
    await publish_many(bus, "a", 3)

    left = await bus.close()

    assert left == {}
    assert received.payloads == [0, 1, 2]


async def test_close_with_drain_timeout_cancels_and_reports_unhandled(clock: Clock) -> None:
    never = asyncio.Event()

    async def hangs(message: Message) -> None:
        await never.wait()

    bus = make_bus(clock)
    await bus.subscribe(subscriber_id="s", topic="a", handler=hangs)
    await bus.start()
    published = await publish_many(bus, "a", 2)

    left = await bus.close(drain_timeout=10.0)

    assert left == {"s": tuple(published)}


async def test_publish_on_a_bus_that_is_not_running_raises(clock: Clock) -> None:
    bus = make_bus(clock)
    with pytest.raises(BusClosedError):
        await bus.publish(bus.create_message("a", "test"))

    await bus.start()
    await bus.close()

    with pytest.raises(BusClosedError):
        await bus.publish(bus.create_message("a", "test"))
    assert bus.history() == []


async def test_publisher_waiting_for_room_fails_when_the_bus_closes(clock: Clock) -> None:
    never = asyncio.Event()

    async def hangs(message: Message) -> None:
        await never.wait()

    bus = make_bus(clock)
    await bus.subscribe(subscriber_id="s", topic="a", handler=hangs, max_queue=1)
    await bus.start()
    await publish_many(bus, "a", 1)
    blocked = asyncio.ensure_future(bus.publish(bus.create_message("a", "test")))
    assert await still_pending(blocked, seconds=60.0)

    await bus.close(drain=False)

    with pytest.raises(BusClosedError):
        await blocked


async def test_publisher_let_in_just_before_close_fails_at_the_next_full_queue(
    clock: Clock,
) -> None:
    freed = asyncio.Event()
    never = asyncio.Event()

    async def frees_one_slot(message: Message) -> None:
        await clock.sleep(1.0)
        freed.set()

    async def hangs(message: Message) -> None:
        await never.wait()

    bus = make_bus(clock)
    await bus.subscribe(subscriber_id="first", topic="a", handler=frees_one_slot, max_queue=1)
    await bus.subscribe(subscriber_id="second", topic="a", handler=hangs, max_queue=1)
    await bus.start()
    await publish_many(bus, "a", 1)
    blocked = asyncio.ensure_future(bus.publish(bus.create_message("a", "test")))
    await freed.wait()

    # The publisher has been let into "first" but has not run yet; "second" is still full.
    await bus.close(drain=False)

    with pytest.raises(BusClosedError):
        await blocked


@pytest.mark.parametrize("let_in", [False, True], ids=["while-waiting", "after-let-in"])
async def test_cancelled_waiting_publisher_passes_its_slot_on(clock: Clock, let_in: bool) -> None:
    received = Recorder()
    freeing = asyncio.Event()

    async def slow(message: Message) -> None:
        await clock.sleep(1.0)
        # The test task wakes before the consumer frees the slot and lets "first" in.
        freeing.set()
        await received(message)

    async with make_bus(clock) as bus:
        await bus.subscribe(subscriber_id="s", topic="a", handler=slow, max_queue=1)
        await publish_many(bus, "a", 1)
        first = asyncio.ensure_future(bus.publish(bus.create_message("a", "test", "cancelled")))
        second = asyncio.ensure_future(bus.publish(bus.create_message("a", "test", "kept")))
        # Both wait in line for the one slot; the first one gives up, either while it waits
        # or after it was let in but before it could use the slot.
        if let_in:
            await freeing.wait()
        else:
            assert await still_pending(first, seconds=0.5)
        first.cancel()
        await second
        with pytest.raises(asyncio.CancelledError):
            await first
        await bus.drain()

    assert received.payloads == [0, "kept"]


async def test_exiting_the_block_with_an_error_does_not_wait_for_hung_handlers(
    clock: Clock,
) -> None:
    never = asyncio.Event()

    async def hangs(message: Message) -> None:
        await never.wait()

    bus = make_bus(clock)

    async def fails_inside_the_block() -> None:
        async with bus:
            await bus.subscribe(subscriber_id="s", topic="a", handler=hangs)
            await publish_many(bus, "a", 1)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fails_inside_the_block()

    assert not bus.running


@pytest.mark.realtime
async def test_bus_works_on_a_real_event_loop(clock: Clock) -> None:
    recorders = [Recorder() for _ in range(3)]
    async with MessageBus(clock=clock, max_queue=8) as bus:
        for index, recorder in enumerate(recorders):
            await bus.subscribe(subscriber_id=f"s{index}", topic="a.>", handler=recorder)
        published = await publish_many(bus, "a.b", 1_000)
        await bus.drain()

    for recorder in recorders:
        assert recorder.messages == published
