"""Reading request bodies within limits: size (413), JSON syntax (400), nesting depth (422)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from blogqueue.errors import InvalidInput
from blogqueue.settings import Settings

from .errors import BodyTooLarge, MalformedJSON


async def read_json(request: Request, settings: Settings) -> Any:
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes", details={"limit": limit})
    # A lying or absent Content-Length (chunked upload) is caught while streaming.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes", details={"limit": limit})
        chunks.append(chunk)
    raw = b"".join(chunks)
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
