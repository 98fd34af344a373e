"""GET /events: server-sent events of task, worker, loop and alert changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import StreamingResponse

from legato.service.routes.dependencies import runtime_of
from legato.service.runtime import OperatorRuntime

__all__ = ["KEEPALIVE_SECONDS", "router"]

router = APIRouter(tags=["events"])

KEEPALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies from closing an idle stream."""


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An event stream"}},
)
async def events(
    runtime: Annotated[OperatorRuntime, Depends(runtime_of)],
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """Stream changes as they are observed (event: task | worker | loop | alert).

    Each event has an id; reconnect with Last-Event-ID to replay the recent ones missed.
    """
    try:
        resume = int(last_event_id) if last_event_id is not None else None
    except ValueError:
        resume = None
    return StreamingResponse(
        _stream(runtime, resume),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(runtime: OperatorRuntime, resume: int | None) -> AsyncIterator[str]:
    hub = runtime.hub
    async with hub.subscribe() as subscription:
        yield f"retry: 2000\n: connected, last event {hub.last_id}\n\n"
        sent = 0
        if resume is not None:
            for missed in hub.since(resume):
                sent = missed.id
                yield missed.encode()
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    event = await subscription.next()
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if event is None:
                return
            if event.id > sent:  # the replay may already have sent it
                sent = event.id
                yield event.encode()
