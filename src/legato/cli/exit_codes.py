"""What the `legato` command's exit status means, and which error gives which status.

Scripts branch on these, so they never change meaning:

    0  ok
    1  the operation failed (a conflict such as cancelling a finished task, a task that ended
       dead or cancelled under `--wait`, an error the service reported, an unknown outcome)
    2  usage or validation error: a bad option, argument or setting; nothing was changed
    3  not found: no task or worker with that id
    4  the service or the store could not be reached
    5  not authorized: the service wants a (valid) API token
"""

from __future__ import annotations

import enum

import sqlalchemy.exc

from legato.cli.client import NotFoundError, ServiceUnreachableError, UnauthorizedError
from legato.kernel.errors import ValidationError
from legato.store.errors import StoreUnavailableError

__all__ = ["ExitCode", "exit_code_for"]


class ExitCode(enum.IntEnum):
    """The exit statuses of `legato` (see the module docstring)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    UNREACHABLE = 4
    UNAUTHORIZED = 5


def exit_code_for(error: BaseException) -> ExitCode:
    """Return the exit status a command ends with when `error` stops it."""
    if isinstance(error, ValidationError):
        return ExitCode.USAGE
    if isinstance(error, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(error, UnauthorizedError):
        return ExitCode.UNAUTHORIZED
    if isinstance(
        error,
        ServiceUnreachableError
        | StoreUnavailableError
        | sqlalchemy.exc.OperationalError
        | ConnectionError,
    ):
        return ExitCode.UNREACHABLE
    return ExitCode.FAILED
