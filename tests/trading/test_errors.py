from __future__ import annotations

from legato.kernel.errors import (
    ErrorKind,
    PermanentError,
    RateLimitedError,
    ValidationError,
    classify,
)
from legato.trading.errors import (
    DuplicateClientOrderId,
    InvalidOrderTransition,
    OrderNotFound,
    OrderRejected,
    VenueBanned,
)


def test_rejections_are_permanent_and_never_retried() -> None:
    error = OrderRejected("insufficient balance", "c-1")
    assert isinstance(error, PermanentError)
    assert not classify(error).retryable
    assert error.reason == "insufficient balance"
    assert "c-1" in str(error)


def test_a_duplicate_client_id_is_a_rejection_that_says_to_query() -> None:
    error = DuplicateClientOrderId("c-1")
    assert isinstance(error, OrderRejected)
    assert "get_order" in str(error)


def test_a_ban_is_a_rate_limit_with_its_duration() -> None:
    error = VenueBanned(120.0)
    assert isinstance(error, RateLimitedError)
    assert classify(error) is ErrorKind.RATE_LIMITED
    assert error.retry_after == 120.0


def test_not_found_warns_against_treating_it_as_final() -> None:
    error = OrderNotFound(client_order_id="c-1")
    assert isinstance(error, PermanentError)
    assert "grace period" in str(error)


def test_invalid_transition_is_a_validation_error_naming_status() -> None:
    error = InvalidOrderTransition("c-1", "filled", "new", "none")
    assert isinstance(error, ValidationError)
    assert error.field == "status"
