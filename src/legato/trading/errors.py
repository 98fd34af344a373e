"""Trading errors: the kernel taxonomy, specialised for orders and venues.

Each class subclasses a kernel error, so retry policies and `classify()` treat it by its kind
without knowing anything about trading::

    ValidationError (kernel)
    └── InvalidOrderTransition   an order status change the lifecycle forbids
                                 (a filled order cannot become new again)
    PermanentError (kernel)
    ├── OrderRejected            the venue refused the order; `reason` says why. Not retried.
    │   └── DuplicateClientOrderId
    │                            the client order id was already used on this venue: an
    │                            earlier send DID arrive. Query it instead of sending again.
    └── OrderNotFound            no order with that id is visible on the venue (yet: a
                                 just-placed order can be invisible for a while)
    RateLimitedError (kernel)
    └── VenueBanned              the venue refuses every call until `retry_after` has passed,
                                 because the client kept calling over its budget
    TransientError (kernel)      e.g. a 503 from the venue: nothing happened, retry is safe
    UnknownOutcomeError (kernel) a timeout after the order was sent: it may exist. Query by
                                 `idempotency_key` (the client order id); never resend blindly.
"""

from __future__ import annotations

from typing import Any

from legato.kernel.errors import (
    PermanentError,
    RateLimitedError,
    ValidationError,
)

__all__ = [
    "DuplicateClientOrderId",
    "InvalidOrderTransition",
    "OrderNotFound",
    "OrderRejected",
    "VenueBanned",
]


class InvalidOrderTransition(ValidationError):
    """An order status change the order lifecycle forbids; the order is left unchanged."""

    def __init__(self, client_order_id: str, current: str, requested: str, allowed: str) -> None:
        super().__init__(
            "status",
            requested,
            f"a status reachable from {current!r}: {allowed}",
            client_order_id=client_order_id,
        )
        self.client_order_id = client_order_id
        self.current = current
        self.requested = requested


class OrderRejected(PermanentError):
    """The venue refused the order; `reason` says why. Sending it again fails the same way."""

    def __init__(self, reason: str, client_order_id: str | None = None, **context: Any) -> None:
        super().__init__(
            f"order rejected: {reason}", client_order_id=client_order_id, reason=reason, **context
        )
        self.reason = reason
        self.client_order_id = client_order_id


class DuplicateClientOrderId(OrderRejected):
    """The client order id was already used on this venue; look that order up instead."""

    def __init__(self, client_order_id: str, **context: Any) -> None:
        super().__init__(
            "duplicate client_order_id: an order with this id already exists on the venue; "
            "query it with get_order(client_order_id=...) instead of sending again",
            client_order_id=client_order_id,
            **context,
        )


class OrderNotFound(PermanentError):
    """No order with the given id is visible on the venue."""

    def __init__(
        self,
        client_order_id: str | None = None,
        venue_order_id: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(
            "order not found on the venue; a just-placed order may not be visible yet, so "
            "do not treat this as terminal before a grace period",
            client_order_id=client_order_id,
            venue_order_id=venue_order_id,
            **context,
        )
        self.client_order_id = client_order_id
        self.venue_order_id = venue_order_id


class VenueBanned(RateLimitedError):
    """The venue bans this client for `retry_after` seconds after repeated over-budget calls."""

    def __init__(self, retry_after: float, **context: Any) -> None:
        super().__init__(
            f"banned by the venue for {retry_after:.3f}s more after repeated calls over the "
            "rate limit; make no calls until then",
            retry_after=retry_after,
            **context,
        )
