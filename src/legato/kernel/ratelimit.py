"""Rate limiting: fair token buckets, strict sliding windows, and named budget groups.

The limiters and the group wait on a `Clock`, so they run on simulated time in tests. They
belong to one event loop and are not thread-safe.

- `TokenBucketRateLimiter(rate, capacity)`: refills `rate` tokens per second up to
  `capacity`. It smooths traffic but allows a burst after idle: in any interval of length `w`
  it grants at most `capacity + rate * w` tokens (so up to twice the budget in one window of
  `capacity / rate` seconds). Use it for your own fairness and smoothing.
- `SlidingWindowRateLimiter(limit, per)`: the strict one. Any half-open window of `per`
  seconds holds at most `limit` granted tokens, which is how exchanges count before they ban.
  It keeps one timestamp per token granted in the last window (at most `limit` of them).
- `RateLimitGroup`: the named pools of one remote API (an exchange's "orders" budget and its
  "general" budget). One call may draw from several pools at once; a `Budget` given to the
  group becomes a strict sliding window.

A `Budget(limit, per)` is the plain value "limit per `per` seconds"; `Budget.violations` and
`token_bucket_violations` check a recorded history of grants against either guarantee, for
stress tests and chaos invariants.

Waiting is fair: every limiter serves its waiters strictly in arrival order, and a request
that cannot be served makes everyone behind it wait (no barging, so a big request is never
starved by a stream of small ones). `try_acquire` never jumps that queue either. A waiter that
is cancelled leaves the queue having taken nothing.

A request on several pools joins every pool's queue at the same moment and takes from all of
them in one step, once it is first in every queue and every pool can give. It never holds the
tokens of one pool while waiting for another, so no set of requests can deadlock; because
arrival order is one global order, the earliest waiting request is always first everywhere it
queues and is served as soon as its pools refill. The price of that fairness is head-of-line
blocking: while an "orders + general" request waits for the orders pool, "general"-only
requests behind it wait too.

A server's retry-after hint goes to `penalize(seconds)` (or `drain_until(deadline)`, on the
clock's monotonic scale): nothing is granted before the hint expires. A token bucket is also
left empty at that moment and refills from there, so the client does not come back with a
full burst; a sliding window simply grants nothing until then.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError

__all__ = [
    "Budget",
    "PoolLimiter",
    "RateLimitGroup",
    "RateLimiter",
    "SlidingWindowRateLimiter",
    "TokenBucketRateLimiter",
    "token_bucket_violations",
]

# A bucket level computed from elapsed time can land a few ulps short of a whole token at the
# very instant the waiter was told to wake; this much shortfall still counts as "enough".
_TOKEN_TOLERANCE = 1e-9


def _count(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(field, value, "an integer >= 1")
    return value


def _seconds(field: str, value: object, *, allow_zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        expected = "a finite number of seconds >= 0" if allow_zero else "a finite number > 0"
        raise ValidationError(field, value, expected)
    return float(value)


@dataclass(frozen=True, slots=True)
class Budget:
    """A published limit: at most `limit` requests in any window of `per` seconds."""

    limit: int
    per: float

    def __post_init__(self) -> None:
        _count("limit", self.limit)
        _seconds("per", self.per)

    @property
    def rate(self) -> float:
        """The sustained rate this budget allows, in requests per second."""
        return self.limit / self.per

    def violations(self, grants: Iterable[tuple[float, int]]) -> int:
        """Count tokens granted beyond this budget, from `(time, tokens)` grants in time order.

        A token breaks the budget when, counting it, some half-open window of `per` seconds
        holds more than `limit` tokens: for token times `t`, `t[i + limit] < t[i] + per`.
        This is the check chaos runs and stress tests apply to recorded grants.
        """
        times = [time for time, tokens in grants for _ in range(tokens)]
        return sum(
            1
            for earlier, later in zip(times, times[self.limit :], strict=False)
            if later < earlier + self.per
        )


class RateLimiter(Protocol):
    """What every limiter offers: fair waiting, a non-waiting attempt, and server penalties."""

    async def acquire(self, tokens: int = 1) -> None:
        """Wait in line until `tokens` can be taken, then take them."""
        ...

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take `tokens` now if nobody is waiting and they are available; never waits."""
        ...

    @property
    def available_tokens(self) -> float:
        """How many tokens could be taken right now, ignoring queued waiters."""
        ...

    def drain_until(self, deadline: float) -> None:
        """Grant nothing before `deadline` (on the clock's monotonic scale)."""
        ...

    def penalize(self, seconds: float) -> None:
        """Grant nothing for the next `seconds` (a server's retry-after hint)."""
        ...


class _Waiter:
    """One queued request: the limiters it draws from, and how it is told to look again."""

    __slots__ = ("claims", "wakeup")

    def __init__(self, claims: tuple[tuple[_FairLimiter, int], ...]) -> None:
        self.claims = claims
        self.wakeup = asyncio.Event()


async def _wait_in_line(claims: tuple[tuple[_FairLimiter, int], ...], clock: Clock) -> None:
    """Queue on every claimed limiter, then take from all of them in one step when allowed."""
    waiter = _Waiter(claims)
    for limiter, _ in claims:
        limiter._waiters.append(waiter)
    try:
        while True:
            # Cleared before the check with no await in between, so no wake-up is ever lost.
            waiter.wakeup.clear()
            if all(limiter._waiters[0] is waiter for limiter, _ in claims):
                now = clock.monotonic()
                wait = max(limiter._shortfall(tokens, now) for limiter, tokens in claims)
                if wait <= 0.0:
                    # No await between the check and the take: a cancellation cannot land in
                    # between, so tokens are never taken by a waiter that then disappears.
                    for limiter, tokens in claims:
                        limiter._take(tokens, now)
                    return
                await clock.sleep(wait)
            else:
                await waiter.wakeup.wait()
    finally:
        _leave_line(waiter)


def _leave_line(waiter: _Waiter) -> None:
    """Remove a served or cancelled waiter and tell each queue's new head to look again."""
    for limiter, _ in waiter.claims:
        queue = limiter._waiters
        if queue[0] is waiter:
            queue.popleft()
            if queue:
                queue[0].wakeup.set()
        else:
            queue.remove(waiter)


class _FairLimiter:
    """The FIFO waiting shared by both limiters; subclasses say what is available."""

    __slots__ = ("_clock", "_waiters", "name")

    def __init__(self, clock: Clock | None, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValidationError("name", name, "a non-empty string")
        self._clock: Clock = RealClock() if clock is None else clock
        self._waiters: deque[_Waiter] = deque()
        self.name = name

    @property
    def clock(self) -> Clock:
        """The clock this limiter measures and waits on."""
        return self._clock

    @property
    def waiting(self) -> int:
        """How many requests are queued on this limiter."""
        return len(self._waiters)

    def _max_tokens(self) -> int:
        raise NotImplementedError

    def _shortfall(self, tokens: int, now: float) -> float:
        """Seconds until `tokens` can be taken (0.0 when they can be taken at `now`)."""
        raise NotImplementedError

    def _take(self, tokens: int, now: float) -> None:
        raise NotImplementedError

    def _check_tokens(self, tokens: object) -> int:
        if type(tokens) is not int or not 1 <= tokens <= self._max_tokens():
            raise ValidationError(
                "tokens",
                tokens,
                f"an integer from 1 to {self._max_tokens()} (the limiter's size)",
                limiter=self.name,
            )
        return tokens

    async def acquire(self, tokens: int = 1) -> None:
        """Wait in line until `tokens` can be taken, then take them.

        Raises ValidationError when `tokens` is not an integer from 1 to the limiter's size:
        a request larger than the burst could never be served.
        """
        self._check_tokens(tokens)
        if not self._waiters:
            now = self._clock.monotonic()
            if self._shortfall(tokens, now) == 0.0:
                self._take(tokens, now)
                return
        await _wait_in_line(((self, tokens),), self._clock)

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take `tokens` now if nobody is waiting and they are available; never waits."""
        self._check_tokens(tokens)
        if self._waiters:
            return False
        now = self._clock.monotonic()
        if self._shortfall(tokens, now) > 0.0:
            return False
        self._take(tokens, now)
        return True

    def drain_until(self, deadline: float) -> None:
        """Grant nothing before `deadline` (on the clock's monotonic scale)."""
        raise NotImplementedError

    def penalize(self, seconds: float) -> None:
        """Grant nothing for the next `seconds`: what a server's retry-after hint asks for."""
        seconds = _seconds("seconds", seconds, allow_zero=True)
        self.drain_until(self._clock.monotonic() + seconds)


class TokenBucketRateLimiter(_FairLimiter):
    """A token bucket refilled at `rate` tokens per second, holding at most `capacity`.

    The bucket starts full. In any interval of length `w` it grants at most
    `capacity + rate * w` tokens. The level is computed from the time elapsed since a
    reference instant and the whole tokens taken since then, never by adding small floats
    over and over, so refill stays exact over days of uptime. `name` labels the bucket in
    errors and reprs.
    """

    __slots__ = ("_base", "_capacity", "_consumed", "_monotonic", "_rate", "_reference")

    def __init__(
        self,
        rate: float,
        capacity: int,
        *,
        clock: Clock | None = None,
        name: str = "token-bucket",
    ) -> None:
        super().__init__(clock, name)
        self._rate = _seconds("rate", rate)
        self._capacity = _count("capacity", capacity)
        # Bound once: the fast paths read the clock on every call.
        self._monotonic = self._clock.monotonic
        # level(t) = base + (t - reference) * rate - consumed, capped at capacity.
        self._reference = self._monotonic()
        self._base = float(self._capacity)
        self._consumed = 0

    @classmethod
    def per(
        cls,
        limit: int,
        *,
        seconds: float,
        clock: Clock | None = None,
        name: str = "token-bucket",
    ) -> TokenBucketRateLimiter:
        """A bucket for "`limit` per `seconds`": capacity `limit`, rate `limit / seconds`.

        This allows up to `2 * limit` in one window right after idle; for a venue that bans
        on its window use `SlidingWindowRateLimiter` instead.
        """
        budget = Budget(limit=limit, per=seconds)
        return cls(budget.rate, budget.limit, clock=clock, name=name)

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def capacity(self) -> int:
        """The most tokens the bucket holds: the largest burst."""
        return self._capacity

    @property
    def available_tokens(self) -> float:
        """Tokens in the bucket right now (fractional while refilling), ignoring waiters."""
        level = self._base + (self._clock.monotonic() - self._reference) * self._rate
        level -= self._consumed
        return min(float(self._capacity), max(0.0, level))

    def _max_tokens(self) -> int:
        return self._capacity

    def _shortfall(self, tokens: int, now: float) -> float:
        level = self._base + (now - self._reference) * self._rate - self._consumed
        missing = tokens - min(level, self._capacity)
        if missing <= _TOKEN_TOLERANCE:
            return 0.0
        return missing / self._rate

    def _take(self, tokens: int, now: float) -> None:
        if self._base + (now - self._reference) * self._rate - self._consumed > self._capacity:
            # Full since some time ago: re-anchor at `now` so the idle refill is forgotten.
            self._reference = now
            self._base = float(self._capacity)
            self._consumed = 0
        self._consumed += tokens

    async def acquire(self, tokens: int = 1) -> None:
        """Wait in line until `tokens` can be taken, then take them.

        Raises ValidationError when `tokens` is not an integer from 1 to `capacity`.
        """
        # The fast path is inlined (no awaits, no allocations): it runs on every call.
        if type(tokens) is not int or not 1 <= tokens <= self._capacity:
            self._check_tokens(tokens)
        if not self._waiters:
            now = self._monotonic()
            level = self._base + (now - self._reference) * self._rate - self._consumed
            if level >= tokens - _TOKEN_TOLERANCE:
                if level > self._capacity:
                    self._reference = now
                    self._base = float(self._capacity)
                    self._consumed = 0
                self._consumed += tokens
                return
        await _wait_in_line(((self, tokens),), self._clock)

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take `tokens` now if nobody is waiting and they are in the bucket; never waits."""
        if type(tokens) is not int or not 1 <= tokens <= self._capacity:
            self._check_tokens(tokens)
        if self._waiters:
            return False
        now = self._monotonic()
        level = self._base + (now - self._reference) * self._rate - self._consumed
        if level < tokens - _TOKEN_TOLERANCE:
            return False
        if level > self._capacity:
            self._reference = now
            self._base = float(self._capacity)
            self._consumed = 0
        self._consumed += tokens
        return True

    def drain_until(self, deadline: float) -> None:
        """Grant nothing before `deadline`; the bucket is empty then and refills from there.

        A deadline that is not stricter than the bucket's current debt changes nothing.
        """
        deadline = _finite("deadline", deadline)
        # Both the old and the drained level grow at `rate`, so the drained one is stricter
        # everywhere exactly when the old level at the deadline is above zero.
        if self._base + (deadline - self._reference) * self._rate - self._consumed > 0.0:
            self._reference = deadline
            self._base = 0.0
            self._consumed = 0

    def __repr__(self) -> str:
        return (
            f"TokenBucketRateLimiter(name={self.name!r}, rate={self._rate}, "
            f"capacity={self._capacity}, waiting={len(self._waiters)})"
        )


class SlidingWindowRateLimiter(_FairLimiter):
    """A strict limiter: any half-open window of `per` seconds holds at most `limit` tokens.

    A token granted at time `t` frees its slot at `t + per` exactly, so for grants sorted by
    time `t[i + limit] >= t[i] + per` always holds. Use it for budgets a venue enforces by
    banning; remember that the venue counts on its own clock, after network latency, so leave
    a margin (a slightly smaller `limit` or a slightly longer `per`) when that matters.
    `name` labels it in errors and reprs.
    """

    __slots__ = ("_blocked_until", "_grants", "_limit", "_window")

    def __init__(
        self,
        limit: int,
        per: float,
        *,
        clock: Clock | None = None,
        name: str = "sliding-window",
    ) -> None:
        super().__init__(clock, name)
        self._limit = _count("limit", limit)
        self._window = _seconds("per", per)
        # One timestamp per token granted within the last window, oldest first.
        self._grants: deque[float] = deque()
        self._blocked_until = -math.inf

    @classmethod
    def from_budget(
        cls, budget: Budget, *, clock: Clock | None = None, name: str = "sliding-window"
    ) -> SlidingWindowRateLimiter:
        """The strict limiter enforcing `budget`."""
        return cls(budget.limit, budget.per, clock=clock, name=name)

    @property
    def budget(self) -> Budget:
        """The budget this limiter enforces."""
        return Budget(limit=self._limit, per=self._window)

    @property
    def available_tokens(self) -> float:
        """Free slots in the current window (0 while penalized), ignoring waiters."""
        now = self._clock.monotonic()
        if now < self._blocked_until:
            return 0
        self._expire(now)
        return self._limit - len(self._grants)

    def _max_tokens(self) -> int:
        return self._limit

    def _expire(self, now: float) -> None:
        grants = self._grants
        window = self._window
        # `grant + window <= now` is the very comparison the budget is defined by; computing
        # `now - grant` instead could round the other way and grant an ulp early.
        while grants and grants[0] + window <= now:
            grants.popleft()

    def _shortfall(self, tokens: int, now: float) -> float:
        self._expire(now)
        wait = self._blocked_until - now
        excess = len(self._grants) + tokens - self._limit
        if excess > 0:
            wait = max(wait, self._grants[excess - 1] + self._window - now)
        return wait if wait > 0.0 else 0.0

    def _take(self, tokens: int, now: float) -> None:
        if tokens == 1:  # nearly every call: no iterator to build
            self._grants.append(now)
        else:
            self._grants.extend(itertools.repeat(now, tokens))

    def drain_until(self, deadline: float) -> None:
        """Grant nothing before `deadline`; the window's own accounting carries on."""
        deadline = _finite("deadline", deadline)
        self._blocked_until = max(self._blocked_until, deadline)

    def __repr__(self) -> str:
        return (
            f"SlidingWindowRateLimiter(name={self.name!r}, limit={self._limit}, "
            f"per={self._window}, waiting={len(self._waiters)})"
        )


def token_bucket_violations(
    grants: Iterable[tuple[float, int]],
    *,
    rate: float,
    capacity: int,
    tolerance: float = 1e-6,
) -> int:
    """Count grants that break a token bucket's bound, from `(time, tokens)` in time order.

    A bucket of `capacity` refilled at `rate` grants at most `capacity + rate * w` tokens
    in any interval of length `w` (between two grants, both included). A grant breaks the
    bound when some interval ending with it holds more, by more than `tolerance` tokens.
    """
    violations = 0
    granted_before = 0  # tokens granted before the current one
    # The lowest `granted_before(i) - rate * t_i` over grants so far: the interval starting
    # there is the fullest one ending at the current grant.
    lowest_start = math.inf
    for time, tokens in grants:
        lowest_start = min(lowest_start, granted_before - rate * time)
        granted_before += tokens
        if granted_before - rate * time - lowest_start > capacity + tolerance:
            violations += 1
    return violations


def _finite(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(field, value, "a finite number on the clock's monotonic scale")
    return float(value)


PoolLimiter: TypeAlias = TokenBucketRateLimiter | SlidingWindowRateLimiter
"""A limiter that can serve as one pool of a `RateLimitGroup`."""


class RateLimitGroup:
    """The named rate-limit pools of one remote API; one call may draw from several.

    Pools are given as `Budget` values, each enforced by a strict `SlidingWindowRateLimiter`
    (what a venue needs), or as limiters built on the group's clock. Example::

        limits = RateLimitGroup(
            {"orders": Budget(limit=15, per=60.0), "general": Budget(limit=60, per=60.0)},
            clock=clock,
        )
        await limits.acquire("orders", "general")       # placing an order counts in both
        await limits.acquire("general", weights={"general": 5})   # a heavier query
        limits.penalize(30.0)                           # the venue answered 429, retry-after 30
    """

    __slots__ = ("_clock", "_plain_claims", "_pools")

    def __init__(
        self,
        pools: Mapping[str, Budget | PoolLimiter],
        *,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(pools, Mapping) or not pools:
            raise ValidationError("pools", pools, "a non-empty mapping of pool name to Budget")
        if clock is None:
            given = [spec.clock for spec in pools.values() if isinstance(spec, _FairLimiter)]
            clock = given[0] if given else RealClock()
        self._clock: Clock = clock
        self._pools: dict[str, PoolLimiter] = {}
        # The claims of an unweighted call, by its pool names: a venue client makes the same
        # few calls again and again, and the pools never change after construction.
        self._plain_claims: dict[tuple[str, ...], tuple[tuple[_FairLimiter, int], ...]] = {}
        for name, spec in pools.items():
            if not isinstance(name, str) or not name:
                raise ValidationError("pools", name, "pool names that are non-empty strings")
            if isinstance(spec, Budget):
                self._pools[name] = SlidingWindowRateLimiter.from_budget(
                    spec, clock=clock, name=name
                )
            elif isinstance(spec, TokenBucketRateLimiter | SlidingWindowRateLimiter):
                if spec.clock is not clock:
                    raise ValidationError(
                        f"pools[{name!r}]", spec, "a limiter built on the group's clock"
                    )
                self._pools[name] = spec
            else:
                raise ValidationError(
                    f"pools[{name!r}]",
                    spec,
                    "a Budget, TokenBucketRateLimiter or SlidingWindowRateLimiter",
                )

    @property
    def names(self) -> tuple[str, ...]:
        """The pool names, in the order they were given."""
        return tuple(self._pools)

    @property
    def clock(self) -> Clock:
        """The clock every pool measures and waits on."""
        return self._clock

    def pool(self, name: str) -> PoolLimiter:
        """The limiter behind one pool; acquiring on it directly queues in the same line."""
        try:
            return self._pools[name]
        except KeyError:
            raise ValidationError("pool", name, f"one of {sorted(self._pools)}") from None

    def _claims(
        self, pools: tuple[str, ...], weights: Mapping[str, int] | None
    ) -> tuple[tuple[_FairLimiter, int], ...]:
        if weights is None:
            try:
                claims = self._plain_claims.get(pools)
            except TypeError:  # an unhashable name: the check says what is wrong with it
                claims = None
            if claims is None:
                claims = self._plain_claims[pools] = self._checked_claims(pools, None)
            return claims
        return self._checked_claims(pools, weights)

    def _checked_claims(
        self, pools: tuple[str, ...], weights: Mapping[str, int] | None
    ) -> tuple[tuple[_FairLimiter, int], ...]:
        if weights is not None and not isinstance(weights, Mapping):
            raise ValidationError("weights", weights, "a mapping of pool name to token count")
        wanted: dict[str, int] = {}
        for name in (*pools, *(weights or {})):
            if not isinstance(name, str):
                raise ValidationError("pool", name, f"one of {sorted(self._pools)}")
            wanted[name] = 1 if weights is None else weights.get(name, 1)
        if not wanted:
            raise ValidationError("pools", pools, "at least one pool name")
        claims: list[tuple[_FairLimiter, int]] = []
        for name, tokens in wanted.items():
            limiter = self.pool(name)
            claims.append((limiter, limiter._check_tokens(tokens)))
        return tuple(claims)

    async def acquire(self, *pools: str, weights: Mapping[str, int] | None = None) -> None:
        """Wait in line, then take from every named pool at once.

        Each pool in `pools` gives one token unless `weights` says otherwise; pools named only
        in `weights` are drawn from too. Nothing is taken from any pool until all can give.
        """
        claims = self._claims(pools, weights)
        if self._try_claims(claims):
            return
        await _wait_in_line(claims, self._clock)

    def try_acquire(self, *pools: str, weights: Mapping[str, int] | None = None) -> bool:
        """Take from every named pool now if none has waiters and all can give; never waits."""
        return self._try_claims(self._claims(pools, weights))

    def _try_claims(self, claims: tuple[tuple[_FairLimiter, int], ...]) -> bool:
        now = self._clock.monotonic()
        for limiter, tokens in claims:
            if limiter._waiters or limiter._shortfall(tokens, now) > 0.0:
                return False
        for limiter, tokens in claims:
            limiter._take(tokens, now)
        return True

    def penalize(self, seconds: float, pools: Iterable[str] | None = None) -> None:
        """Grant nothing from `pools` (default: all) for `seconds`: a server's retry-after."""
        seconds = _seconds("seconds", seconds, allow_zero=True)
        self.drain_until(self._clock.monotonic() + seconds, pools)

    def drain_until(self, deadline: float, pools: Iterable[str] | None = None) -> None:
        """Grant nothing from `pools` (default: all) before `deadline` (monotonic scale)."""
        if isinstance(pools, str):
            pools = (pools,)
        targets = [self.pool(name) for name in (self._pools if pools is None else pools)]
        for limiter in targets:
            limiter.drain_until(deadline)

    def __repr__(self) -> str:
        return f"RateLimitGroup(pools={list(self._pools)})"
