"""The `legato` command line, and the client it uses to talk to the operator service.

See docs/cli.md for the commands, their two modes (store or service) and the exit statuses.
"""

from __future__ import annotations

from legato.cli.app import app, main
from legato.cli.client import (
    CLIENT_RETRY,
    DEFAULT_SERVICE_URL,
    ConflictError,
    NotFoundError,
    ServiceClient,
    ServiceError,
    ServiceUnreachableError,
    Snapshot,
    SnapshotSource,
    UnauthorizedError,
)
from legato.cli.exit_codes import ExitCode

__all__ = [
    "CLIENT_RETRY",
    "DEFAULT_SERVICE_URL",
    "ConflictError",
    "ExitCode",
    "NotFoundError",
    "ServiceClient",
    "ServiceError",
    "ServiceUnreachableError",
    "Snapshot",
    "SnapshotSource",
    "UnauthorizedError",
    "app",
    "main",
]
