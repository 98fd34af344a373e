"""How an attempt's end becomes the task's next state: success, retry with backoff, or dead.

The worker (for attempts it ran) and the reaper (for leases that expired) both decide here,
so a task's retry policy means the same thing whoever settles the attempt.
"""

from __future__ import annotations

import json
import random
import traceback
from typing import Any

from legato.kernel.errors import ErrorKind, classify
from legato.orchestrator.task import decode_retry
from legato.store.records import EndReason, ExpiredLease, Lease, Outcome, TaskState

__all__ = ["cancelled", "expired", "failed", "released", "succeeded"]


def succeeded(lease: Lease, result: Any) -> Outcome:
    """The attempt returned `result`; a result that is not JSON fails the attempt instead."""
    if result is None:  # most tasks return nothing: skip the encoder
        return Outcome(
            lease.task_id, lease.fencing_token, TaskState.SUCCEEDED, "succeeded", result="null"
        )
    try:
        encoded = json.dumps(result, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        return Outcome(
            lease.task_id,
            lease.fencing_token,
            TaskState.DEAD,
            "failed",
            end_reason=EndReason.ERROR,
            error=f"result is not JSON-serializable: {error}",
            error_kind=ErrorKind.PERMANENT.value,
        )
    return Outcome(
        lease.task_id, lease.fencing_token, TaskState.SUCCEEDED, "succeeded", result=encoded
    )


def failed(
    lease: Lease,
    error: BaseException,
    now: float,
    rng: random.Random,
    end_reason: EndReason = EndReason.ERROR,
) -> Outcome:
    """The attempt raised `error` (or hit its time limit): retry later, or dead.

    Permanent and validation errors, unknown outcomes and exhausted attempts go to the
    dead-letter queue; transient ones come back after the policy's jittered backoff.
    """
    kind = ErrorKind.TIMEOUT if end_reason is EndReason.TIMEOUT else classify(error)
    policy = decode_retry(lease.retry)
    text = f"{type(error).__name__}: {error}"
    trace = "".join(traceback.format_exception(error))
    if policy.should_retry(lease.attempt, kind):
        return Outcome(
            lease.task_id,
            lease.fencing_token,
            TaskState.RETRYING,
            "failed",
            end_reason=end_reason,
            error=text,
            error_kind=kind.value,
            traceback=trace,
            run_at=now + _delay(policy.delay(lease.attempt, rng), error),
        )
    return Outcome(
        lease.task_id,
        lease.fencing_token,
        TaskState.DEAD,
        "failed",
        end_reason=end_reason,
        error=text,
        error_kind=kind.value,
        traceback=trace,
    )


def _delay(backoff: float, error: BaseException) -> float:
    # A server's retry-after hint is a floor: retrying sooner only earns another refusal.
    hint = getattr(error, "retry_after", None)
    return max(backoff, float(hint)) if isinstance(hint, int | float) else backoff


def cancelled(lease: Lease) -> Outcome:
    """An operator cancelled the attempt and it stopped."""
    return Outcome(
        lease.task_id,
        lease.fencing_token,
        TaskState.CANCELLED,
        "cancelled",
        end_reason=EndReason.CANCELLED,
    )


def released(lease: Lease) -> Outcome:
    """The worker is shutting down and hands the task back; the attempt does not count."""
    return Outcome(lease.task_id, lease.fencing_token, TaskState.PENDING, "released")


def expired(lease: ExpiredLease, now: float, rng: random.Random) -> Outcome:
    """The reaper found `lease` expired: its worker died or stopped heartbeating."""
    if lease.cancel_requested:
        return Outcome(
            lease.task_id,
            lease.fencing_token,
            TaskState.CANCELLED,
            "lease_expired",
            end_reason=EndReason.CANCELLED,
        )
    policy = decode_retry(lease.retry)
    detail = f"lease held by {lease.lease_owner} expired"
    if lease.attempt < policy.max_attempts:
        return Outcome(
            lease.task_id,
            lease.fencing_token,
            TaskState.RETRYING,
            "lease_expired",
            end_reason=EndReason.LEASE_LOST,
            error=detail,
            error_kind=ErrorKind.TIMEOUT.value,
            run_at=now + policy.delay(lease.attempt, rng),
        )
    return Outcome(
        lease.task_id,
        lease.fencing_token,
        TaskState.DEAD,
        "lease_expired",
        end_reason=EndReason.LEASE_LOST,
        error=detail,
        error_kind=ErrorKind.TIMEOUT.value,
    )
