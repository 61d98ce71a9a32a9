"""Wix's "App Instance Installed" / "App Instance Removed" webhooks, verified as Wix documents.

Wix documents (dev.wix.com, "About Webhooks", "App Instance Installed"): "Event
data is sent as a JSON web token (JWT) in the body of the webhook request. The
JWT is signed, allowing you to verify its authenticity as originating from
Wix. To verify the token, use your public key" (the app's public key, from the
app dashboard); the decoded payload is `{"data": {"eventType": "AppInstalled",
"instanceId": "<app-instance-id>", "data": "<stringified-JSON>", "identity":
...}}` (the `data` envelope may itself arrive as stringified JSON). Events "may
be delayed", can arrive more than once and out of order, and must be answered
200 within 1250 ms: handling is one idempotent statement.

What blogqueue does with them (app mode):

- `AppInstalled`: links the tenant whose id is the instance id (the convention
  of the system this replaces: one tenant per Wix installation) to that
  instance, unless the instance is already linked to a tenant (a platform that
  names tenants otherwise links them with PUT /v1/wix-installation; the
  webhook then leaves that link alone);
- `AppRemoved`: unlinks whichever tenant holds the instance, so its next jobs
  fail at once with `wix_not_linked` instead of asking Wix for a token;
- any other event type is acknowledged and ignored.

Verification: RS256 only (the algorithm in the token's header must be RS256:
no `none`, no HMAC with the public key as secret), signature over the raw body
with `WIX_PUBLIC_KEY` (PEM), and `exp` when present. Done with `cryptography`,
no JWT library.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import wixinstall
from .db import Q
from .errors import BlogqueueError
from .settings import Settings

MAX_BODY = 64 * 1024  # an app event is a few hundred bytes


class WebhookRejected(BlogqueueError):
    """Not a webhook Wix signed (HTTP 401 in blogqueue.service.errors.STATUS)."""

    code = "wix_webhook_unverified"


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def public_key(pem: str) -> rsa.RSAPublicKey:
    """The app's public key; `\\n` escapes are accepted (a PEM in one environment line)."""
    key = serialization.load_pem_public_key(pem.replace("\\n", "\n").encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the Wix public key must be an RSA key")
    return key


def verify(body: bytes, pem: str | None, *, now: float | None = None) -> dict[str, Any]:
    """The verified event envelope `{"eventType", "instanceId", "data", ...}`, or WebhookRejected."""
    if not pem:
        raise WebhookRejected("this server has no BLOGQUEUE_WIX_PUBLIC_KEY to verify Wix webhooks with")
    if len(body) > MAX_BODY:
        raise WebhookRejected("not a Wix webhook: the body is too large")
    try:
        head_b64, payload_b64, sig_b64 = body.decode("ascii").strip().split(".")
        header, signature = json.loads(_b64(head_b64)), _b64(sig_b64)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected("not a Wix webhook: the body is not a JWT") from None
    if not isinstance(header, dict) or header.get("alg") != "RS256":
        raise WebhookRejected("not a Wix webhook: the JWT is not signed with RS256")
    try:
        public_key(pem).verify(signature, f"{head_b64}.{payload_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise WebhookRejected("the webhook's signature does not match the app's public key") from None
    try:
        claims = json.loads(_b64(payload_b64))
        exp = claims.get("exp")
        envelope = claims["data"]
        if isinstance(envelope, str):
            envelope = json.loads(envelope)
        if not isinstance(envelope, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise WebhookRejected("not a Wix webhook: the payload has no event") from None
    if isinstance(exp, int | float) and exp < (time.time() if now is None else now):
        raise WebhookRejected("the webhook's token has expired")
    return envelope


async def handle(pool: asyncpg.Pool, settings: Settings, body: bytes) -> dict[str, Any]:
    """Verifies and applies one webhook; returns what it did (for the 200 answer and tests)."""
    event = verify(body, settings.wix_public_key)
    kind, instance = event.get("eventType"), event.get("instanceId")
    if not isinstance(instance, str) or not wixinstall.INSTANCE_ID.fullmatch(instance):
        return {"event": kind, "action": "ignored"}
    if kind == "AppInstalled":
        owner = await pool.fetchval(Q["wix_installation_owner"], instance)
        if owner is not None:
            return {"event": kind, "action": "already_linked"}
        try:
            await pool.execute(Q["wix_installation_put"], instance, instance, "webhook")
        except asyncpg.UniqueViolationError:  # linked meanwhile by another delivery of the same event
            return {"event": kind, "action": "already_linked"}
        return {"event": kind, "action": "linked"}
    if kind == "AppRemoved":
        tenant = await pool.fetchval(Q["wix_installation_delete_instance"], instance)
        return {"event": kind, "action": "unlinked" if tenant is not None else "not_linked"}
    return {"event": kind, "action": "ignored"}
