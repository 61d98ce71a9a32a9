"""A keyword or topic given by the user."""

from __future__ import annotations

from typing import Any

from ..settings import Settings

KINDS = ("blog_post",)
FIELDS = {"type", "keyword", "tone", "language"}


def validate(source: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(source) - FIELDS)
    if unknown:
        raise ValueError(f"has an unknown field {unknown[0]!r}")
    kw = source.get("keyword")
    if not isinstance(kw, str) or not kw.strip() or len(kw) > 300:
        raise ValueError("keyword must be a non-empty string of at most 300 characters")
    out: dict[str, Any] = {"keyword": kw.strip()}
    for name in ("tone", "language"):
        value = source.get(name)
        if value is not None:
            if not isinstance(value, str) or len(value) > 50:
                raise ValueError(f"{name} must be a string of at most 50 characters")
            out[name] = value
    return out


async def fetch(source: dict[str, Any], settings: Settings, tenant_id: str) -> dict[str, Any]:
    return {"topic": source["keyword"], "tone": source.get("tone", "friendly"),
            "language": source.get("language", "en")}
