"""Tasks the dashboard browser test runs in `legato serve --embedded-worker`.

The service imports them with `--import e2e.browser_tasks` (tests/ on PYTHONPATH). Both hold
each attempt open until the test, listening on `port`, writes to the connection: the test
decides when an attempt ends, so the browser sees it running first whatever the machine's
speed, and the test knows for certain when a new attempt has started.
"""

from __future__ import annotations

import asyncio

from legato.kernel.errors import PermanentError
from legato.kernel.retry import RetryPolicy
from legato.orchestrator import Orchestrator

app = Orchestrator()

GATED = "browser.gated"
DOOMED = "browser.doomed"


async def _wait_for_release(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # Returns what the test wrote, or b"" when it closed the gate without a word.
        word = await reader.read(16)
    finally:
        writer.close()
        await writer.wait_closed()
    return word.decode()


@app.task(name=GATED, timeout=60)
async def gated(port: int) -> str:
    """Succeed with the word the test sends once it releases this attempt."""
    return await _wait_for_release(port)


@app.task(name=DOOMED, timeout=60, retry=RetryPolicy(max_attempts=1))
async def doomed(port: int) -> None:
    """Fail permanently once released, on every attempt, so the task lands in the DLQ."""
    await _wait_for_release(port)
    raise PermanentError("doomed on purpose: this task always fails")
