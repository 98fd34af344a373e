"""Tests for legato.kernel.ratelimit: buckets, strict windows and groups, on simulated time."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.kernel.ratelimit import (
    Budget,
    RateLimitGroup,
    SlidingWindowRateLimiter,
    TokenBucketRateLimiter,
    token_bucket_violations,
)
from legato.kernel.simulation import SimulatedClock, run_simulated


async def _acquire_all(
    limiter: TokenBucketRateLimiter | SlidingWindowRateLimiter,
    clock: Clock,
    sizes: list[int],
) -> list[float]:
    """Start one acquirer per size, in order, all at once; return each one's grant time."""
    granted: list[float] = [math.nan] * len(sizes)

    async def one(index: int, tokens: int) -> None:
        await limiter.acquire(tokens)
        granted[index] = clock.monotonic()

    async with asyncio.TaskGroup() as group:
        for index, tokens in enumerate(sizes):
            group.create_task(one(index, tokens), name=f"acquirer-{index}")
    return granted


# --- token bucket: the scenarios -------------------------------------------------------------


async def test_twenty_concurrent_acquirers_get_ten_at_once_then_one_per_tenth_second(
    clock: Clock,
) -> None:
    limiter = TokenBucketRateLimiter(rate=10, capacity=10, clock=clock)

    granted = await _acquire_all(limiter, clock, [1] * 20)

    assert granted[:10] == [0.0] * 10
    assert granted[10:] == pytest.approx([0.1 * k for k in range(1, 11)], abs=1e-6)
    assert clock.monotonic() == pytest.approx(1.0, abs=1e-6)


async def test_a_long_idle_refills_the_bucket_only_up_to_capacity(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=10, capacity=10, clock=clock)
    await _acquire_all(limiter, clock, [1] * 10)

    await clock.sleep(3600)
    granted = await _acquire_all(limiter, clock, [1] * 15)

    assert granted[:10] == [3600.0] * 10
    assert granted[10:] == pytest.approx([3600 + 0.1 * k for k in range(1, 6)], abs=1e-6)


async def test_try_acquire_after_a_long_idle_finds_only_capacity(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=10, capacity=10, clock=clock)
    assert limiter.try_acquire(10)

    await clock.sleep(3600)
    successes = sum(limiter.try_acquire() for _ in range(30))

    assert successes == 10
    await clock.sleep(0.25)
    assert limiter.available_tokens == pytest.approx(2.5)


async def test_refill_adds_exactly_rate_times_elapsed(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=3, capacity=20, clock=clock)
    await limiter.acquire(20)
    assert limiter.available_tokens == 0.0

    await clock.sleep(2.5)
    assert limiter.available_tokens == pytest.approx(7.5, abs=1e-9)
    await clock.sleep(2.5)
    assert limiter.available_tokens == pytest.approx(15.0, abs=1e-9)
    assert limiter.try_acquire(15)
    assert not limiter.try_acquire(1)


async def test_a_burst_then_a_hundred_sustained_acquires_take_ten_seconds(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=10, capacity=20, clock=clock)

    burst = await _acquire_all(limiter, clock, [1] * 20)
    sustained = []
    for _ in range(100):
        await limiter.acquire()
        sustained.append(clock.monotonic())

    assert burst == [0.0] * 20
    assert sustained == pytest.approx([0.1 * k for k in range(1, 101)], abs=1e-6)
    assert clock.monotonic() == pytest.approx(10.0, abs=1e-6)


async def test_refill_stays_exact_over_a_day_of_sustained_use(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=0.7, capacity=10, clock=clock)
    await limiter.acquire(10)
    late = []
    # Taking exactly what refilled every 10 s for a day keeps the bucket near empty; a level
    # built from repeated float adds would drift and make later grants wait.
    for cycle in range(1, 8641):
        await clock.sleep(10)
        await limiter.acquire(7)
        if clock.monotonic() - 10 * cycle > 1e-6:
            late.append(cycle)

    assert late == []
    assert limiter.available_tokens == pytest.approx(0.0, abs=1e-6)


# --- fairness and cancellation -----------------------------------------------------------------


async def test_a_small_request_waits_behind_a_big_one_in_arrival_order(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=1, capacity=5, clock=clock)
    await limiter.acquire(5)

    granted = await _acquire_all(limiter, clock, [5, 1, 2, 1])

    # The 1-token request could have gone at t=1, but it arrived after the 5-token one.
    assert granted == pytest.approx([5.0, 6.0, 8.0, 9.0], abs=1e-6)


async def test_try_acquire_never_jumps_the_queue(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=1, capacity=5, clock=clock)
    await limiter.acquire(5)
    async with asyncio.TaskGroup() as group:
        big = group.create_task(limiter.acquire(5), name="big")
        await clock.sleep(2)
        assert limiter.available_tokens == pytest.approx(2.0)
        assert limiter.waiting == 1
        assert not limiter.try_acquire(1)
    assert big.done()
    assert clock.monotonic() == pytest.approx(5.0, abs=1e-6)


async def test_a_later_small_acquire_does_not_barge_past_a_waiting_big_one(
    clock: Clock,
) -> None:
    limiter = TokenBucketRateLimiter(rate=1, capacity=5, clock=clock)
    await limiter.acquire(5)
    async with asyncio.TaskGroup() as group:
        big = group.create_task(limiter.acquire(5), name="big")
        await clock.sleep(2)
        # Two tokens are in the bucket, but the 5-token request came first.
        await limiter.acquire(1)
        assert big.done()
    assert clock.monotonic() == pytest.approx(6.0, abs=1e-6)


async def test_a_cancelled_head_waiter_leaves_its_tokens_to_the_next(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=1, capacity=5, clock=clock)
    await limiter.acquire(5)
    granted: list[float] = []

    async def small() -> None:
        await limiter.acquire(1)
        granted.append(clock.monotonic())

    async with asyncio.TaskGroup() as group:
        big = group.create_task(limiter.acquire(4), name="big")
        group.create_task(small(), name="small")
        await clock.sleep(1.5)
        big.cancel()

    assert big.cancelled()
    # The small request is served the moment the big one leaves: the 1.5 tokens accrued are
    # still there, none taken by the cancelled waiter.
    assert granted == [1.5]
    assert limiter.available_tokens == pytest.approx(0.5)
    assert limiter.waiting == 0


async def test_a_cancelled_waiter_in_the_middle_changes_nobody_elses_turn(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=1, capacity=5, clock=clock)
    await limiter.acquire(5)
    granted: dict[str, float] = {}

    async def named(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        granted[name] = clock.monotonic()

    async with asyncio.TaskGroup() as group:
        group.create_task(named("first", 2), name="first")
        middle = group.create_task(named("middle", 3), name="middle")
        group.create_task(named("last", 1), name="last")
        await clock.sleep(1)
        middle.cancel()

    assert granted == pytest.approx({"first": 2.0, "last": 3.0}, abs=1e-6)
    assert limiter.waiting == 0


# --- penalties ---------------------------------------------------------------------------------


async def test_a_penalized_bucket_grants_nothing_until_the_hint_expires(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=2, capacity=10, clock=clock)
    limiter.penalize(30)

    assert not limiter.try_acquire()
    assert limiter.available_tokens == 0.0
    await limiter.acquire()

    # Empty at the deadline and refilling from there: the first token comes 1/rate later.
    assert clock.monotonic() == pytest.approx(30.5, abs=1e-6)


async def test_a_shorter_penalty_does_not_cut_a_longer_one(clock: Clock) -> None:
    limiter = SlidingWindowRateLimiter(limit=3, per=1, clock=clock)
    limiter.penalize(20)
    limiter.penalize(5)

    await limiter.acquire()

    assert clock.monotonic() == 20.0


async def test_a_penalty_reaches_a_waiter_already_sleeping(clock: Clock) -> None:
    limiter = TokenBucketRateLimiter(rate=1, capacity=1, clock=clock)
    await limiter.acquire()
    async with asyncio.TaskGroup() as group:
        waiter = group.create_task(limiter.acquire(), name="waiter")
        await clock.sleep(0.5)
        limiter.penalize(10)
    assert waiter.done()
    assert clock.monotonic() == pytest.approx(11.5, abs=1e-6)


# --- strict sliding window ---------------------------------------------------------------------


async def test_a_strict_window_never_grants_more_than_its_limit_per_window(clock: Clock) -> None:
    limiter = SlidingWindowRateLimiter(limit=5, per=10, clock=clock)

    granted = await _acquire_all(limiter, clock, [1] * 12)

    assert granted == [0.0] * 5 + [10.0] * 5 + [20.0] * 2


async def test_a_strict_window_frees_each_slot_exactly_one_window_after_its_grant(
    clock: Clock,
) -> None:
    limiter = SlidingWindowRateLimiter(limit=3, per=10, clock=clock)
    for _ in range(3):
        await limiter.acquire()
        await clock.sleep(1)

    granted = await _acquire_all(limiter, clock, [1, 1, 1])

    assert granted == [10.0, 11.0, 12.0]


async def test_a_bucket_for_the_same_budget_allows_twice_the_limit_in_one_window(
    clock: Clock,
) -> None:
    bucket = TokenBucketRateLimiter.per(10, seconds=10, clock=clock)
    strict = SlidingWindowRateLimiter.from_budget(Budget(limit=10, per=10), clock=clock)

    bucket_times = await _acquire_all(bucket, clock, [1] * 20)
    strict_start = clock.monotonic()
    strict_times = await _acquire_all(strict, clock, [1] * 20)

    assert sum(1 for t in bucket_times if t < 10.0) == 19
    assert sum(1 for t in strict_times if t < strict_start + 10.0) == 10


async def test_a_strict_window_serves_waiters_in_arrival_order(clock: Clock) -> None:
    limiter = SlidingWindowRateLimiter(limit=5, per=10, clock=clock)
    await limiter.acquire(3)
    async with asyncio.TaskGroup() as group:
        big = group.create_task(limiter.acquire(5), name="big")
        await clock.sleep(1)
        # Two slots are free, but the 5-slot request came first and holds them until t=20.
        await limiter.acquire(1)
        assert big.done()
    assert clock.monotonic() == 20.0


async def test_a_weighted_request_uses_as_many_slots_as_its_weight(clock: Clock) -> None:
    limiter = SlidingWindowRateLimiter(limit=4, per=1, clock=clock)
    assert limiter.try_acquire(3)
    assert not limiter.try_acquire(2)
    assert limiter.available_tokens == 1
    await limiter.acquire(2)
    assert clock.monotonic() == 1.0


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "capacity", "field"),
    [
        (0, 10, "rate"),
        (-1.0, 10, "rate"),
        (math.nan, 10, "rate"),
        (math.inf, 10, "rate"),
        (10, 0, "capacity"),
        (10, 2.5, "capacity"),
        (10, True, "capacity"),
    ],
)
def test_a_bucket_rejects_bad_settings_naming_the_field(
    rate: float, capacity: int, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        TokenBucketRateLimiter(rate=rate, capacity=capacity, clock=SimulatedClock())
    assert caught.value.field == field


@pytest.mark.parametrize("tokens", [0, -1, 11, 1.5, True])
def test_a_request_outside_one_to_capacity_is_rejected(tokens: int) -> None:
    limiter = TokenBucketRateLimiter(rate=1, capacity=10, clock=SimulatedClock())
    with pytest.raises(ValidationError) as caught:
        limiter.try_acquire(tokens)
    assert caught.value.field == "tokens"
    assert "1 to 10" in str(caught.value)
    with pytest.raises(ValidationError):
        run_simulated(limiter.acquire(tokens))
    assert limiter.available_tokens == 10


@pytest.mark.parametrize(
    ("limit", "per", "field"), [(0, 1.0, "limit"), (5, 0.0, "per"), (5, -3, "per")]
)
def test_a_budget_rejects_bad_values_naming_the_field(limit: int, per: float, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Budget(limit=limit, per=per)
    assert caught.value.field == field


def test_a_negative_penalty_is_rejected() -> None:
    limiter = SlidingWindowRateLimiter(limit=1, per=1, clock=SimulatedClock())
    with pytest.raises(ValidationError):
        limiter.penalize(-1)
    assert limiter.try_acquire()


# --- groups of named pools ---------------------------------------------------------------------


def _exchange(clock: Clock) -> RateLimitGroup:
    return RateLimitGroup(
        {"orders": Budget(limit=15, per=60.0), "general": Budget(limit=60, per=60.0)},
        clock=clock,
    )


async def test_a_burst_of_five_orders_goes_at_once_and_counts_in_both_pools(
    clock: Clock,
) -> None:
    limits = _exchange(clock)

    for _ in range(5):
        await limits.acquire("orders", "general")

    assert clock.monotonic() == 0.0
    assert limits.pool("orders").available_tokens == 10
    assert limits.pool("general").available_tokens == 55


async def test_orders_beyond_the_order_budget_wait_for_its_window(clock: Clock) -> None:
    limits = _exchange(clock)
    granted: list[float] = []

    async def order() -> None:
        await limits.acquire("orders", "general")
        granted.append(clock.monotonic())

    async with asyncio.TaskGroup() as group:
        for index in range(20):
            group.create_task(order(), name=f"order-{index}")

    assert granted == [0.0] * 15 + [60.0] * 5


async def test_a_weighted_call_draws_its_weight_from_the_pool(clock: Clock) -> None:
    limits = _exchange(clock)
    await limits.acquire("orders", weights={"general": 5})
    assert limits.pool("orders").available_tokens == 14
    assert limits.pool("general").available_tokens == 55


async def test_a_call_that_one_pool_cannot_serve_takes_nothing_from_the_others(
    clock: Clock,
) -> None:
    limits = _exchange(clock)
    assert limits.try_acquire(weights={"orders": 15})

    assert not limits.try_acquire("orders", "general")
    assert limits.pool("general").available_tokens == 60


async def test_a_retry_after_hint_drains_every_pool_until_it_expires(clock: Clock) -> None:
    limits = _exchange(clock)
    limits.penalize(30.0)

    assert not limits.try_acquire("general")
    await limits.acquire("general")
    assert clock.monotonic() == 30.0
    await limits.acquire("orders", "general")
    assert clock.monotonic() == 30.0


async def test_a_retry_after_hint_on_one_pool_leaves_the_others_open(clock: Clock) -> None:
    limits = _exchange(clock)
    limits.penalize(30.0, pools=["orders"])

    await limits.acquire("general")
    assert clock.monotonic() == 0.0
    await limits.acquire("orders", "general")
    assert clock.monotonic() == 30.0


async def test_a_multi_pool_waiter_holds_back_later_calls_on_its_pools_only(
    clock: Clock,
) -> None:
    limits = RateLimitGroup(
        {
            "orders": Budget(limit=1, per=10.0),
            "general": Budget(limit=100, per=10.0),
            "market_data": Budget(limit=100, per=10.0),
        },
        clock=clock,
    )
    await limits.acquire("orders", "general")
    granted: dict[str, float] = {}

    async def call(name: str, *pools: str) -> None:
        await limits.acquire(*pools)
        granted[name] = clock.monotonic()

    async with asyncio.TaskGroup() as group:
        group.create_task(call("second order", "orders", "general"), name="order")
        group.create_task(call("general query", "general"), name="general")
        group.create_task(call("ticker", "market_data"), name="ticker")

    # Strict arrival order per pool: the general query queued behind the waiting order.
    assert granted == {"second order": 10.0, "general query": 10.0, "ticker": 0.0}


async def test_crossing_multi_pool_requests_never_deadlock(clock: Clock) -> None:
    limits = RateLimitGroup(
        {"a": Budget(limit=3, per=1.0), "b": Budget(limit=2, per=1.0)}, clock=clock
    )
    granted: list[tuple[float, int]] = []

    async def call(index: int) -> None:
        weights = {"a": 1 + index % 3, "b": 1 + index % 2}
        await limits.acquire(weights=dict(reversed(weights.items())) if index % 2 else weights)
        granted.append((clock.monotonic(), index))

    async with asyncio.TaskGroup() as group:
        for index in range(30):
            group.create_task(call(index), name=f"call-{index}")

    assert [index for _, index in granted] == list(range(30))


async def test_a_pool_used_directly_shares_the_group_queue(clock: Clock) -> None:
    limits = _exchange(clock)
    assert limits.try_acquire(weights={"orders": 15})
    async with asyncio.TaskGroup() as group:
        group.create_task(limits.acquire("orders", "general"), name="order")
        await clock.sleep(1)
        assert limits.pool("general").waiting == 1
        assert not limits.pool("general").try_acquire()


def test_a_group_rejects_unknown_pools_and_oversized_weights() -> None:
    limits = _exchange(SimulatedClock())
    with pytest.raises(ValidationError) as unknown:
        limits.try_acquire("withdrawals")
    assert unknown.value.field == "pool"
    assert "general" in str(unknown.value)
    with pytest.raises(ValidationError) as oversized:
        limits.try_acquire(weights={"orders": 16})
    assert oversized.value.field == "tokens"
    with pytest.raises(ValidationError):
        limits.try_acquire()
    with pytest.raises(ValidationError) as not_a_name:
        limits.try_acquire(["orders"])  # type: ignore[arg-type]
    assert not_a_name.value.field == "pool"
    with pytest.raises(ValidationError) as not_a_mapping:
        limits.try_acquire(weights=[("orders", 1)])  # type: ignore[arg-type]
    assert not_a_mapping.value.field == "weights"
    assert limits.pool("orders").available_tokens == 15


def test_a_group_rejects_an_empty_mapping_and_a_limiter_on_another_clock() -> None:
    with pytest.raises(ValidationError):
        RateLimitGroup({})
    with pytest.raises(ValidationError) as other_clock:
        RateLimitGroup(
            {"a": TokenBucketRateLimiter(1, 1, clock=SimulatedClock())}, clock=SimulatedClock()
        )
    assert other_clock.value.field == "pools['a']"


def test_a_group_accepts_buckets_on_its_clock() -> None:
    clock = SimulatedClock()
    bucket = TokenBucketRateLimiter(rate=1, capacity=2, clock=clock)
    limits = RateLimitGroup({"smooth": bucket, "strict": Budget(limit=1, per=1.0)})
    assert limits.clock is clock
    assert limits.pool("smooth") is bucket
    assert limits.names == ("smooth", "strict")


# --- the budget checkers themselves ------------------------------------------------------------


def test_budget_violations_counts_tokens_inside_an_overfull_window() -> None:
    budget = Budget(limit=2, per=1.0)
    assert budget.violations([(0.0, 1), (0.5, 1), (1.0, 1)]) == 0
    assert budget.violations([(0.0, 1), (0.5, 1), (0.99, 1)]) == 1
    assert budget.violations([(0.0, 3)]) == 1


def test_token_bucket_violations_flags_only_grants_beyond_capacity_plus_refill() -> None:
    assert token_bucket_violations([(0.0, 2), (0.5, 1)], rate=2, capacity=2) == 0
    assert token_bucket_violations([(0.0, 2), (0.4, 1)], rate=2, capacity=2) == 1
    assert token_bucket_violations([(0.0, 3)], rate=2, capacity=2) == 1


# --- properties over random arrivals ----------------------------------------------------------

_arrivals = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=2.0, allow_nan=False),  # gap before this arrival
        st.integers(min_value=1, max_value=4),  # tokens requested
        st.booleans(),  # True: try_acquire, falling back to acquire
    ),
    min_size=1,
    max_size=40,
)


async def _replay(
    limiter: TokenBucketRateLimiter | SlidingWindowRateLimiter,
    clock: Clock,
    arrivals: list[tuple[float, int, bool]],
) -> list[tuple[float, int]]:
    grants: list[tuple[float, int]] = []

    async def arrive(tokens: int, tries_first: bool) -> None:
        if not (tries_first and limiter.try_acquire(tokens)):
            await limiter.acquire(tokens)
        grants.append((clock.monotonic(), tokens))

    async with asyncio.TaskGroup() as group:
        for index, (gap, tokens, tries_first) in enumerate(arrivals):
            await clock.sleep(gap)
            group.create_task(arrive(tokens, tries_first), name=f"arrival-{index}")
    assert sum(tokens for _, tokens in grants) == sum(tokens for _, tokens, _ in arrivals)
    return grants


@settings(max_examples=100, deadline=None)
@given(
    arrivals=_arrivals,
    rate=st.floats(min_value=0.5, max_value=20.0),
    capacity=st.integers(min_value=4, max_value=10),
)
def test_no_interval_sees_more_than_a_bucket_allows(
    arrivals: list[tuple[float, int, bool]], rate: float, capacity: int
) -> None:
    clock = SimulatedClock()
    limiter = TokenBucketRateLimiter(rate=rate, capacity=capacity, clock=clock)

    grants = run_simulated(_replay(limiter, clock, arrivals), clock=clock)

    assert token_bucket_violations(grants, rate=rate, capacity=capacity) == 0


@settings(max_examples=100, deadline=None)
@given(
    arrivals=_arrivals,
    limit=st.integers(min_value=4, max_value=10),
    per=st.floats(min_value=0.1, max_value=5.0),
)
def test_no_window_sees_more_than_a_strict_limiter_allows(
    arrivals: list[tuple[float, int, bool]], limit: int, per: float
) -> None:
    clock = SimulatedClock()
    limiter = SlidingWindowRateLimiter(limit=limit, per=per, clock=clock)

    grants = run_simulated(_replay(limiter, clock, arrivals), clock=clock)

    assert Budget(limit=limit, per=per).violations(grants) == 0


@settings(max_examples=100, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=1.0, allow_nan=False),  # gap before the call
            st.integers(min_value=0, max_value=3),  # tokens from pool "a" (0: not used)
            st.integers(min_value=0, max_value=2),  # tokens from pool "b" (0: not used)
        ).filter(lambda call: call[1] + call[2] > 0),
        min_size=1,
        max_size=40,
    ),
    per=st.floats(min_value=0.1, max_value=3.0),
)
def test_no_pool_of_a_group_ever_exceeds_its_budget(
    calls: list[tuple[float, int, int]], per: float
) -> None:
    clock = SimulatedClock()
    budgets = {"a": Budget(limit=3, per=per), "b": Budget(limit=2, per=per)}
    limits = RateLimitGroup(budgets, clock=clock)
    grants: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}

    async def call(weights: dict[str, int]) -> None:
        await limits.acquire(weights=weights)
        for name, tokens in weights.items():
            grants[name].append((clock.monotonic(), tokens))

    async def replay() -> None:
        async with asyncio.TaskGroup() as group:
            for index, (gap, from_a, from_b) in enumerate(calls):
                await clock.sleep(gap)
                weights = {name: n for name, n in (("a", from_a), ("b", from_b)) if n}
                group.create_task(call(weights), name=f"call-{index}")

    run_simulated(replay(), clock=clock)

    assert sum(len(history) for history in grants.values()) == sum(
        (a > 0) + (b > 0) for _, a, b in calls
    )
    for name, budget in budgets.items():
        assert budget.violations(grants[name]) == 0
