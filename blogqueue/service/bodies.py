"""Reading request bodies within limits: size (413), JSON syntax (400), nesting depth (422).

An oversized body is read on and thrown away, up to `DRAIN_FACTOR` x
`MAX_BODY_BYTES` and for at most `DRAIN_SECONDS`, before the 413 is sent (with
`Connection: close`). Clients that send the whole body before they read the
answer (Python's urllib, many simple HTTP stacks) would otherwise be told
"connection reset" instead of the 413: closing a socket with unread data makes
the kernel answer with a reset while they are still sending. Past either bound
the service answers at once and closes, and such a client may see the reset.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from blogqueue.errors import InvalidInput
from blogqueue.settings import Settings

from .errors import BodyTooLarge, MalformedJSON

# 4x: a client that overshoots by a few megabytes still gets a readable answer, while reading
# and discarding costs the service only loopback-speed reads (20 MiB at the default 5 MiB limit).
DRAIN_FACTOR = 4
# A slow sender must not hold a connection for long just to be refused.
DRAIN_SECONDS = 10.0


async def read_json(request: Request, settings: Settings) -> Any:
    limit = settings.max_body_bytes
    raw = await _read_body(request, limit)
    if raw is None:
        raise BodyTooLarge(f"request body is larger than {limit} bytes", details={"limit": limit})
    if not raw.strip():
        raise MalformedJSON("request body must be JSON; it is empty")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise _too_deep(settings) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJSON(f"request body is not valid JSON: {exc}") from None
    if _depth(data) > settings.max_json_depth:
        raise _too_deep(settings)
    return data


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body; None when it is larger than `limit` (then it has been drained, within bounds).

    A lying or absent Content-Length (chunked upload) is caught while reading.
    """
    bound = DRAIN_FACTOR * limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > bound:
        return None  # too large to be worth draining: answer now
    chunks: list[bytes] = []
    size = 0
    deadline: float | None = None
    loop = asyncio.get_running_loop()
    more = True
    while more:
        if deadline is None:
            message = await request.receive()
        else:
            try:
                message = await asyncio.wait_for(request.receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
            continue
        if deadline is None:
            chunks.clear()
            deadline = loop.time() + DRAIN_SECONDS
        if size > bound:
            return None
    return None if size > limit else b"".join(chunks)


def _too_deep(settings: Settings) -> InvalidInput:
    return InvalidInput(f"JSON nesting is deeper than {settings.max_json_depth} levels",
                        details={"field": "body", "max_depth": settings.max_json_depth})


def _depth(value: Any) -> int:
    """Nesting depth, iteratively: a hostile document must not exhaust the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest
