"""ASGI middleware of the service: a request id on every response, and a request size limit."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodySizeLimit", "RequestId"]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""1 MiB: far above any task submission, small enough that no caller can exhaust memory."""

# A caller's id is echoed only if it is short and plain: it ends up in logs and headers.
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestId:
    """Give every request an id (the caller's X-Request-ID if sane) and echo it back.

    The id is in `request.state.request_id` for handlers and in the response's X-Request-ID.
    Fresh ids come from the seeded `rng`, so a simulated run names requests reproducibly.
    """

    def __init__(self, app: ASGIApp, rng: random.Random) -> None:
        self.app = app
        self.rng = rng

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = given if _ACCEPTABLE_ID.match(given) else f"{self.rng.getrandbits(64):016x}"
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, by header and while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(scope, send, declared)
                    return
        received = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Tell the app the client went away; the 413 is sent from here instead.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._refuse(scope, send, received)

    async def _refuse(self, scope: Scope, send: Send, size: int) -> None:
        request_id = str(scope.get("state", {}).get("request_id", "-"))
        body: dict[str, Any] = {
            "error": {
                "code": "payload_too_large",
                "message": f"request body of at least {size} bytes is over the limit of "
                f"{self.max_bytes} bytes",
                "details": {"size_bytes": size, "limit_bytes": self.max_bytes},
                "request_id": request_id,
            }
        }
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
