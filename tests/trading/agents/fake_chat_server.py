"""A fake OpenAI-compatible chat server: a real HTTP/1.1 server on 127.0.0.1 for the tests.

It speaks just enough HTTP for httpx: one request per connection, answered from a script of
`Reply` values in order (a 500 once the script runs out), each after an optional delay. Every
request is recorded with its path, headers and JSON body.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 429: "Too Many Requests"}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: status, JSON (or raw text) body, headers, and a delay first."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


def completion(content: str, *, prompt_tokens: int = 120, completion_tokens: int = 30) -> Reply:
    """A 200 chat completion whose message content is `content`, with a usage field."""
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": "fake-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def decision(action: str = "BUY", confidence: float = 0.8, reasoning: str = "trend") -> Reply:
    """A completion whose content is a valid decision answer."""
    payload = {"action": action, "confidence": confidence, "reasoning": reasoning}
    return completion(json.dumps(payload))


class FakeChatServer:
    """`async with FakeChatServer() as server:` serves on `server.base_url` until the block ends."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[RecordedRequest] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    def script(self, *replies: Reply) -> None:
        """Queue `replies`, answered in order."""
        self.replies.extend(replies)

    @property
    def base_url(self) -> str:
        """The API root to configure the client with."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/v1"

    async def __aenter__(self) -> FakeChatServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        # Handlers still sleeping on a slow reply belong to this server: stop them with it.
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up (it timed out): nothing left to answer
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else None
        self.requests.append(RecordedRequest(method, path, headers, body))
        reply = self.replies.popleft() if self.replies else Reply(500, {"error": "no reply"})
        if reply.delay:
            await asyncio.sleep(reply.delay)
        payload = (
            reply.body.encode() if isinstance(reply.body, str) else json.dumps(reply.body).encode()
        )
        lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
        extra = {"content-type": "application/json", **reply.headers}
        lines += [f"{name}: {value}" for name, value in extra.items()]
        lines += [f"content-length: {len(payload)}", "connection: close", "", ""]
        writer.write("\r\n".join(lines).encode("latin-1") + payload)
        await writer.drain()
