"""Which error ends a command with which exit status."""

from __future__ import annotations

import pytest

from legato.cli.client import (
    ConflictError,
    NotFoundError,
    ServiceError,
    ServiceUnreachableError,
    UnauthorizedError,
)
from legato.cli.exit_codes import ExitCode, exit_code_for
from legato.kernel.errors import ConfigError, UnknownOutcomeError, ValidationError
from legato.store.errors import StoreUnavailableError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ValidationError("queue", "", "a name"), ExitCode.USAGE),
        (ConfigError([("service.port", 0, "1 to 65535")]), ExitCode.USAGE),
        (NotFoundError("no task", status=404, code="not_found"), ExitCode.NOT_FOUND),
        (UnauthorizedError("no token", status=401, code="unauthorized"), ExitCode.UNAUTHORIZED),
        (ServiceUnreachableError("down", url="http://x"), ExitCode.UNREACHABLE),
        (StoreUnavailableError("db down"), ExitCode.UNREACHABLE),
        (ConflictError("finished", status=409, code="conflict"), ExitCode.FAILED),
        (ServiceError("bug", status=500, code="internal_error"), ExitCode.FAILED),
        (UnknownOutcomeError("lost", idempotency_key=None), ExitCode.FAILED),
        (RuntimeError("anything else"), ExitCode.FAILED),
    ],
)
def test_each_error_has_its_documented_exit_status(error: BaseException, code: ExitCode) -> None:
    assert exit_code_for(error) is code


def test_the_statuses_never_change_meaning() -> None:
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5]
