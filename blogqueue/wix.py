"""The few Wix REST calls blogqueue makes: read a product, write a product back, create a draft post.

Two ways to authenticate (docs/sources-publishers-credits.md, "Where the Wix token comes from"):

- **App mode** (`WIX_APP_ID` + `WIX_APP_SECRET`, wins when set): blogqueue is a Wix
  app installed on many merchants' sites. The job's tenant is linked to one app
  instance (blogqueue.wixinstall); its access token (blogqueue.wixauth, cached in
  Redis, one refresh at a time) goes in `Authorization` and reaches that site
  only. A 401 refreshes the token once and retries; a refused token request
  fails the job (`wix_installation_revoked`). The source's `store` is not used:
  a token reaches its own site only.
- **API-key mode** (`WIX_API_TOKEN`, single account): the platform token in
  `Authorization` and the store's site id in `wix-site-id` (the source's `store`,
  else the job's tenant id).

Every call passes the shared rate limiter in a bucket per Wix site (provider
`wix`, `RATE_LIMITS` e.g. `wix:rpm=200`); a 429 pauses that site's bucket for
every worker. Tokens never leave these headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import ratelimit, remote, wixauth
from .errors import FatalError
from .settings import Settings

SERVICE = "Wix"


@dataclass(frozen=True)
class WixConfig:
    """What the Wix source and publisher are given. `settings` is there for what the Wix calls share
    with the engine: Redis (token cache, limiter), the database (installation links), QUEUE_NAME and
    RATE_LIMITS, with every secret but Wix's own blanked (`Settings.only_secrets`); without it (a
    config built by hand) calls skip the limiter and app mode is off."""

    base_url: str
    credential: str | None = field(default=None, repr=False)  # WIX_API_TOKEN (API-key mode)
    timeout_seconds: float = 30.0
    settings: Settings | None = field(default=None, repr=False, compare=False)


def config(settings: Settings) -> WixConfig:
    # The engine's settings with every secret but Wix's blanked: no provider key, SECRET_KEY,
    # webhook or TMDb secret reaches the Wix source and publisher.
    return WixConfig(settings.wix_base_url, settings.wix_api_token, settings.http_timeout_seconds,
                     settings.only_secrets("wix_api_token", "wix_app_secret", "wix_public_key"))


async def _paced(settings: Settings | None, site_key: str, tenant_id: str | None,
                 send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """One Wix request inside the site's bucket of the shared limiter (the one place that calls it).

    The bucket is keyed like an API key (only its hash is stored): the site, so every tenant and
    worker reaching one site shares its limit. A 429 raises RateLimited inside, which pauses the bucket.
    """
    if settings is None:
        return await send()
    return await ratelimit.limiter(settings).call("wix", site_key, {"rpm": 1}, send, used=lambda r: None,
                                                  info=lambda r: None, tenant=tenant_id or "")


async def _request(config: WixConfig, tenant_id: str | None, site_id: str, method: str, path: str,
                   idempotency_key: str | None = None, **kwargs: Any) -> httpx.Response:
    """Sends one call with the right credentials; a 401 in app mode refreshes the token and retries once."""
    extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    settings = config.settings
    if settings is not None and wixauth.app_mode(settings):
        instance = await wixauth.instance_for(settings, tenant_id or site_id)
        site_key, token = f"instance:{instance}", await wixauth.token(settings, instance)
    else:
        if not config.credential:
            raise FatalError("Wix is not configured: set BLOGQUEUE_WIX_APP_ID and BLOGQUEUE_WIX_APP_SECRET "
                             "(app mode) or BLOGQUEUE_WIX_API_TOKEN", code="missing_api_key")
        instance, site_key, token = None, f"site:{site_id}", config.credential
        extra["wix-site-id"] = site_id

    async def send(auth: str) -> httpx.Response:
        async with remote.client(config.timeout_seconds, config.base_url, {"Authorization": auth, **extra}) as http:
            resp = await remote.send(http, SERVICE, method, path, **kwargs)
        if resp.status_code == 429:
            remote.check(resp, SERVICE)  # RateLimited: the limiter pauses the site's bucket and retries
        return resp

    resp = await _paced(settings, site_key, tenant_id, lambda: send(token))
    if resp.status_code == 401 and instance is not None and settings is not None:
        # Expired early or revoked: one fresh token (shared with the other 401'd callers), one retry.
        fresh = await wixauth.token(settings, instance, stale=token)
        resp = await _paced(settings, site_key, tenant_id, lambda: send(fresh))
    return resp


async def get_product(config: WixConfig, site_id: str, product_id: str, *,
                      tenant_id: str | None = None) -> dict[str, Any]:
    """Wix Stores (Catalog V1) `GET /stores/v1/products/{id}`, mapped to blogqueue's product fields."""
    resp = await _request(config, tenant_id, site_id, "GET", f"/stores/v1/products/{product_id}")
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
                         idempotency_key: str, *, tenant_id: str | None = None) -> dict[str, Any]:
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
    resp = await _request(config, tenant_id, site_id, "PATCH", f"/stores/v1/products/{product_id}",
                          idempotency_key, json=body)
    remote.check(resp, SERVICE, not_found=f"Wix product {product_id!r} no longer exists in store {site_id!r}")
    return {"publisher": "wix", "product_id": product_id, "site_id": site_id}


async def create_draft_post(config: WixConfig, site_id: str, post: dict[str, Any],
                            idempotency_key: str, *, tenant_id: str | None = None) -> dict[str, Any]:
    """Wix Blog `POST /blog/v3/draft-posts`: an unpublished draft the store owner reviews."""
    body = {"draftPost": {"title": post["title"][:200], "richContent": _ricos(post["body"]),
                          **({"media": {"wixMedia": {"image": {"url": post["image_url"]}}, "displayed": True}}
                             if post.get("image_url", "") and post["image_url"].startswith("http") else {})},
            "publish": False}
    resp = await _request(config, tenant_id, site_id, "POST", "/blog/v3/draft-posts", idempotency_key,
                          json=body)
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
