"""The contract's error format, `{"error": {"code", "message", "details"}}`, for every refusal.

Library refusals (`BlogqueueError`) carry a code and no HTTP status; `STATUS`
below is the one table from code to status, including the few codes only HTTP
has (400, 401, 403, 413). Losing PostgreSQL answers 503, never a 500 with a
driver's message.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from blogqueue.errors import BacklogFull, BlogqueueError

log = structlog.get_logger("blogqueue.service")


class MalformedJSON(BlogqueueError):
    code = "malformed_json"


class Unauthorized(BlogqueueError):
    code = "unauthorized"


class Forbidden(BlogqueueError):
    code = "forbidden"


class BodyTooLarge(BlogqueueError):
    code = "body_too_large"


# What a lost or refusing database looks like through asyncpg.
DB_DOWN: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}

# Code -> HTTP status (DESIGN §6), for every refusal the library or the service raises.
STATUS: dict[str, int] = {
    "bad_request": 400,
    "malformed_json": 400,
    "unauthorized": 401,
    "wix_webhook_unverified": 401,
    "insufficient_credits": 402,
    "forbidden": 403,
    "not_found": 404,
    "idempotency_conflict": 409,
    "body_too_large": 413,
    "invalid_input": 422,
    "backlog_full": 429,
    "unavailable": 503,
}


def status_for(exc: BlogqueueError) -> int:
    """The status of the error's code; a code not in the table (an application's own, passed as
    `code=`) takes the status of the nearest error class whose code is."""
    for code in (exc.code, *(getattr(cls, "code", None) for cls in type(exc).__mro__)):
        if code in STATUS:
            return STATUS[code]
    return 400


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def on_blogqueue_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BlogqueueError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, BacklogFull) else {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="blogqueue"'
    if isinstance(exc, BodyTooLarge):
        headers["Connection"] = "close"  # the rest of the body, if any, is not read (bodies.py)
    return JSONResponse(exc.to_dict(), status_code=status_for(exc), headers=headers)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def on_db_down(request: Request, exc: Exception) -> Response:
    # The exception's text may hold a host name or user; log its class only.
    log.warning("postgresql unavailable", error=type(exc).__name__)
    return error_response(503, "unavailable", "PostgreSQL is not reachable; retry shortly",
                          {"dependency": "postgresql"}, headers={"Retry-After": "5"})


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", error=type(exc).__name__, path=request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error; it has been logged")


HANDLERS: dict[Any, Any] = {
    BlogqueueError: on_blogqueue_error,
    HTTPException: on_http_exception,
    **{cls: on_db_down for cls in DB_DOWN},
    Exception: on_unexpected,
}
