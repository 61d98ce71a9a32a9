"""A product, given inline in the job (`name`, `description`, ...)."""

from __future__ import annotations

from typing import Any

from ..settings import Settings

KINDS = ("blog_post", "product_optimization")
TEXT_FIELDS = {"name": 200, "description": 8000, "brand": 200, "category": 200, "price": 50}
FIELDS = {"type", "attributes", *TEXT_FIELDS}


def validate(source: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(source) - FIELDS)
    if unknown:
        raise ValueError(f"has an unknown field {unknown[0]!r}")
    out: dict[str, Any] = {}
    for name, limit in TEXT_FIELDS.items():
        value = source.get(name)
        if value is None:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and name == "price":
            value = str(value)
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"{name} must be a string of at most {limit} characters")
        out[name] = value
    if not out.get("name", "").strip():
        raise ValueError("name is required for an inline product")
    attrs = source.get("attributes")
    if attrs is not None:
        if not isinstance(attrs, dict) or len(attrs) > 50 or not all(
                isinstance(k, str) and isinstance(v, str | int | float) for k, v in attrs.items()):
            raise ValueError("attributes must be an object of at most 50 text or number values")
        out["attributes"] = attrs
    return out


async def fetch(source: dict[str, Any], settings: Settings) -> dict[str, Any]:
    product = {k: v for k, v in source.items() if k != "type"}
    return {"topic": product["name"], "product": product}
