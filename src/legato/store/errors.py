"""Errors the store raises beyond the kernel taxonomy.

LegatoError
├── PermanentError
│   └── StaleLeaseError      a completion or heartbeat from a worker that no longer
│                            holds the lease (its fencing token is old); nothing changed
└── TransientError
    └── StoreUnavailableError  the database could not be reached or the connection
                               broke mid-transaction; the transaction was rolled back
"""

from __future__ import annotations

from typing import Any

from legato.kernel.errors import PermanentError, TransientError

__all__ = ["StaleLeaseError", "StoreUnavailableError"]


class StaleLeaseError(PermanentError):
    """A worker reported on a task whose lease it no longer holds; the report was discarded.

    Another worker (or the reaper) owns the task now. The stale owner must stop working on
    it: any effect it still makes must be guarded by the task's idempotency key.
    """

    def __init__(self, task_id: int, fencing_token: int, **context: Any) -> None:
        super().__init__(
            "lease is no longer held: the task was reaped or claimed by another worker; "
            "the report was discarded",
            task_id=task_id,
            fencing_token=fencing_token,
            **context,
        )
        self.task_id = task_id
        self.fencing_token = fencing_token


class StoreUnavailableError(TransientError):
    """The database is unreachable or the connection broke; the transaction was rolled back.

    Retry after a backoff: the connection is reopened on the next transaction.
    """
