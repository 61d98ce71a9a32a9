"""POST the finished result as JSON to WEBHOOK_URL (DESIGN §6).

Headers: `Idempotency-Key: <job id>` (the same on every retry, so the receiver
can drop a redelivery) and `X-Blogqueue-Signature: sha256=<hex HMAC-SHA256 of
the exact body bytes with WEBHOOK_SECRET>`. 2xx is success; 4xx other than 408
and 429 is fatal; 429 waits; everything else (5xx, 408, timeouts, connection
errors) is retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from .. import remote
from ..errors import FatalError
from ..settings import Settings

SERVICE = "webhook"
SIGNATURE_HEADER = "X-Blogqueue-Signature"


@dataclass(frozen=True)
class WebhookConfig:
    """What the webhook publisher is given: WEBHOOK_URL, WEBHOOK_SECRET and the HTTP timeout."""

    url: str | None = None
    secret: str | None = field(default=None, repr=False)
    timeout_seconds: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig:
        return cls(settings.webhook_url, settings.webhook_secret, settings.http_timeout_seconds)


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(sign(body, secret), header)


async def _deliver(job: dict[str, Any], payload: dict[str, Any], config: WebhookConfig) -> dict[str, Any]:
    if not config.url or not config.secret:
        raise FatalError("the webhook publisher needs BLOGQUEUE_WEBHOOK_URL and BLOGQUEUE_WEBHOOK_SECRET",
                         code="publisher_not_configured")
    job_id = str(job["id"])
    body = json.dumps({"job_id": job_id, "tenant_id": job["tenant_id"], "kind": job["kind"],
                       "metadata": job["spec"].get("metadata", {}), **payload},
                      separators=(",", ":"), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": job_id,
               SIGNATURE_HEADER: sign(body, config.secret)}
    async with remote.client(config.timeout_seconds, "") as http:
        resp = await remote.send(http, SERVICE, "POST", config.url, content=body, headers=headers)
    remote.check(resp, SERVICE)
    return {"publisher": "webhook", "status": resp.status_code, "idempotency_key": job_id}


async def publish(job: dict[str, Any], post: dict[str, Any], source: dict[str, Any],
                  config: WebhookConfig) -> dict[str, Any]:
    return await _deliver(job, {"post": post}, config)


async def write_back(job: dict[str, Any], rewrite: dict[str, Any], product: dict[str, Any],
                     config: WebhookConfig) -> dict[str, Any]:
    return await _deliver(job, {"product": product.get("product", {}), "rewrite": rewrite}, config)
