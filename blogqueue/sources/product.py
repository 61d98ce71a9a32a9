"""A product: given inline in the job (`name`, `description`, ...) or read from Wix Stores by `product_id`.

`{"type": "product", "product_id": "...", "store": "<wix site id>"}`: `store`
defaults to the job's tenant id (a tenant is a Wix store). An inline product
needs `name`; a Wix product takes only `product_id` and `store`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from .. import wix
from ..wix import WixConfig
from . import SourceFields

INLINE = ("name", "description", "brand", "category", "price", "attributes")
# Both end up in a URL path or header: keep them to the characters Wix ids use.
WIX_ID = r"^[A-Za-z0-9_-]{1,100}$"


class ProductFields(SourceFields):
    """An inline product (`name` required) or a Wix Stores product (`product_id`, optional `store`)."""

    name: str | None = Field(None, max_length=200, description="inline product: its name (required)")
    description: str | None = Field(None, max_length=8000)
    brand: str | None = Field(None, max_length=200)
    category: str | None = Field(None, max_length=200)
    price: str | int | float | None = Field(None, description="text of at most 50 characters, or a number")
    attributes: dict[str, str | int | float] | None = Field(None, max_length=50)
    product_id: str | None = Field(None, pattern=WIX_ID, description="a Wix Stores product id")
    store: str | None = Field(None, pattern=WIX_ID, description="the Wix site id (default: the tenant id)")

    messages: ClassVar[dict[str, str]] = {
        "name": "must be a string of at most 200 characters",
        "description": "must be a string of at most 8000 characters",
        "brand": "must be a string of at most 200 characters",
        "category": "must be a string of at most 200 characters",
        "price": "must be a string of at most 50 characters",
        "attributes": "must be an object of at most 50 text or number values",
        "product_id": "must be 1-100 letters, digits, - or _",
        "store": "must be 1-100 letters, digits, - or _",
    }

    @field_validator("price")
    @classmethod
    def _price_text(cls, value: str | int | float | None) -> str | None:
        if value is None:
            return None
        text = value if isinstance(value, str) else str(value)
        if len(text) > 50:
            raise ValueError("too long")
        return text

    @model_validator(mode="after")
    def _one_form(self) -> ProductFields:
        if self.product_id is not None:
            given = [n for n in INLINE if getattr(self, n) is not None]
            if given:
                raise ValueError(f"has field {given[0]!r}, which a Wix product (product_id) cannot take")
            return self
        if self.store is not None:
            raise ValueError("has field 'store', which only a Wix product (product_id) takes")
        if not (self.name or "").strip():
            raise ValueError("name is required for an inline product (or give product_id for a Wix product)")
        return self


async def fetch(source: dict[str, Any], config: WixConfig, tenant_id: str) -> dict[str, Any]:
    if "product_id" in source:
        site = source.get("store") or tenant_id
        product = await wix.get_product(config, site, source["product_id"])
        return {"topic": product["name"], "product": product,
                "wix": {"site_id": site, "product_id": source["product_id"]}}
    product = {k: v for k, v in source.items() if k != "type"}
    return {"topic": product["name"], "product": product}
