"""The one error envelope every failed request gets, and the handlers that produce it.

{"error": {"code": "...", "message": "...", "details": {...}, "request_id": "..."}}

Codes: `validation_error` (422, names field and value), `not_found` (404), `conflict` (409:
the request is well formed but the task is in the wrong state), `unauthorized` (401),
`payload_too_large` (413), `method_not_allowed` (405), `http_error` (other 4xx) and
`internal_error` (500, a bug: never for bad input).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from legato.kernel.errors import ValidationError

__all__ = ["ApiError", "error_response", "install_error_handlers", "request_id_of"]

_log = structlog.get_logger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


class ApiError(Exception):
    """An error the API reports to its caller as-is: status, code, message and details."""

    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})

    @classmethod
    def not_found(cls, kind: str, identifier: object) -> ApiError:
        """404 for an id nothing answers to."""
        return cls(404, "not_found", f"no {kind} with id {identifier!r}", {"id": identifier})


def request_id_of(request: Request) -> str:
    """The request's id as the request-id middleware set it ("-" outside the middleware)."""
    return str(getattr(request.state, "request_id", "-"))


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Render the envelope (the request id also goes in X-Request-ID)."""
    request_id = request_id_of(request)
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": _jsonable(dict(details or {})),
            "request_id": request_id,
        }
    }
    all_headers = {"X-Request-ID": request_id, **(headers or {})}
    return JSONResponse(body, status_code=status, headers=all_headers)


def _jsonable(value: Any) -> Any:
    # Details echo the caller's input, which may hold bytes or odd types: keep it printable.
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        if isinstance(value, float) and value != value:  # NaN is not JSON
            return "NaN"
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return str(value)
        return value
    return repr(value)


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error_response(request, error.status, error.code, error.message, error.details)


async def _legato_validation(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ValidationError)
    return error_response(
        request,
        422,
        "validation_error",
        f"{error.field}: got {error.value!r}, expected {error.expected}",
        {"field": error.field, "value": error.value, "expected": error.expected},
    )


async def _request_validation(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ())]
        problems.append(
            {
                "field": ".".join(location[1:]) or ".".join(location),
                "location": location[0] if location else "",
                "value": item.get("input"),
                "expected": item.get("msg", ""),
            }
        )
    first = problems[0] if problems else {"field": "?", "value": None, "expected": "valid input"}
    message = f"{first['field']}: got {first['value']!r}, expected: {first['expected']}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem(s))"
    return error_response(
        request,
        422,
        "validation_error",
        message,
        {"field": first["field"], "value": first["value"], "problems": problems},
    )


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = _CODES.get(error.status_code, "http_error")
    message = error.detail if isinstance(error.detail, str) else str(error.detail)
    if error.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    return error_response(
        request, error.status_code, code, message, headers=dict(error.headers or {})
    )


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    # A bug, not the caller's fault: log it with the request id so the two can be matched.
    _log.exception("request failed", request_id=request_id_of(request), path=request.url.path)
    return error_response(
        request,
        500,
        "internal_error",
        "the service failed to handle this request; the log has the details under this request id",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every error `app` returns use the envelope."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ValidationError, _legato_validation)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
