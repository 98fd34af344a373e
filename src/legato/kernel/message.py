"""Messages: the immutable values the `MessageBus` carries, their ids and their topics.

A `Message` names its topic (a dotted string such as ``market.btc-usd.tick``), the component
that sent it, a payload, the time it was created (from a `Clock`) and two tracing ids:

- `correlation_id` is shared by every message of one chain of work. A message that starts a
  chain (a market signal) gets its own id as correlation id; every message it causes, and
  every message those cause, carries the same value.
- `causation_id` is the id of the message that directly caused this one (None for a root).

So a decision can be followed from signal to order: select by correlation id, then link each
message to its parent by causation id. `create_message(..., caused_by=parent)` fills both.

Ids come from a `MessageIds` source: 32 lowercase hex digits, the first 12 the creation time
in milliseconds and the rest a random number that is incremented within the same
millisecond, so ids from one source sort in creation order (the ULID layout, in hex).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError

__all__ = [
    "Message",
    "MessageIds",
    "create_message",
    "stamped_message",
    "validate_pattern",
    "validate_topic",
]

_SEGMENT = r"[A-Za-z0-9_-]+"
_TOPIC_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_TOPIC_EXPECTED = (
    "a dotted topic such as 'orders.btc-usd.filled': one or more non-empty segments of "
    "letters, digits, '_' or '-', separated by single dots"
)
_PATTERN_EXPECTED = (
    "a dotted topic pattern such as 'orders.*.filled' or 'market.>': segments of letters, "
    "digits, '_' or '-', or '*' (exactly one segment), or '>' (one or more trailing segments, "
    "last position only)"
)
_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1


def validate_topic(topic: str) -> str:
    """Return `topic` if it is a valid concrete topic, else raise `ValidationError`."""
    if not isinstance(topic, str):
        raise ValidationError("topic", topic, _TOPIC_EXPECTED)
    return _checked_topic(topic)


def validate_pattern(pattern: str) -> tuple[str, ...]:
    """Return the segments of subscription `pattern`, or raise `ValidationError` if invalid."""
    if not isinstance(pattern, str):
        raise ValidationError("topic", pattern, _PATTERN_EXPECTED)
    return _checked_pattern(pattern)


# Topics repeat endlessly: cache the verdicts so creating a message costs one dict lookup.
@lru_cache(maxsize=4096)
def _checked_topic(topic: str) -> str:
    if _TOPIC_RE.fullmatch(topic) is None:
        raise ValidationError("topic", topic, _TOPIC_EXPECTED)
    return topic


@lru_cache(maxsize=1024)
def _checked_pattern(pattern: str) -> tuple[str, ...]:
    if not pattern:
        raise ValidationError("topic", pattern, _PATTERN_EXPECTED)
    segments = tuple(pattern.split("."))
    for index, segment in enumerate(segments):
        if segment == "*":
            continue
        if segment == ">":
            if index != len(segments) - 1:
                raise ValidationError("topic", pattern, _PATTERN_EXPECTED)
            continue
        if re.fullmatch(_SEGMENT, segment) is None:
            raise ValidationError("topic", pattern, _PATTERN_EXPECTED)
    return segments


class MessageIds:
    """A source of unique message ids that sort in the order they were made.

    Pass a seeded `random.Random` to get the same ids on every run of a simulated scenario.
    Two sources on the same millisecond produce ids whose order between them is arbitrary;
    order within one source is always creation order, even if the wall clock steps back.
    """

    __slots__ = ("_last", "_rng")

    def __init__(self, rng: random.Random | None = None) -> None:
        # An unseeded Random draws its seed from the operating system: ids from separate
        # processes must not collide. Reproducible runs pass a seeded one.
        self._rng = rng if rng is not None else random.Random()
        self._last = 0

    def next_id(self, timestamp: float) -> str:
        """Return a new id for a message created at `timestamp` (POSIX seconds).

        The id is greater than every id this source returned before.
        """
        millis = int(timestamp * 1000)
        if millis > self._last >> _RANDOM_BITS:
            candidate = (millis << _RANDOM_BITS) | self._rng.getrandbits(_RANDOM_BITS)
        else:
            # Same millisecond, or the wall clock stepped back: count up from the last id, as
            # ULID's monotonic mode does (and skip drawing random bits, the costly part).
            candidate = self._last + 1
        self._last = candidate
        return f"{candidate:032x}"


@dataclass(frozen=True, slots=True)
class Message:
    """One immutable message on the bus; build it with `create_message`.

    `timestamp` is POSIX seconds from the creating clock; `created_at` gives it as a datetime.
    """

    id: str
    topic: str
    source: str
    payload: Any
    timestamp: float
    correlation_id: str
    causation_id: str | None = None

    @property
    def created_at(self) -> datetime:
        """Return the creation time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp, UTC)


# The id source of `create_message` calls that bring none: one per process, so their ids
# keep sorting in creation order whatever clock stamped them.
_PROCESS_IDS = MessageIds()
_REAL_CLOCK = RealClock()

# A message is built for every publish. The frozen dataclass's `__init__` writes each field
# through `object.__setattr__` (a name lookup per field); `_message` writes the same values
# straight through the slots' descriptors, in under half the time. The class stays frozen:
# nothing else can write them.
_new = object.__new__
_set_id: Any = Message.__dict__["id"].__set__
_set_topic: Any = Message.__dict__["topic"].__set__
_set_source: Any = Message.__dict__["source"].__set__
_set_payload: Any = Message.__dict__["payload"].__set__
_set_timestamp: Any = Message.__dict__["timestamp"].__set__
_set_correlation_id: Any = Message.__dict__["correlation_id"].__set__
_set_causation_id: Any = Message.__dict__["causation_id"].__set__


def _message(
    message_id: str,
    topic: str,
    source: str,
    payload: Any,
    timestamp: float,
    correlation_id: str,
    causation_id: str | None,
) -> Message:
    """`Message(...)` with these fields, built without the dataclass's `__init__`."""
    message: Message = _new(Message)
    _set_id(message, message_id)
    _set_topic(message, topic)
    _set_source(message, source)
    _set_payload(message, payload)
    _set_timestamp(message, timestamp)
    _set_correlation_id(message, correlation_id)
    _set_causation_id(message, causation_id)
    return message


def create_message(
    topic: str,
    source: str,
    payload: Any = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    *,
    caused_by: Message | None = None,
    clock: Clock | None = None,
    ids: MessageIds | None = None,
) -> Message:
    """Create a `Message` stamped with `clock`'s time and a new id from `ids`.

    `caused_by=parent` makes a follow-up message: it copies the parent's correlation id and
    sets `causation_id` to the parent's id (explicit ids given as well must agree with it).
    A message with no correlation id starts a chain: its correlation id is its own id.
    """
    return stamped_message(
        topic,
        source,
        payload,
        correlation_id,
        causation_id,
        caused_by,
        clock if clock is not None else _REAL_CLOCK,
        ids if ids is not None else _PROCESS_IDS,
    )


def stamped_message(
    topic: str,
    source: str,
    payload: Any,
    correlation_id: str | None,
    causation_id: str | None,
    caused_by: Message | None,
    clock: Clock,
    ids: MessageIds,
) -> Message:
    """`create_message` with every argument given, in order (the bus's per-publish path).

    Checks and builds exactly what `create_message` does; only the argument handling is
    left out, which is a measurable share of a message's cost on a busy bus.
    """
    validate_topic(topic)
    if not isinstance(source, str) or not source:
        raise ValidationError("source", source, "a non-empty string naming the sender")
    if caused_by is not None:
        if correlation_id is not None and correlation_id != caused_by.correlation_id:
            raise ValidationError(
                "correlation_id",
                correlation_id,
                f"None or the correlation id of caused_by ({caused_by.correlation_id!r})",
            )
        if causation_id is not None and causation_id != caused_by.id:
            raise ValidationError(
                "causation_id", causation_id, f"None or the id of caused_by ({caused_by.id!r})"
            )
        correlation_id = caused_by.correlation_id
        causation_id = caused_by.id
    timestamp = clock.timestamp()
    message_id = ids.next_id(timestamp)
    return _message(
        message_id,
        topic,
        source,
        payload,
        timestamp,
        correlation_id if correlation_id is not None else message_id,
        causation_id,
    )
