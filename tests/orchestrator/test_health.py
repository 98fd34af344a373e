"""The worker health policy: thresholds, hysteresis, drain, eviction, and no flapping."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legato.kernel.errors import ValidationError
from legato.orchestrator.health import (
    DEFAULT_HEALTH_POLICY,
    HealthObservation,
    HealthPolicy,
    WorkerHealth,
    WorkerStatus,
    classify_observation,
    observe,
    request_drain,
)

POLICY = DEFAULT_HEALTH_POLICY
ON_TIME = HealthObservation(heartbeat_age=1.0)
LATE = HealthObservation(heartbeat_age=25.0)
MISSING = HealthObservation(heartbeat_age=40.0)
GONE = HealthObservation(heartbeat_age=120.0)


def run(observations: list[HealthObservation], status: WorkerStatus | None = None) -> WorkerStatus:
    current = status if status is not None else WorkerStatus()
    for step, observation in enumerate(observations):
        current = observe(current, observation, float(step), POLICY)
    return current


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0.0, WorkerHealth.HEALTHY),
        (19.9, WorkerHealth.HEALTHY),
        (20.0, WorkerHealth.DEGRADED),
        (30.0, WorkerHealth.UNHEALTHY),
        (89.9, WorkerHealth.UNHEALTHY),
        (90.0, WorkerHealth.EVICTED),
    ],
)
def test_heartbeat_age_thresholds_classify_one_observation(
    age: float, expected: WorkerHealth
) -> None:
    assert classify_observation(HealthObservation(heartbeat_age=age))[0] is expected


def test_getting_worse_takes_effect_on_the_first_observation() -> None:
    assert run([LATE]).health is WorkerHealth.DEGRADED
    assert run([MISSING]).health is WorkerHealth.UNHEALTHY
    assert run([GONE]).health is WorkerHealth.EVICTED


def test_recovery_needs_consecutive_good_observations() -> None:
    unhealthy = run([MISSING])
    assert run([ON_TIME, ON_TIME], unhealthy).health is WorkerHealth.UNHEALTHY
    assert run([ON_TIME, ON_TIME, ON_TIME], unhealthy).health is WorkerHealth.HEALTHY


def test_a_bad_observation_in_the_streak_restarts_the_count() -> None:
    unhealthy = run([MISSING])
    status = run([ON_TIME, ON_TIME, MISSING, ON_TIME, ON_TIME], unhealthy)
    assert status.health is WorkerHealth.UNHEALTHY
    assert run([ON_TIME], status).health is WorkerHealth.HEALTHY


def test_recovery_counts_distinct_heartbeats_not_repeated_looks() -> None:
    unhealthy = run([MISSING])
    same_beat = [HealthObservation(heartbeat_age=age, heartbeat_at=100.0) for age in (1, 2, 3, 4)]
    assert run(same_beat, unhealthy).health is WorkerHealth.UNHEALTHY
    fresh = [HealthObservation(heartbeat_age=1.0, heartbeat_at=at) for at in (110.0, 120.0)]
    assert run(fresh, run(same_beat, unhealthy)).health is WorkerHealth.HEALTHY


def test_recovery_goes_only_as_far_as_the_worst_observation_of_the_streak() -> None:
    unhealthy = run([MISSING])
    assert run([ON_TIME, LATE, ON_TIME], unhealthy).health is WorkerHealth.DEGRADED


def test_eviction_is_final_for_the_incarnation() -> None:
    evicted = run([GONE])
    assert run([ON_TIME] * 10, evicted).health is WorkerHealth.EVICTED
    assert request_drain(evicted, 5.0) == evicted


def test_a_rising_failure_ratio_degrades_only_with_enough_outcomes() -> None:
    failing = HealthObservation(heartbeat_age=1.0, failures=6, outcomes=10)
    too_few = HealthObservation(heartbeat_age=1.0, failures=3, outcomes=3)
    assert run([failing]).health is WorkerHealth.DEGRADED
    assert "6 of the last 10" in run([failing]).reason
    assert run([too_few]).health is WorkerHealth.HEALTHY


def test_drain_shows_as_draining_until_the_worker_goes_unhealthy() -> None:
    draining = request_drain(WorkerStatus(), 3.0)
    assert draining.state is WorkerHealth.DRAINING
    assert draining.changed_at == 3.0
    assert run([ON_TIME] * 5, draining).state is WorkerHealth.DRAINING
    assert run([MISSING], draining).state is WorkerHealth.UNHEALTHY
    assert request_drain(draining, 9.0) == draining


def test_draining_and_worse_states_take_no_new_work() -> None:
    takes_work = {state for state in WorkerHealth if state.accepts_work}
    assert takes_work == {WorkerHealth.HEALTHY, WorkerHealth.DEGRADED}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"degraded_after": 0}, "degraded_after"),
        ({"unhealthy_after": 10.0}, "unhealthy_after"),
        ({"evict_after": float("inf")}, "evict_after"),
        ({"failure_ratio_degraded": 1.5}, "failure_ratio_degraded"),
        ({"recovery_observations": 0}, "recovery_observations"),
        ({"min_outcomes": True}, "min_outcomes"),
    ],
)
def test_bad_thresholds_are_refused_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        replace(POLICY, **changes)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_an_observation_with_more_failures_than_outcomes_is_refused() -> None:
    with pytest.raises(ValidationError, match="failures"):
        HealthObservation(heartbeat_age=1.0, failures=3, outcomes=2)


ages = st.floats(min_value=0.0, max_value=200.0, allow_nan=False)
observations = st.lists(ages.map(lambda age: HealthObservation(heartbeat_age=age)), max_size=60)


@given(observations)
def test_the_state_is_never_better_than_the_latest_observation_allows_on_the_way_down(
    sequence: list[HealthObservation],
) -> None:
    status = WorkerStatus()
    for step, observation in enumerate(sequence):
        before = status
        status = observe(status, observation, float(step), POLICY)
        seen, _ = classify_observation(observation, POLICY)
        if seen.severity >= before.health.severity:
            assert status.health.severity >= seen.severity


@given(observations)
def test_every_improvement_follows_enough_consecutive_better_observations(
    sequence: list[HealthObservation],
) -> None:
    status = WorkerStatus()
    history = []
    for step, observation in enumerate(sequence):
        before = status
        status = observe(status, observation, float(step), POLICY)
        history.append(classify_observation(observation, POLICY)[0])
        if status.health.severity < before.health.severity:
            window = history[-POLICY.recovery_observations :]
            assert len(window) == POLICY.recovery_observations
            assert all(seen.severity < before.health.severity for seen in window)
            assert status.health.severity == max(seen.severity for seen in window)


@given(observations)
def test_once_evicted_always_evicted(sequence: list[HealthObservation]) -> None:
    status = WorkerStatus()
    evicted = False
    for step, observation in enumerate(sequence):
        status = observe(status, observation, float(step), POLICY)
        evicted = evicted or status.health is WorkerHealth.EVICTED
        assert (status.health is WorkerHealth.EVICTED) == evicted


@given(st.lists(st.sampled_from([ON_TIME, LATE]), min_size=1, max_size=80))
def test_alternating_around_a_threshold_does_not_flap(sequence: list[HealthObservation]) -> None:
    policy = HealthPolicy(recovery_observations=3)
    status = WorkerStatus()
    transitions = 0
    for step, observation in enumerate(sequence):
        after = observe(status, observation, float(step), policy)
        transitions += after.health is not status.health
        status = after
    # Each return to healthy costs three on-time beats, so changes are at most 2 per 4 steps.
    assert transitions <= 2 * (len(sequence) // 4) + 1
