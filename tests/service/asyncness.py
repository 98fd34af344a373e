"""Which parts of an API FastAPI would run in anyio's worker threads."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute


def threaded_callables(app: FastAPI) -> list[str]:
    """Routes and dependencies FastAPI would run in anyio's worker threads (plain `def`).

    A simulated event loop cannot see those threads, so virtual time could leap while a
    request waits on one; the service keeps every endpoint and dependency `async`.
    """
    found: list[str] = []

    def check(call: Any, where: str) -> None:
        if call is not None and not inspect.iscoroutinefunction(call):
            found.append(f"{where}: {getattr(call, '__qualname__', repr(call))}")

    def walk(dependant: Dependant, where: str) -> None:
        check(dependant.call, where)
        for sub in dependant.dependencies:
            walk(sub, where)

    def visit(routes: Iterable[Any]) -> None:
        for route in routes:
            if isinstance(route, APIRoute):
                walk(route.dependant, route.path)
            # FastAPI >= 0.16x keeps an included router whole (an `_IncludedRouter`).
            included = getattr(route, "original_router", None)
            if included is not None:
                for depends in included.dependencies:
                    check(depends.dependency, "router dependencies")
                visit(included.routes)

    for depends in app.router.dependencies:
        check(depends.dependency, "app dependencies")
    visit(app.routes)
    return found
