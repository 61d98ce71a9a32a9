"""A product: given inline in the job (`name`, `description`, ...) or read from Wix Stores by `product_id`.

`{"type": "product", "product_id": "...", "store": "<wix site id>"}`: `store`
defaults to the job's tenant id (a tenant is a Wix store).
"""

from __future__ import annotations

from typing import Any

from .. import wix
from ..settings import Settings

KINDS = ("blog_post", "product_optimization")
TEXT_FIELDS = {"name": 200, "description": 8000, "brand": 200, "category": 200, "price": 50}
FIELDS = {"type", "attributes", *TEXT_FIELDS}
WIX_FIELDS = {"type", "product_id", "store"}


def validate(source: dict[str, Any]) -> dict[str, Any]:
    if "product_id" in source:
        return _validate_wix(source)
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
        raise ValueError("name is required for an inline product (or give product_id for a Wix product)")
    attrs = source.get("attributes")
    if attrs is not None:
        if not isinstance(attrs, dict) or len(attrs) > 50 or not all(
                isinstance(k, str) and isinstance(v, str | int | float) for k, v in attrs.items()):
            raise ValueError("attributes must be an object of at most 50 text or number values")
        out["attributes"] = attrs
    return out


def _validate_wix(source: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(source) - WIX_FIELDS)
    if unknown:
        raise ValueError(f"has field {unknown[0]!r}, which a Wix product (product_id) cannot take")
    out: dict[str, Any] = {}
    for name in ("product_id", "store"):
        value = source.get(name)
        if value is None and name == "store":
            continue
        # Both end up in a URL path or header: keep them to the characters Wix ids use.
        if not isinstance(value, str) or not 0 < len(value) <= 100 or not all(
                c.isalnum() or c in "-_" for c in value):
            raise ValueError(f"{name} must be 1-100 letters, digits, - or _")
        out[name] = value
    return out


async def fetch(source: dict[str, Any], settings: Settings, tenant_id: str) -> dict[str, Any]:
    if "product_id" in source:
        site = source.get("store") or tenant_id
        product = await wix.get_product(settings, site, source["product_id"], tenant_id=tenant_id)
        return {"topic": product["name"], "product": product,
                "wix": {"site_id": site, "product_id": source["product_id"]}}
    product = {k: v for k, v in source.items() if k != "type"}
    return {"topic": product["name"], "product": product}
