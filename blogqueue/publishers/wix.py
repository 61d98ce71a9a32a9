"""Wix: blog posts become drafts in the store's Wix Blog; product rewrites go back to Wix Stores.

The store (site id) is the source's Wix store when the job came from one, else
the job's tenant id. A rewrite of an inline product has no Wix product to
write to: that fails the job with a clear fatal error.
"""

from __future__ import annotations

from typing import Any

from .. import wix
from ..errors import FatalError
from ..wix import WixConfig


async def publish(job: dict[str, Any], post: dict[str, Any], source: dict[str, Any],
                  config: WixConfig) -> dict[str, Any]:
    site = (source.get("wix") or {}).get("site_id") or job["tenant_id"]
    return await wix.create_draft_post(config, site, post, idempotency_key=str(job["id"]))


async def write_back(job: dict[str, Any], rewrite: dict[str, Any], product: dict[str, Any],
                     config: WixConfig) -> dict[str, Any]:
    ref = product.get("wix")
    if not ref:
        raise FatalError("the wix publisher writes rewrites back to Wix Stores: the job's product needs a "
                         "product_id", code="no_wix_product")
    return await wix.update_product(config, ref["site_id"], ref["product_id"], rewrite,
                                    idempotency_key=str(job["id"]))
