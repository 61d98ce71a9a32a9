"""Calls to third-party HTTP APIs (TMDb, Wix, webhooks), classified the DESIGN §4 way.

Error messages name the service and the status, never a URL (it may carry a
key as a query parameter) nor a header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import FatalError, RateLimited, RetryableError

USER_AGENT = "blogqueue/0.1"


@dataclass(frozen=True)
class ServiceConfig:
    """What a source or publisher calling one third-party API is given: its base URL, the
    platform's credential for it and the timeout (never the whole Settings)."""

    base_url: str
    credential: str | None = field(default=None, repr=False)
    timeout_seconds: float = 30.0


def client(timeout_seconds: float, base_url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_seconds,
                             headers={"User-Agent": USER_AGENT, **(headers or {})})


async def send(http: httpx.AsyncClient, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Sends one request; connection errors and timeouts become RetryableError."""
    try:
        return await http.request(method, path, **kwargs)
    except httpx.TimeoutException:
        raise RetryableError(f"{service}: the request timed out", code="timeout") from None
    except httpx.TransportError as exc:
        raise RetryableError(f"{service}: connection failed ({type(exc).__name__})", code="connection_error") from None


def check(response: httpx.Response, service: str, *, not_found: str | None = None) -> None:
    """2xx passes; 429 waits; 408 and 5xx retry; other 4xx are fatal (404 with `not_found`'s message)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429:
        raise RateLimited(f"{service}: rate limited (429)", retry_after=_retry_after(response))
    if status == 408 or status >= 500:
        raise RetryableError(f"{service}: answered {status}", code="upstream_error")
    if status == 404 and not_found:
        raise FatalError(not_found, code="not_found")
    if status in (401, 403):
        raise FatalError(f"{service}: the credentials were refused ({status})", code="unauthorized")
    raise FatalError(f"{service}: refused the request ({status}): {_reason(response)}", code="upstream_refused")


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "5")))
    except ValueError:
        return 5.0


def _reason(response: httpx.Response) -> str:
    """A short, printable reason from the body, for last_error."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "status_message", "error"):
            value = body.get(key)
            if isinstance(value, str):
                return value[:200]
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"][:200]
    return response.reason_phrase
