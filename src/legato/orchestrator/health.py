"""The worker health policy: from heartbeats and outcomes to healthy, degraded, unhealthy, evicted.

Pure values and functions, no I/O and no clock: the caller (the operator service's registry)
passes the time and what it observed, and keeps the returned `WorkerStatus` for next time.

- healthy: heartbeats arrive on time and failures are rare.
- degraded: heartbeats are late (older than `degraded_after`) or the recent failure ratio
  reached `failure_ratio_degraded`: still given work, but an operator should look.
- unhealthy: no heartbeat for `unhealthy_after` seconds (by default the lease length, so
  its leases have expired and the reaper is returning its tasks).
- evicted: no heartbeat for `evict_after` seconds. Final for that worker incarnation: its
  leases belong to the reaper, and a worker that comes back must restart under a new id.
- draining: an operator asked it to take no new work and let running work finish. Drain is a
  flag beside the health: a draining worker that stops heartbeating still reads unhealthy.

Getting worse takes effect on the first observation: the thresholds are already measured in
time, so a single late heartbeat is evidence enough. Getting better needs
`recovery_observations` good observations in a row (hysteresis), so a worker hovering at a
threshold does not flap between states. An observation that carries `heartbeat_at` counts
toward recovery only if it shows a heartbeat the streak has not counted yet: the registry
looks every second, but only a new heartbeat is new evidence.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from legato.kernel.errors import ValidationError

__all__ = [
    "DEFAULT_HEALTH_POLICY",
    "HealthObservation",
    "HealthPolicy",
    "WorkerHealth",
    "WorkerStatus",
    "classify_observation",
    "observe",
    "request_drain",
]


class WorkerHealth(enum.StrEnum):
    """The state the registry reports for a worker; ordered from best to worst by `severity`."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"
    EVICTED = "evicted"

    @property
    def severity(self) -> int:
        """0 for healthy up to 3 for evicted; draining has no severity of its own."""
        return _SEVERITY[self]

    @property
    def accepts_work(self) -> bool:
        """True when the worker should be given new tasks (placement counts it)."""
        return self in (WorkerHealth.HEALTHY, WorkerHealth.DEGRADED)


_SEVERITY = {
    WorkerHealth.HEALTHY: 0,
    WorkerHealth.DEGRADED: 1,
    WorkerHealth.DRAINING: 1,
    WorkerHealth.UNHEALTHY: 2,
    WorkerHealth.EVICTED: 3,
}


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds of the health policy, in seconds since the worker's last heartbeat.

    The defaults fit the worker's defaults (30 s lease, a heartbeat every 10 s); the operator
    guide explains them. Invariant: 0 < degraded_after < unhealthy_after < evict_after.
    """

    degraded_after: float = 20.0
    unhealthy_after: float = 30.0
    evict_after: float = 90.0
    failure_ratio_degraded: float = 0.5
    min_outcomes: int = 10
    recovery_observations: int = 3

    def __post_init__(self) -> None:
        for name in ("degraded_after", "unhealthy_after", "evict_after"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValidationError(name, value, "a finite number of seconds > 0")
        if not self.degraded_after < self.unhealthy_after < self.evict_after:
            raise ValidationError(
                "unhealthy_after",
                self.unhealthy_after,
                "degraded_after < unhealthy_after < evict_after "
                f"(got {self.degraded_after}, {self.unhealthy_after}, {self.evict_after})",
            )
        ratio = self.failure_ratio_degraded
        if not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ValidationError("failure_ratio_degraded", ratio, "a ratio > 0 and <= 1")
        for name in ("min_outcomes", "recovery_observations"):
            count = getattr(self, name)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValidationError(name, count, "an int >= 1")


DEFAULT_HEALTH_POLICY = HealthPolicy()
"""20 s to degraded, 30 s to unhealthy, 90 s to evicted, 3 good observations to recover."""


@dataclass(frozen=True, slots=True)
class HealthObservation:
    """What the registry saw of one worker at one instant.

    `heartbeat_age`: seconds since its last heartbeat. `failures` and `outcomes`: failed and
    total attempts in the recent window the caller keeps (say the last 50 attempts).
    `heartbeat_at`: when that heartbeat was, so that recovery counts distinct heartbeats.
    """

    heartbeat_age: float
    failures: int = 0
    outcomes: int = 0
    heartbeat_at: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.heartbeat_age, int | float) or math.isnan(self.heartbeat_age):
            raise ValidationError("heartbeat_age", self.heartbeat_age, "a number of seconds")
        if not 0 <= self.failures <= self.outcomes:
            raise ValidationError(
                "failures", self.failures, f"an int between 0 and outcomes ({self.outcomes})"
            )


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A worker's health as the policy tracks it between observations.

    `health` excludes draining; `state` is what operators see (draining shows unless the
    worker is unhealthy or evicted). `better_streak` counts consecutive observations better
    than `health`, and `streak_worst` is the worst of them: recovery goes that far.
    """

    health: WorkerHealth = WorkerHealth.HEALTHY
    draining: bool = False
    better_streak: int = 0
    streak_worst: WorkerHealth = WorkerHealth.HEALTHY
    streak_heartbeat: float | None = None
    changed_at: float = 0.0
    reason: str = "registered"

    @property
    def state(self) -> WorkerHealth:
        """The reported state: draining overrides healthy and degraded, not worse ones."""
        if self.draining and self.health.severity < WorkerHealth.UNHEALTHY.severity:
            return WorkerHealth.DRAINING
        return self.health


def classify_observation(
    observation: HealthObservation, policy: HealthPolicy = DEFAULT_HEALTH_POLICY
) -> tuple[WorkerHealth, str]:
    """Return the health one observation alone points to, and why."""
    age = observation.heartbeat_age
    if age >= policy.evict_after:
        return WorkerHealth.EVICTED, f"no heartbeat for {age:.1f}s (evict at {policy.evict_after}s)"
    if age >= policy.unhealthy_after:
        return (
            WorkerHealth.UNHEALTHY,
            f"no heartbeat for {age:.1f}s (unhealthy at {policy.unhealthy_after}s)",
        )
    if age >= policy.degraded_after:
        return (
            WorkerHealth.DEGRADED,
            f"heartbeat {age:.1f}s old (degraded at {policy.degraded_after}s)",
        )
    if observation.outcomes >= policy.min_outcomes:
        ratio = observation.failures / observation.outcomes
        if ratio >= policy.failure_ratio_degraded:
            return (
                WorkerHealth.DEGRADED,
                f"{observation.failures} of the last {observation.outcomes} attempts failed",
            )
    return WorkerHealth.HEALTHY, "heartbeats on time"


def observe(
    status: WorkerStatus,
    observation: HealthObservation,
    now: float,
    policy: HealthPolicy = DEFAULT_HEALTH_POLICY,
) -> WorkerStatus:
    """Apply one observation at time `now`; return the new status (the old one is unchanged)."""
    if status.health is WorkerHealth.EVICTED:
        return status
    seen, reason = classify_observation(observation, policy)
    if seen.severity >= status.health.severity:
        # Worse takes effect at once; the same level just breaks any recovery streak.
        changed = seen is not status.health
        return replace(
            status,
            health=seen,
            better_streak=0,
            streak_worst=WorkerHealth.HEALTHY,
            streak_heartbeat=None,
            changed_at=now if changed else status.changed_at,
            reason=reason if changed else status.reason,
        )
    beat = observation.heartbeat_at
    if beat is not None and status.better_streak > 0 and beat == status.streak_heartbeat:
        return status  # the same heartbeat seen again: no new evidence of recovery
    streak = status.better_streak + 1
    worst = (
        seen
        if status.better_streak == 0 or seen.severity > status.streak_worst.severity
        else status.streak_worst
    )
    if streak < policy.recovery_observations:
        return replace(status, better_streak=streak, streak_worst=worst, streak_heartbeat=beat)
    return replace(
        status,
        health=worst,
        better_streak=0,
        streak_worst=WorkerHealth.HEALTHY,
        streak_heartbeat=None,
        changed_at=now,
        reason=f"recovered: {reason}",
    )


def request_drain(status: WorkerStatus, now: float) -> WorkerStatus:
    """Mark a worker draining at an operator's request (idempotent; evicted stays evicted)."""
    if status.draining or status.health is WorkerHealth.EVICTED:
        return status
    return replace(status, draining=True, changed_at=now, reason="drain requested by operator")
