"""Fault injection for the paper venue: make it fail the ways real venues fail, on purpose.

A `Fault` says what goes wrong (`FaultKind`), on which venue method, and when: on the Nth
call of that method, from or until a virtual time, with a seeded probability, a given number
of times. `FaultPlan` (a paper venue's `faults` attribute) holds the active faults, picks the
ones that apply to each call and journals every fault it injected in `history`, so a chaos
run can report exactly what happened. Example::

    venue.faults.add(Fault.timeout_after_place(times=1))      # the next order is placed, but
                                                              # the caller sees a timeout
    venue.faults.add(Fault.transient("get_order", probability=0.2, times=None))
    venue.faults.add(Fault.rate_limited("place_order", retry_after=5.0, on_call=3))
    venue.faults.add(Fault.invisible(seconds=30.0))           # accepted, unseen for 30 s

All randomness comes from the `random.Random` the plan was given: the same seed and the same
sequence of calls inject the same faults.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict, Unpack

from legato.kernel.errors import ValidationError

__all__ = ["VENUE_METHODS", "Fault", "FaultKind", "FaultPlan", "FaultRecord", "FaultTiming"]

VENUE_METHODS = frozenset(
    {
        "place_order",
        "cancel_order",
        "get_order",
        "open_orders",
        "positions",
        "balances",
        "fills",
    }
)
_ORDER_METHODS = frozenset({"place_order", "cancel_order"})


class FaultTiming(TypedDict, total=False):
    """When a fault fires: the keywords every `Fault` factory accepts (see `Fault`)."""

    times: int | None
    on_call: int | None
    start: datetime | None
    end: datetime | None
    probability: float


class FaultKind(enum.Enum):
    """What goes wrong.

    TRANSIENT: the call fails with TransientError and has no effect (an HTTP 503).
    RATE_LIMITED: the call fails with RateLimitedError(retry_after) and has no effect (429).
    TIMEOUT_AFTER_EFFECT: the call takes effect (the order IS placed or cancelled), then the
    caller waits `seconds` and gets UnknownOutcomeError. On a query: DeadlineExceeded.
    TIMEOUT_BEFORE_EFFECT: the same error after the same wait, but nothing happened.
    INVISIBLE: place_order succeeds, but get_order, open_orders and cancel_order do not see
    the order for `seconds` (it is live and can fill meanwhile).
    REJECT: place_order or cancel_order fails with OrderRejected(reason), no effect.
    LATENCY: the call takes `seconds` longer; combines with any other fault.
    """

    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    TIMEOUT_AFTER_EFFECT = "timeout_after_effect"
    TIMEOUT_BEFORE_EFFECT = "timeout_before_effect"
    INVISIBLE = "invisible"
    REJECT = "reject"
    LATENCY = "latency"


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault rule: what, on which method, and when it fires.

    `method` is a venue method name, or None for every method. `times` is how often it fires
    before it is used up (None: forever). `on_call` restricts it to the venue's Nth call of
    `method` counted from the venue's creation (1-based; needs `method`). `start` and `end`
    bound it in virtual wall time (`clock.now()`; start inclusive, end exclusive).
    `probability` is the chance it fires on a call that meets every other condition.
    `seconds` is the timeout wait, the invisibility or the added latency; `retry_after` the
    hint a RATE_LIMITED answer carries; `reason` the text of a REJECT.
    """

    kind: FaultKind
    method: str | None = None
    times: int | None = 1
    on_call: int | None = None
    start: datetime | None = None
    end: datetime | None = None
    probability: float = 1.0
    seconds: float = 0.0
    retry_after: float = 1.0
    reason: str = "rejected by fault injection"

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FaultKind):
            raise ValidationError("kind", self.kind, "a FaultKind")
        if self.method is not None and self.method not in VENUE_METHODS:
            raise ValidationError("method", self.method, f"None or one of {sorted(VENUE_METHODS)}")
        if self.kind is FaultKind.INVISIBLE and self.method not in (None, "place_order"):
            raise ValidationError("method", self.method, "place_order (or None) for INVISIBLE")
        if self.kind is FaultKind.REJECT and self.method not in _ORDER_METHODS:
            raise ValidationError("method", self.method, "place_order or cancel_order for REJECT")
        if self.times is not None and (isinstance(self.times, bool) or self.times < 1):
            raise ValidationError("times", self.times, "an integer >= 1, or None for unlimited")
        if self.on_call is not None:
            if self.method is None:
                raise ValidationError("method", None, "a method name when on_call is given")
            if isinstance(self.on_call, bool) or self.on_call < 1:
                raise ValidationError("on_call", self.on_call, "an integer >= 1 (1-based)")
        for name in ("start", "end"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                raise ValidationError(name, moment, "an aware UTC datetime or None")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValidationError("end", self.end, f"a time after start {self.start}")
        if not 0 < self.probability <= 1:
            raise ValidationError("probability", self.probability, "a number in (0, 1]")
        if self.seconds < 0:
            raise ValidationError("seconds", self.seconds, "a number of seconds >= 0")
        if self.retry_after < 0:
            raise ValidationError("retry_after", self.retry_after, "a number of seconds >= 0")

    @classmethod
    def transient(cls, method: str | None = None, **when: Unpack[FaultTiming]) -> Fault:
        """The call fails with TransientError and has no effect."""
        return cls(FaultKind.TRANSIENT, method, **when)

    @classmethod
    def rate_limited(
        cls, method: str | None = None, retry_after: float = 1.0, **when: Unpack[FaultTiming]
    ) -> Fault:
        """The call is answered with RateLimitedError(retry_after) and has no effect."""
        return cls(FaultKind.RATE_LIMITED, method, retry_after=retry_after, **when)

    @classmethod
    def timeout_after_place(
        cls, method: str = "place_order", seconds: float = 10.0, **when: Unpack[FaultTiming]
    ) -> Fault:
        """The call takes effect, then times out: the caller gets UnknownOutcomeError."""
        return cls(FaultKind.TIMEOUT_AFTER_EFFECT, method, seconds=seconds, **when)

    @classmethod
    def timeout_before_place(
        cls, method: str = "place_order", seconds: float = 10.0, **when: Unpack[FaultTiming]
    ) -> Fault:
        """The call times out without effect; the caller still gets UnknownOutcomeError."""
        return cls(FaultKind.TIMEOUT_BEFORE_EFFECT, method, seconds=seconds, **when)

    @classmethod
    def invisible(cls, seconds: float, **when: Unpack[FaultTiming]) -> Fault:
        """place_order succeeds, but queries do not see the order for `seconds`."""
        return cls(FaultKind.INVISIBLE, "place_order", seconds=seconds, **when)

    @classmethod
    def reject(
        cls,
        method: str = "place_order",
        reason: str = "rejected by fault injection",
        **when: Unpack[FaultTiming],
    ) -> Fault:
        """The call fails with OrderRejected(reason) and has no effect."""
        return cls(FaultKind.REJECT, method, reason=reason, **when)

    @classmethod
    def latency(
        cls, seconds: float, method: str | None = None, **when: Unpack[FaultTiming]
    ) -> Fault:
        """The call takes `seconds` longer, then proceeds (with any other fault that applies)."""
        return cls(FaultKind.LATENCY, method, seconds=seconds, **when)


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One injected fault: when, on which call, which rule, and the order it touched."""

    at: datetime
    method: str
    call_number: int
    kind: FaultKind
    fault_id: int
    client_order_id: str | None = None


@dataclass(slots=True)
class _Armed:
    fault_id: int
    fault: Fault
    remaining: int | None


class FaultPlan:
    """The faults armed on one venue, chosen per call, with a journal of what fired.

    `rng` draws the probabilities; give a seeded one for a replayable run (default: seed 0).
    `history` lists every fault injected, oldest first.
    """

    __slots__ = ("_armed", "_next_id", "history", "rng")

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random(0)
        self.history: list[FaultRecord] = []
        self._armed: list[_Armed] = []
        self._next_id = 1

    def add(self, fault: Fault) -> int:
        """Arm `fault`; return its id (for `remove`)."""
        if not isinstance(fault, Fault):
            raise ValidationError("fault", fault, "a Fault (see Fault.transient and friends)")
        fault_id = self._next_id
        self._next_id += 1
        self._armed.append(_Armed(fault_id, fault, fault.times))
        return fault_id

    def remove(self, fault_id: int) -> None:
        """Disarm the fault with this id (no error if it is already used up)."""
        self._armed = [armed for armed in self._armed if armed.fault_id != fault_id]

    def clear(self) -> None:
        """Disarm every fault (the journal is kept)."""
        self._armed.clear()

    @property
    def active(self) -> tuple[Fault, ...]:
        """The faults still armed, in the order they were added."""
        return tuple(armed.fault for armed in self._armed)

    def select(
        self,
        method: str,
        call_number: int,
        now: datetime,
        client_order_id: str | None = None,
    ) -> tuple[float, Fault | None]:
        """Pick the faults for one call: (added latency, the one failure fault or None).

        Every LATENCY fault that applies adds its seconds; the first other fault that applies
        (in the order they were added) decides the call's outcome. Each fault that fires uses
        one of its `times` and is journaled.
        """
        latency = 0.0
        outcome: Fault | None = None
        for armed in list(self._armed):
            fault = armed.fault
            if outcome is not None and fault.kind is not FaultKind.LATENCY:
                continue
            if not self._applies(fault, method, call_number, now):
                continue
            # Draw only for faults that otherwise apply, so the draws depend on the calls alone.
            if fault.probability < 1.0 and self.rng.random() >= fault.probability:
                continue
            if fault.kind is FaultKind.LATENCY:
                latency += fault.seconds
            else:
                outcome = fault
            self.history.append(
                FaultRecord(now, method, call_number, fault.kind, armed.fault_id, client_order_id)
            )
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining == 0:
                    self._armed.remove(armed)
        return latency, outcome

    @staticmethod
    def _applies(fault: Fault, method: str, call_number: int, now: datetime) -> bool:
        if fault.method is not None and fault.method != method:
            return False
        # Only an order can be hidden or refused: for these, "every method" means placements.
        only_orders = fault.kind in (FaultKind.INVISIBLE, FaultKind.REJECT)
        if fault.method is None and only_orders and method != "place_order":
            return False
        if fault.on_call is not None and fault.on_call != call_number:
            return False
        if fault.start is not None and now < fault.start:
            return False
        return fault.end is None or now < fault.end
