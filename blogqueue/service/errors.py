"""The contract's error format, `{"error": {"code", "message", "details"}}`, for every refusal.

Library refusals (`BlogqueueError`) carry their own status and code; the
service adds the few that only HTTP has (400, 401, 403, 413). Losing
PostgreSQL answers 503, never a 500 with a driver's message.
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
    status = 400
    code = "malformed_json"


class Unauthorized(BlogqueueError):
    status = 401
    code = "unauthorized"


class Forbidden(BlogqueueError):
    status = 403
    code = "forbidden"


class BodyTooLarge(BlogqueueError):
    status = 413
    code = "body_too_large"


# What a lost or refusing database looks like through asyncpg.
DB_DOWN: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


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
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


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
