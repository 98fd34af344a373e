"""Messages: ids, timestamps, tracing ids and topic validation."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime

import pytest

from legato.kernel.errors import ValidationError
from legato.kernel.message import (
    Message,
    MessageIds,
    create_message,
    stamped_message,
    validate_pattern,
    validate_topic,
)
from legato.kernel.simulation import SimulatedClock

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_message_is_stamped_with_the_clock_time() -> None:
    clock = SimulatedClock(start=START)
    clock.advance(1.5)

    message = create_message("market.tick", "feed", {"price": 1}, clock=clock)

    assert message.timestamp == START.timestamp() + 1.5
    assert message.created_at == clock.now()


def test_ids_are_unique_and_sort_in_creation_order_within_one_millisecond() -> None:
    clock = SimulatedClock(start=START)
    ids = MessageIds(random.Random(3))

    made = [create_message("a.b", "s", i, clock=clock, ids=ids).id for i in range(5_000)]

    assert len(set(made)) == len(made)
    assert made == sorted(made)


def test_ids_keep_sorting_when_the_wall_clock_steps_back() -> None:
    ids = MessageIds(random.Random(3))

    later = ids.next_id(2_000_000_000.0)
    earlier_time = ids.next_id(1_000_000_000.0)

    assert earlier_time > later


def test_ids_sort_by_creation_time_across_milliseconds() -> None:
    ids = MessageIds(random.Random(3))

    first = ids.next_id(1_000.000)
    second = MessageIds(random.Random(4)).next_id(1_000.002)

    assert first < second


def test_seeded_id_sources_produce_the_same_ids() -> None:
    one = MessageIds(random.Random(42))
    two = MessageIds(random.Random(42))

    assert [one.next_id(5.0) for _ in range(3)] == [two.next_id(5.0) for _ in range(3)]


def test_root_message_starts_its_own_correlation_chain() -> None:
    message = create_message("signals.btc", "ta-agent", clock=SimulatedClock(start=START))

    assert message.correlation_id == message.id
    assert message.causation_id is None


def test_caused_by_copies_correlation_and_points_causation_at_the_parent() -> None:
    clock = SimulatedClock(start=START)
    signal = create_message("signals.btc", "ta-agent", clock=clock)
    decision = create_message("decisions.btc", "coordinator", caused_by=signal, clock=clock)
    order = create_message("orders.btc", "execution", caused_by=decision, clock=clock)

    assert decision.correlation_id == signal.id
    assert decision.causation_id == signal.id
    assert order.correlation_id == signal.id
    assert order.causation_id == decision.id


def test_caused_by_with_a_different_correlation_id_is_rejected() -> None:
    parent = create_message("a.b", "s", clock=SimulatedClock(start=START))

    with pytest.raises(ValidationError) as caught:
        create_message("a.c", "s", correlation_id="other", caused_by=parent)

    assert caught.value.field == "correlation_id"


def test_explicit_correlation_and_causation_ids_are_kept() -> None:
    message = create_message("a.b", "s", correlation_id="corr-1", causation_id="parent-1")

    assert (message.correlation_id, message.causation_id) == ("corr-1", "parent-1")


def test_message_is_frozen_and_slotted() -> None:
    message = create_message("a.b", "s", clock=SimulatedClock(start=START))

    with pytest.raises(dataclasses.FrozenInstanceError):
        message.topic = "c.d"  # type: ignore[misc]
    assert not hasattr(message, "__dict__")
    assert isinstance(message, Message)


@pytest.mark.parametrize(
    "topic", ["", ".a", "a.", "a..b", "a b", "a.*", "a.>", "*", "ä.b", "a/b", None, 3, ["a"]]
)
def test_invalid_topic_is_rejected_naming_field_value_and_accepted_form(topic: object) -> None:
    with pytest.raises(ValidationError) as caught:
        create_message(topic, "s")  # type: ignore[arg-type]

    assert caught.value.field == "topic"
    assert caught.value.value == topic
    assert "dotted topic" in caught.value.expected


def test_empty_source_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        create_message("a.b", "")

    assert caught.value.field == "source"


@pytest.mark.parametrize("topic", ["a", "a.b", "orders.btc-usd.filled", "_dead_letter.x", "A_1"])
def test_valid_topics_are_accepted(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize("pattern", ["a.*", "*", ">", "a.>", "*.b.>", "a.*.c"])
def test_valid_patterns_split_into_segments(pattern: str) -> None:
    assert validate_pattern(pattern) == tuple(pattern.split("."))


@pytest.mark.parametrize("pattern", ["", ["a"], "a.>.b", ">.a", "a..b", "a.b*", "a.>>", "a.#"])
def test_invalid_patterns_are_rejected(pattern: object) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_pattern(pattern)  # type: ignore[arg-type]

    assert caught.value.field == "topic"
    assert "'>'" in caught.value.expected


def test_created_message_equals_one_built_by_the_dataclass_and_stays_frozen() -> None:
    # `create_message` writes the fields through the slots, not the dataclass's __init__:
    # the result must be the same value, equally immutable.
    clock = SimulatedClock(start=START)
    root = create_message("a.b", "s", {"n": 1}, clock=clock, ids=MessageIds(random.Random(1)))
    child = create_message(
        "a.c", "s", [1, 2], caused_by=root, clock=clock, ids=MessageIds(random.Random(2))
    )

    for message in (root, child):
        built = Message(
            id=message.id,
            topic=message.topic,
            source=message.source,
            payload=message.payload,
            timestamp=message.timestamp,
            correlation_id=message.correlation_id,
            causation_id=message.causation_id,
        )
        assert message == built
        assert repr(message) == repr(built)
        assert hash((message.id, message.topic)) == hash((built.id, built.topic))
        with pytest.raises(dataclasses.FrozenInstanceError):
            message.topic = "x.y"  # type: ignore[misc]
    assert child.correlation_id == root.id
    assert child.causation_id == root.id


def test_stamped_message_is_create_message_with_every_argument_given() -> None:
    clock = SimulatedClock(start=START)
    parent = create_message("a.b", "s", clock=clock, ids=MessageIds(random.Random(5)))

    plain = create_message(
        "a.c", "s", {"k": 1}, caused_by=parent, clock=clock, ids=MessageIds(random.Random(9))
    )
    stamped = stamped_message(
        "a.c", "s", {"k": 1}, None, None, parent, clock, MessageIds(random.Random(9))
    )

    assert stamped == plain
    with pytest.raises(ValidationError):
        stamped_message("a..c", "s", None, None, None, None, clock, MessageIds())
    with pytest.raises(ValidationError):
        stamped_message("a.c", "", None, None, None, None, clock, MessageIds())
    with pytest.raises(ValidationError):
        stamped_message("a.c", "s", None, "other", None, parent, clock, MessageIds())
