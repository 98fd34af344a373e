"""Bearer-token access rules: who may read and who may change things.

The token comes from `service.api_token` in the settings or the LEGATO_API_TOKEN environment
variable. It is required for every mutating request (POST, PUT, PATCH, DELETE), and for
every request when the service listens on an address other than loopback. Without a token
configured, mutating requests are refused (and a non-loopback bind refuses to start): there is
no unauthenticated way to change state. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field

from fastapi import Request

from legato.service.errors import ApiError

__all__ = ["AccessPolicy", "is_loopback"]

_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The token (if any) and whether reads need it too (non-loopback binds)."""

    token: str | None = field(default=None, repr=False)
    protect_reads: bool = False

    def check(self, request: Request) -> None:
        """Raise ApiError(401) unless `request` may proceed."""
        if request.method not in _MUTATING and not self.protect_reads:
            return
        if self.token is None:
            raise ApiError(
                401,
                "unauthorized",
                "this request changes state and needs an API token, but none is configured: "
                "set service.api_token or LEGATO_API_TOKEN and send it as a bearer token",
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(
                401,
                "unauthorized",
                "missing bearer token: send 'Authorization: Bearer <token>'",
                {"header": "Authorization"},
            )
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ApiError(401, "unauthorized", "the bearer token is not valid")
