"""A fake Wix REST API: Stores products (get, patch) and Blog draft posts (create).

Auth is the `Authorization` header (the token) plus `wix-site-id`; products
live per site. Draft creation dedupes by `Idempotency-Key`, like a careful
real endpoint; `drafts` holds one entry per distinct key.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from .fakehttp import FakeServer, Reply, Request


class FakeWix(FakeServer):
    def __init__(self, token: str, products: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        super().__init__()
        self.token = token
        self.products = products or {}  # site id -> product id -> Wix product object
        self.drafts: dict[str, dict[str, Any]] = {}  # Idempotency-Key -> draftPost
        self.updates: list[tuple[str, str, dict[str, Any]]] = []
        self.received = threading.Event()
        self._hold: list[float] = []

    def hold_next(self, seconds: float) -> None:
        with self.lock:
            self._hold.append(seconds)

    def route(self, request: Request) -> Reply:
        if request.headers.get("authorization") != self.token:
            return Reply(401, {"message": "UNAUTHENTICATED", "details": {}})
        site = request.headers.get("wix-site-id", "")
        parts = request.path.strip("/").split("/")
        if parts[:3] == ["stores", "v1", "products"] and len(parts) == 4:
            product = self.products.get(site, {}).get(parts[3])
            if product is None:
                return Reply(404, {"message": f"Product {parts[3]} not found", "details": {}})
            if request.method == "GET":
                return Reply(200, {"product": product})
            if request.method == "PATCH":
                patch = (request.json() or {}).get("product", {})
                with self.lock:
                    product.update(patch)
                    self.updates.append((site, parts[3], patch))
                return Reply(200, {"product": product})
        if request.path == "/blog/v3/draft-posts" and request.method == "POST":
            key = request.headers.get("idempotency-key") or uuid.uuid4().hex
            with self.lock:
                draft = self.drafts.get(key)
                if draft is None:
                    draft = {**(request.json() or {}).get("draftPost", {}), "id": uuid.uuid4().hex,
                             "siteId": site, "status": "UNPUBLISHED"}
                    self.drafts[key] = draft
                delay = self._hold.pop(0) if self._hold else 0.0
            self.received.set()
            return Reply(200, {"draftPost": draft}, delay=delay)
        return Reply(404, {"message": "no such endpoint"})
