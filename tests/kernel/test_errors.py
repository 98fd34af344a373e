"""The error taxonomy: every error says what went wrong and what the caller may do next."""

from __future__ import annotations

import asyncio

import pytest

from legato.kernel.errors import (
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    ErrorKind,
    LegatoError,
    PermanentError,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
    classify,
)


def test_validation_error_names_field_value_and_what_is_accepted() -> None:
    error = ValidationError("quantity", -1, "a positive decimal", order="abc-1")
    assert str(error) == ("invalid quantity: got -1, expected a positive decimal (order='abc-1')")
    assert (error.field, error.value, error.expected) == ("quantity", -1, "a positive decimal")
    assert error.context == {"order": "abc-1"}


def test_config_error_lists_every_problem() -> None:
    error = ConfigError(
        [("service.port", 70000, "an integer from 1 to 65535"), ("log.level", "loud", "INFO")],
        source="legato.toml",
    )
    text = str(error)
    assert "legato.toml: 2 problem(s)" in text
    assert "service.port: got 70000" in text
    assert "log.level: got 'loud'" in text
    assert isinstance(error, ValidationError)


def test_config_error_refuses_to_be_empty() -> None:
    with pytest.raises(ValueError, match="at least one problem"):
        ConfigError([])


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TransientError("socket reset"), ErrorKind.TRANSIENT),
        (RateLimitedError("429", retry_after=2.5), ErrorKind.RATE_LIMITED),
        (DeadlineExceeded("slow", timeout=1.0), ErrorKind.TIMEOUT),
        (CircuitOpenError("venue", retry_after=3.0), ErrorKind.TRANSIENT),
        (
            UnknownOutcomeError("timeout after send", idempotency_key="k1"),
            ErrorKind.UNKNOWN_OUTCOME,
        ),
        (PermanentError("insufficient balance"), ErrorKind.PERMANENT),
        (ValidationError("side", "up", "buy or sell"), ErrorKind.VALIDATION),
        (TimeoutError(), ErrorKind.TIMEOUT),
        (ConnectionResetError(), ErrorKind.TRANSIENT),
        (ValueError("bad"), ErrorKind.VALIDATION),
        (KeyError("x"), ErrorKind.PERMANENT),
        (asyncio.CancelledError(), ErrorKind.PERMANENT),
    ],
)
def test_classify_maps_each_error_to_its_kind(error: BaseException, kind: ErrorKind) -> None:
    assert classify(error) is kind


def test_only_errors_without_possible_effect_are_retryable() -> None:
    assert {kind for kind in ErrorKind if kind.retryable} == {
        ErrorKind.TRANSIENT,
        ErrorKind.RATE_LIMITED,
        ErrorKind.TIMEOUT,
    }
    # The duplicate-order trap: an unknown outcome must never be retried blindly.
    assert not ErrorKind.UNKNOWN_OUTCOME.retryable


def test_errors_carry_their_operator_context() -> None:
    limited = RateLimitedError("orders budget", retry_after=12.0, venue="paper")
    assert limited.retry_after == 12.0
    assert limited.context == {"retry_after": 12.0, "venue": "paper"}
    unknown = UnknownOutcomeError("no answer", idempotency_key="desk-1-entry")
    assert unknown.idempotency_key == "desk-1-entry"
    assert "desk-1-entry" in str(unknown)
    assert isinstance(limited, LegatoError)
