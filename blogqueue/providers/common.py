"""What the network adapters share: SDK client caching, rate-limit headers, error wording.

Every message built here ends up in a job's `last_error`: it names the
provider, what went wrong and what to do, and never contains the API key
(adapters pass only status codes and the provider's own message through
`redact`).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

from ..errors import FatalError, JobError, RateLimited, RetryableError
from .base import RateInfo

C = TypeVar("C")

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")
_SECRETISH = re.compile(r"\b(sk|pk|rk|key|tok|token|r8|AIza)[-_]?[A-Za-z0-9_\-]{8,}", re.IGNORECASE)


class ClientCache(Generic[C]):
    """One SDK client per (API key hash, event loop): clients hold connection pools, so reuse them.

    Keyed by the key's SHA-256, so the cache's keys never hold a secret, and by
    the running loop, because an async HTTP pool belongs to the loop it was made on.
    """

    def __init__(self, factory: Callable[[str], C], size: int = 256) -> None:
        self.factory = factory
        self.size = size
        self._clients: dict[tuple[str, int], C] = {}

    def get(self, api_key: str) -> C:
        k = (hashlib.sha256(api_key.encode()).hexdigest(), id(asyncio.get_running_loop()))
        client = self._clients.get(k)
        if client is None:
            if len(self._clients) >= self.size:
                self._clients.pop(next(iter(self._clients)))
            client = self._clients[k] = self.factory(api_key)
        return client


async def parsed(raw: Any) -> Any:
    """`with_raw_response` answers parse synchronously in some SDK versions, asynchronously in others."""
    out = raw.parse()
    return await out if inspect.isawaitable(out) else out


def redact(text: str, api_key: str | None = None) -> str:
    if api_key and len(api_key) >= 4:
        text = text.replace(api_key, "[key]")
    return _SECRETISH.sub(lambda m: m.group(0)[:3] + "…", text)[:300]


def parse_duration(value: str | None) -> float | None:
    """`1s`, `6m0s`, `20ms`, `1h2m3.5s` or plain seconds → seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    m = _DURATION.match(value)
    if not m or not any(m.groups()):
        return None
    h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


def retry_after(headers: Mapping[str, str] | None, default: float = 1.0) -> float:
    """The provider's wait: `retry-after-ms`, `retry-after` (seconds or HTTP date), else the resets."""
    if not headers:
        return default
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h:
        try:
            return float(h["retry-after-ms"]) / 1000
        except ValueError:
            pass
    if "retry-after" in h:
        value = h["retry-after"]
        try:
            return float(value)
        except ValueError:
            try:
                from datetime import UTC, datetime

                return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
            except (TypeError, ValueError):
                pass
    resets = [parse_duration(h.get(k)) for k in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")]
    found = [r for r in resets if r is not None]
    return max(found) if found else default


def rate_info(headers: Mapping[str, str] | None) -> RateInfo | None:
    """OpenAI-style `x-ratelimit-remaining-*` / `x-ratelimit-reset-*` and `openai-processing-ms` headers, if sent."""
    if not headers:
        return None
    h = {k.lower(): v for k, v in headers.items()}

    def num(name: str) -> int | None:
        try:
            return int(float(h[name]))
        except (KeyError, ValueError):
            return None

    processing = num("openai-processing-ms")
    info = RateInfo(remaining_requests=num("x-ratelimit-remaining-requests"),
                    reset_requests_s=parse_duration(h.get("x-ratelimit-reset-requests")),
                    remaining_tokens=num("x-ratelimit-remaining-tokens"),
                    reset_tokens_s=parse_duration(h.get("x-ratelimit-reset-tokens")),
                    processing_s=None if processing is None else processing / 1000)
    found = (info.remaining_requests, info.remaining_tokens, info.processing_s)
    return info if any(v is not None for v in found) else None


def from_status(provider: str, status: int | None, message: str, headers: Mapping[str, str] | None,
                api_key: str | None, *, refused: bool = False) -> JobError:
    """Maps an HTTP failure to the engine's error classes (DESIGN §4)."""
    msg = redact(message or "", api_key)
    if status == 429:
        wait = retry_after(headers)
        return RateLimited(f"{provider} is rate limiting this API key (429); waiting {wait:g} s", retry_after=wait)
    if status == 401:
        return FatalError(f"{provider} rejected the API key (401): check the key in your AI settings",
                          code="bad_api_key")
    if status == 403:
        return FatalError(f"{provider} refused access with this API key (403): the key lacks permission "
                          f"for this model or project", code="bad_api_key")
    if refused:
        return FatalError(f"{provider} refused the request under its content policy: {msg}",
                          code="content_refused")
    if (status is not None and status in (408, 409)) or (status is not None and status >= 500):
        return RetryableError(f"{provider} had a server error ({status}): {msg}", code="provider_error")
    if status == 404:
        return FatalError(f"{provider} does not know this model (404): {msg}", code="invalid_model")
    return FatalError(f"{provider} rejected the request ({status}): {msg}", code="invalid_request")


def timeout_error(provider: str, seconds: float) -> RetryableError:
    return RetryableError(f"{provider} did not answer within {seconds:g} s", code="timeout")


def connection_error(provider: str) -> RetryableError:
    return RetryableError(f"could not reach {provider} (connection error)", code="connection_error")


def no_key(provider: str) -> FatalError:
    return FatalError(f"no API key for {provider}: add one in your AI settings or ask the operator "
                      f"to configure the platform key", code="missing_api_key")
