"""The few Wix REST calls blogqueue makes: read a product, write a product back, create a draft post.

Auth: the platform's Wix token (WIX_API_TOKEN, an API key or an app's access
token) in `Authorization`, and the store's site id in `wix-site-id`. The site id
is the source's `store` when given, else the job's tenant id: a tenant is a Wix
store. The token never leaves these headers.
"""

from __future__ import annotations

from typing import Any

import httpx

from . import remote
from .errors import FatalError
from .settings import Settings

SERVICE = "Wix"


WixConfig = remote.ServiceConfig


def config(settings: Settings) -> WixConfig:
    """What the Wix source and publisher are given: WIX_BASE_URL, WIX_API_TOKEN, the timeout."""
    return WixConfig(settings.wix_base_url, settings.wix_api_token, settings.http_timeout_seconds)


def _client(config: WixConfig, site_id: str, idempotency_key: str | None = None) -> httpx.AsyncClient:
    if not config.credential:
        raise FatalError("Wix is not configured: set BLOGQUEUE_WIX_API_TOKEN", code="missing_api_key")
    headers = {"Authorization": config.credential, "wix-site-id": site_id}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return remote.client(config.timeout_seconds, config.base_url, headers)


async def get_product(config: WixConfig, site_id: str, product_id: str) -> dict[str, Any]:
    """Wix Stores (Catalog V1) `GET /stores/v1/products/{id}`, mapped to blogqueue's product fields."""
    async with _client(config, site_id) as http:
        resp = await remote.send(http, SERVICE, "GET", f"/stores/v1/products/{product_id}")
        remote.check(resp, SERVICE, not_found=f"Wix product {product_id!r} does not exist in store {site_id!r}")
        product = resp.json().get("product") or {}
    if not product.get("name"):
        raise FatalError(f"Wix product {product_id!r} has no name", code="bad_source")
    out: dict[str, Any] = {"id": product.get("id", product_id), "name": product["name"],
                           "description": product.get("description") or ""}
    if product.get("brand"):
        out["brand"] = product["brand"]
    price = (product.get("priceData") or product.get("price") or {}).get("formatted", {}).get("price")
    if price:
        out["price"] = price
    return out


async def update_product(config: WixConfig, site_id: str, product_id: str, rewrite: dict[str, Any],
                         idempotency_key: str) -> dict[str, Any]:
    """`PATCH /stores/v1/products/{id}`: name, description and SEO tags. Setting a value twice is harmless."""
    body = {"product": {
        "name": rewrite["title"][:80],
        "description": rewrite["description"],
        "seoData": {"tags": [
            {"type": "title", "children": rewrite["seo_title"], "custom": False, "disabled": False},
            {"type": "meta", "props": {"name": "description", "content": rewrite["seo_description"]},
             "custom": False, "disabled": False},
        ]},
    }}
    async with _client(config, site_id, idempotency_key) as http:
        resp = await remote.send(http, SERVICE, "PATCH", f"/stores/v1/products/{product_id}", json=body)
        remote.check(resp, SERVICE, not_found=f"Wix product {product_id!r} no longer exists in store {site_id!r}")
    return {"publisher": "wix", "product_id": product_id, "site_id": site_id}


async def create_draft_post(config: WixConfig, site_id: str, post: dict[str, Any],
                            idempotency_key: str) -> dict[str, Any]:
    """Wix Blog `POST /blog/v3/draft-posts`: an unpublished draft the store owner reviews."""
    body = {"draftPost": {"title": post["title"][:200], "richContent": _ricos(post["body"]),
                          **({"media": {"wixMedia": {"image": {"url": post["image_url"]}}, "displayed": True}}
                             if post.get("image_url", "") and post["image_url"].startswith("http") else {})},
            "publish": False}
    async with _client(config, site_id, idempotency_key) as http:
        resp = await remote.send(http, SERVICE, "POST", "/blog/v3/draft-posts", json=body)
        remote.check(resp, SERVICE)
        draft = resp.json().get("draftPost") or {}
    return {"publisher": "wix", "draft_post_id": draft.get("id"), "site_id": site_id}


def _ricos(markdown: str) -> dict[str, Any]:
    """The post's paragraphs as Wix Ricos rich content (plain paragraphs; headings keep their text)."""
    nodes = []
    for i, para in enumerate(p.strip() for p in markdown.split("\n\n")):
        if not para:
            continue
        nodes.append({"type": "PARAGRAPH", "id": f"p{i}", "paragraphData": {},
                      "nodes": [{"type": "TEXT", "id": "", "nodes": [],
                                 "textData": {"text": para.lstrip("# "), "decorations": []}}]})
    return {"nodes": nodes}
