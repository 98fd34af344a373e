"""The JSON wire form of venue records and venue errors (the paper exchange's HTTP API).

`PaperExchange` (the server, `legato.trading.paper_exchange`) and `HttpVenue` (the client,
`legato.trading.http_venue`) speak it. Records travel as flat JSON objects named by their
dataclass fields: Decimals as exact strings (never floats), datetimes in ISO 8601, enums by
value. `to_wire(record)` and `from_wire(cls, data)` convert one record; `from_wire` raises
ValidationError for anything that is not a complete record of that kind.

Errors travel as an HTTP status and a body ``{"error": KIND, "message": ..., ...}``; the kind
(a `WireErrorKind`) is what the client decides on, the status only backs it up:

    kind              status  raised on the client as
    validation        400     ValidationError (with field, value, expected)
    not_found         404     OrderNotFound
    duplicate         409     DuplicateClientOrderId
    rejected          422     OrderRejected (with reason)
    rate_limited      429     RateLimitedError (Retry-After header and `retry_after`)
    banned            418     VenueBanned (Retry-After header and `retry_after`)
    transient         503     TransientError: nothing happened
    unknown_outcome   504     UnknownOutcomeError: the order may have been affected
    timeout           504     DeadlineExceeded: nothing happened
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from legato.kernel.errors import (
    DeadlineExceeded,
    LegatoError,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
)
from legato.trading.balances import Balance
from legato.trading.errors import DuplicateClientOrderId, OrderNotFound, OrderRejected, VenueBanned
from legato.trading.fills import Fill
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar
from legato.trading.orders import Order
from legato.trading.positions import Position

__all__ = [
    "WireError",
    "WireErrorKind",
    "error_from_wire",
    "error_to_wire",
    "from_wire",
    "to_wire",
]

WireRecord = Order | Fill | Position | Balance | Instrument | Bar
_R = TypeVar("_R", Order, Fill, Position, Balance, Instrument, Bar)


class WireErrorKind(enum.Enum):
    """What went wrong, as the exchange says it; each kind has one HTTP status."""

    VALIDATION = "validation"
    NOT_FOUND = "not_found"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    RATE_LIMITED = "rate_limited"
    BANNED = "banned"
    TRANSIENT = "transient"
    UNKNOWN_OUTCOME = "unknown_outcome"
    TIMEOUT = "timeout"

    @property
    def status(self) -> int:
        """The HTTP status that carries this kind."""
        return _STATUS[self]


_STATUS: Mapping[WireErrorKind, int] = {
    WireErrorKind.VALIDATION: 400,
    WireErrorKind.NOT_FOUND: 404,
    WireErrorKind.DUPLICATE: 409,
    WireErrorKind.REJECTED: 422,
    WireErrorKind.RATE_LIMITED: 429,
    WireErrorKind.BANNED: 418,
    WireErrorKind.TRANSIENT: 503,
    WireErrorKind.UNKNOWN_OUTCOME: 504,
    WireErrorKind.TIMEOUT: 504,
}


@dataclass(frozen=True, slots=True)
class WireError:
    """An error as the server sends it: status, JSON body, and Retry-After (seconds) if any."""

    status: int
    body: dict[str, Any]
    retry_after: float | None = None


# ---------------------------------------------------------------------- records


def _encode_value(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _decimal(value: object) -> Decimal:
    if not isinstance(value, str | int):
        raise TypeError(f"a Decimal travels as a string, not {type(value).__name__}")
    return Decimal(value)


def _datetime(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"a datetime travels as an ISO 8601 string, not {type(value).__name__}")
    return datetime.fromisoformat(value)


def _exact(kind: type[Any]) -> Callable[[object], object]:
    def check(value: object) -> object:
        # bool is an int: a field typed int must not take True, nor a str field a number.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return check


def _decoder(hint: Any) -> Callable[[object], object]:
    arguments = typing.get_args(hint)
    if arguments and type(None) in arguments:
        (inner,) = (argument for argument in arguments if argument is not type(None))
        decode = _decoder(inner)
        return lambda value: None if value is None else decode(value)
    if hint is Decimal:
        return _decimal
    if hint is datetime:
        return _datetime
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if hint in (str, bool, int):
        return _exact(hint)
    raise TypeError(f"no wire form for {hint!r}")


def _decoders(cls: type[Any]) -> dict[str, Callable[[object], object]]:
    hints = typing.get_type_hints(cls)
    return {field.name: _decoder(hints[field.name]) for field in dataclasses.fields(cls)}


_DECODERS: dict[type[Any], dict[str, Callable[[object], object]]] = {
    cls: _decoders(cls) for cls in (Order, Fill, Position, Balance, Instrument, Bar)
}


def to_wire(record: WireRecord) -> dict[str, object]:
    """One record as a JSON-ready dict: Decimals as strings, datetimes ISO, enums by value."""
    return {
        field.name: _encode_value(getattr(record, field.name))
        for field in dataclasses.fields(record)
    }


def from_wire(cls: type[_R], data: object) -> _R:
    """Rebuild a `cls` record from its wire dict; raise ValidationError if it is not one.

    Unknown fields are refused (a newer server is not silently half-understood); missing
    fields take the record's defaults, and the record validates itself as usual.
    """
    name = cls.__name__
    if not isinstance(data, Mapping):
        raise ValidationError(name, data, f"a JSON object with the fields of {name}")
    decoders = _DECODERS[cls]
    unknown = sorted(set(data) - set(decoders))
    if unknown:
        raise ValidationError(f"{name} fields", unknown, f"fields among {sorted(decoders)}")
    try:
        values: dict[str, Any] = {key: decoders[key](value) for key, value in data.items()}
        return cls(**values)
    except ValidationError:
        raise
    except (TypeError, ValueError, InvalidOperation) as error:
        raise ValidationError(name, dict(data), f"a complete {name} ({error})") from None


# ---------------------------------------------------------------------- errors


def _context(error: LegatoError) -> dict[str, object]:
    return {key: _encode_value(value) for key, value in error.context.items() if _jsonable(value)}


def _jsonable(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(
        value, str | int | bool | Decimal | enum.Enum | datetime | list | tuple
    )


def error_to_wire(error: LegatoError) -> WireError:
    """The status and body that tell a client exactly which venue error happened.

    Errors outside the venue's taxonomy are answered as transient only if they are transient;
    anything else becomes `rejected` with its message (the call did not take effect).
    """
    kind: WireErrorKind
    body: dict[str, Any] = {"message": error.message, "context": _context(error)}
    retry_after: float | None = None
    if isinstance(error, ValidationError):
        kind = WireErrorKind.VALIDATION
        body.update(field=error.field, value=repr(error.value), expected=error.expected)
    elif isinstance(error, OrderNotFound):
        kind = WireErrorKind.NOT_FOUND
        body.update(client_order_id=error.client_order_id, venue_order_id=error.venue_order_id)
    elif isinstance(error, DuplicateClientOrderId):
        kind = WireErrorKind.DUPLICATE
        body.update(client_order_id=error.client_order_id)
    elif isinstance(error, OrderRejected):
        kind = WireErrorKind.REJECTED
        body.update(reason=error.reason, client_order_id=error.client_order_id)
    elif isinstance(error, VenueBanned):
        kind = WireErrorKind.BANNED
        retry_after = error.retry_after
    elif isinstance(error, RateLimitedError):
        kind = WireErrorKind.RATE_LIMITED
        retry_after = error.retry_after
    elif isinstance(error, DeadlineExceeded):
        kind = WireErrorKind.TIMEOUT
    elif isinstance(error, TransientError):
        kind = WireErrorKind.TRANSIENT
    elif isinstance(error, UnknownOutcomeError):
        kind = WireErrorKind.UNKNOWN_OUTCOME
        body.update(idempotency_key=error.idempotency_key)
    else:
        kind = WireErrorKind.REJECTED
        body.update(reason=error.message, client_order_id=error.context.get("client_order_id"))
    body["error"] = kind.value
    if retry_after is not None:
        body["retry_after"] = retry_after
    return WireError(status=kind.status, body=body, retry_after=retry_after)


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) else None


def error_from_wire(
    body: Mapping[str, Any], *, retry_after: float | None, key: str | None
) -> LegatoError | None:
    """The error a wire body names, or None when its `error` kind is not one we know.

    `retry_after` is the Retry-After the answer carried (the header wins over the body);
    `key` is the client order id of the call, for context and for unknown outcomes.
    """
    try:
        kind = WireErrorKind(body.get("error"))
    except ValueError:
        return None
    message = _text(body, "message") or kind.value
    if retry_after is None and isinstance(body.get("retry_after"), int | float):
        retry_after = float(body["retry_after"])
    if kind is WireErrorKind.VALIDATION:
        return ValidationError(
            _text(body, "field") or "request",
            _text(body, "value"),
            _text(body, "expected") or message,
            client_order_id=key,
        )
    if kind is WireErrorKind.NOT_FOUND:
        return OrderNotFound(
            client_order_id=_text(body, "client_order_id") or key,
            venue_order_id=_text(body, "venue_order_id"),
        )
    if kind is WireErrorKind.DUPLICATE:
        return DuplicateClientOrderId(_text(body, "client_order_id") or key or "?")
    if kind is WireErrorKind.REJECTED:
        return OrderRejected(
            _text(body, "reason") or message, _text(body, "client_order_id") or key
        )
    if kind is WireErrorKind.BANNED:
        return VenueBanned(retry_after if retry_after is not None else 0.0, client_order_id=key)
    if kind is WireErrorKind.RATE_LIMITED:
        return RateLimitedError(message, retry_after=retry_after, client_order_id=key)
    if kind is WireErrorKind.TRANSIENT:
        return TransientError(message, client_order_id=key)
    if kind is WireErrorKind.TIMEOUT:
        return DeadlineExceeded(message)
    return UnknownOutcomeError(message, idempotency_key=key)
