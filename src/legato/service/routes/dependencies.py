"""What every route depends on: the operator runtime, and the access rule checked first.

Both are `async def` on purpose. FastAPI runs a plain `def` dependency in anyio's worker
threads, which a simulated event loop cannot see: virtual time would leap ahead while a
request waited for a thread, and every request would pay a thread hop for a dict lookup.
"""

from __future__ import annotations

from fastapi import Request

from legato.service.runtime import OperatorRuntime

__all__ = ["check_access", "runtime_of"]


async def runtime_of(request: Request) -> OperatorRuntime:
    """The runtime the app was created with."""
    runtime: OperatorRuntime = request.app.state.runtime
    return runtime


async def check_access(request: Request) -> None:
    """Refuse requests the access policy does not allow (401 in the envelope)."""
    runtime: OperatorRuntime = request.app.state.runtime
    runtime.access.check(request)
