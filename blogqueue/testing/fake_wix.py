"""A fake Wix REST API: OAuth for apps, Stores products (get, patch) and Blog draft posts (create).

Built from Wix's documentation (dev.wix.com), which says:

- Create Access Token, `POST https://www.wixapis.com/oauth2/token`, body
  `{"grant_type": "client_credentials", "client_id": "<APP_ID>", "client_secret":
  "<APP_SECRET_KEY>", "instance_id": "<INSTANCE_ID>"}`; response
  `{"access_token": ..., "token_type": "Bearer", "expires_in": 14400}`:
  "Type of the created access token. Always "Bearer"", "Time the access token
  expires in seconds. Always 14400 (4 hours)". "In case the call fails, Wix
  returns the relevant 4XX error code ... Error details follow the conventions
  of the IETF"; "This method doesn't return any custom errors, but may return
  standard errors."
- "Make an API request with the access token provided in the Authorization
  header. The access token is valid for 4 hours. When it expires, make another
  request to Create Access Token." An app instance is "a unique installation of
  a Wix app on a specific Wix site": a token reaches that one site.
- Standard errors: "401 - Unauthorized: ... a missing or incorrect Authorization
  header or an expired token"; "403 - Permission denied: The system
  authenticated you, but you don't have permissions to call this API"; "404 -
  Not found". Bodies are `{"message": ..., "details": {"applicationError":
  {"code", "description"}}}`.
- API keys (single account): "include the key ... in the Authorization header"
  and "wix-site-id: The ID of the Wix site ... Required for site-level API calls".
- "App Instance Removed: Triggered when an instance of your app is uninstalled
  from a Wix site." Webhooks: "Event data is sent as a JSON web token (JWT) in
  the body of the webhook request. The JWT is signed ... use your public key";
  payload `{"data": {"eventType": "AppInstalled", "instanceId": ..., "data":
  "<stringified-JSON>", "identity": ...}}`. `webhook(event, instance)` makes
  such a body, RS256-signed with the fake app's key (`public_key_pem`).

Wix does not document which 4xx Create Access Token answers for an instance
whose app was removed, nor whether the tokens already issued for it stop
working at once. The fake answers `removed_status` (400, 401, 403 or 404; tests
run against each) and revokes the instance's tokens on `remove()` (the strict
reading: a removed app can no longer reach the site, as other platforms do).

Modes, both at once:

- API-key mode: `FakeWix(token, products)`: `Authorization: <token>` plus
  `wix-site-id` selects the site (the platform token reaches every site).
- App mode: `FakeWix(app_id=..., app_secret=..., instances={instance: site})`:
  tokens are issued only for known, installed instances with the right app id
  and secret; each lasts `token_lifetime_s` (documented 14400; short in tests);
  an expired, revoked or unknown token is a 401; a token used with another
  site's `wix-site-id` is a 403; products are looked up in the token's site only,
  so site A's token never reads site B's product.

Recorded: `issued` (every token: instance, site, expiry), `token_requests`,
`drafts` (per `Idempotency-Key`, with `siteId` and the `token` that made it),
`updates` (site, product id, patch), `calls` (method, path, status, site, token)
and `count(method, path_prefix)`. Draft creation dedupes by `Idempotency-Key`,
like a careful real endpoint; `hold_next(s)` answers the next draft `s` seconds
after recording it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .fakeserver import FakeServer

DOCUMENTED_LIFETIME_S = 14400
REMOVED_STATUSES = (400, 401, 403, 404)


@dataclass
class Issued:
    token: str
    instance_id: str
    site_id: str
    expires_at: float
    revoked: bool = False


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"message": message, "details": {"applicationError": {"code": code,
                                                                              "description": message}}},
                        status_code=status)


class FakeWix(FakeServer):
    name = "fake-wix"

    def __init__(self, token: str | None = None, products: dict[str, dict[str, dict[str, Any]]] | None = None,
                 *, app_id: str | None = None, app_secret: str | None = None,
                 instances: dict[str, str] | None = None, token_lifetime_s: float = DOCUMENTED_LIFETIME_S,
                 removed_status: int = 400, **faults: Any) -> None:
        super().__init__(**faults)
        if removed_status not in REMOVED_STATUSES:
            raise ValueError(f"removed_status must be one of {REMOVED_STATUSES}")
        self.token = token
        self.products = products or {}  # site id -> product id -> Wix product object
        self.app_id, self.app_secret = app_id, app_secret
        self.instances: dict[str, str] = dict(instances or {})  # installed: instance id -> site id
        self.removed: set[str] = set()
        self.token_lifetime_s = token_lifetime_s
        self.removed_status = removed_status
        self.issued: dict[str, Issued] = {}
        self.token_requests = 0
        self.drafts: dict[str, dict[str, Any]] = {}  # Idempotency-Key -> draftPost
        self.updates: list[tuple[str, str, dict[str, Any]]] = []
        self.received = threading.Event()
        self._hold: list[float] = []
        self._signing_key: rsa.RSAPrivateKey | None = None

    def routes(self) -> list[Route]:
        return [Route("/oauth2/token", self._token, methods=["POST"]),
                Route("/stores/v1/products/{product_id}", self._product, methods=["GET", "PATCH"]),
                Route("/blog/v3/draft-posts", self._draft, methods=["POST"])]

    # -- control, from tests --------------------------------------------------------------------

    def install(self, instance_id: str, site_id: str) -> None:
        with self.lock:
            self.instances[instance_id] = site_id
            self.removed.discard(instance_id)

    def remove(self, instance_id: str) -> None:
        """The merchant removes the app: no new tokens, and the issued ones stop working."""
        with self.lock:
            self.removed.add(instance_id)
            for t in self.issued.values():
                if t.instance_id == instance_id:
                    t.revoked = True

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (as if our clock ran behind Wix's)."""
        with self.lock:
            for t in self.issued.values():
                t.expires_at = min(t.expires_at, time.time())

    def hold_next(self, seconds: float) -> None:
        with self.lock:
            self._hold.append(seconds)

    # -- webhooks Wix sends to the app -----------------------------------------------------------

    @property
    def public_key_pem(self) -> str:
        """The app's public key, as the app dashboard shows it (PEM)."""
        if self._signing_key is None:
            self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def webhook(self, event_type: str, instance_id: str, *, data: dict[str, Any] | None = None,
                ttl_s: float = 300, stringify: bool = True) -> bytes:
        """The body of an app webhook as Wix documents it: a JWT, RS256, whose payload is
        `{"data": {"eventType", "instanceId", "data": "<stringified JSON>", "identity"}, "iat", "exp"}`
        (`stringify`: the `data` envelope itself as stringified JSON, as some deliveries carry it)."""
        self.public_key_pem  # noqa: B018 - makes the key
        assert self._signing_key is not None
        envelope = {"eventType": event_type, "instanceId": instance_id,
                    "data": json.dumps(data or {"appId": self.app_id}),
                    "identity": json.dumps({"identityType": "WIX_USER", "wixUserId": str(uuid.uuid4())})}
        now = int(time.time())
        claims = {"data": json.dumps(envelope) if stringify else envelope, "iat": now, "exp": int(now + ttl_s)}

        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        head = b64(json.dumps({"kid": "fake", "alg": "RS256"}).encode())
        body = b64(json.dumps(claims).encode())
        sig = self._signing_key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{b64(sig)}".encode()

    def tokens_of(self, site_id: str) -> set[str]:
        with self.lock:
            return {t.token for t in self.issued.values() if t.site_id == site_id}

    # -- protocol -------------------------------------------------------------------------------

    def _log(self, request: Request, status: int, site: str | None = None, token: str | None = None) -> None:
        self.record(request.url.path, status, method=request.method, site=site, token=token)

    async def _token(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        with self.lock:
            self.token_requests += 1
        fault = await self._fault()
        if fault is not None:
            self._log(request, fault.status_code)
            return fault
        if not isinstance(body, dict) or body.get("grant_type") != "client_credentials":
            return self._refuse(request, 400, "INVALID_ARGUMENT", "grant_type must be client_credentials")
        if self.app_id is None or body.get("client_id") != self.app_id or body.get("client_secret") != self.app_secret:
            return self._refuse(request, 401, "UNAUTHENTICATED", "invalid client credentials")
        instance = body.get("instance_id")
        with self.lock:
            site = self.instances.get(instance) if isinstance(instance, str) else None
            removed = instance in self.removed
        if site is None or removed:
            return self._refuse(request, self.removed_status if removed else 404,
                                "APP_NOT_INSTALLED" if removed else "NOT_FOUND",
                                "the app is not installed on this site" if removed else "unknown app instance")
        issued = Issued("wixtok-" + secrets.token_urlsafe(24), str(instance), site, time.time() + self.token_lifetime_s)
        with self.lock:
            self.issued[issued.token] = issued
        self._log(request, 200, site)
        return JSONResponse({"access_token": issued.token, "token_type": "Bearer",
                             "expires_in": int(self.token_lifetime_s) if self.token_lifetime_s >= 1
                             else self.token_lifetime_s})

    def _refuse(self, request: Request, status: int, code: str, message: str) -> JSONResponse:
        self._log(request, status)
        return _error(status, code, message)

    async def _fault(self) -> JSONResponse | None:
        """Scripted faults and injected latency/5xx/429 of the shared fake base."""
        what = await self.misbehave("any")
        if what is None:
            return None
        if what == "429":
            return JSONResponse({"message": "rate limited", "details": {}}, status_code=429,
                                headers={"Retry-After": format(self.faults.retry_after_s, "g")})
        status = int(what) if what.isdigit() else 500
        return _error(status, "INTERNAL" if status >= 500 else "REFUSED", f"injected {what}")

    def _site(self, request: Request) -> tuple[str | None, str | None, JSONResponse | None]:
        """(site, token, error): who is calling, for which site."""
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
        header_site = request.headers.get("wix-site-id")
        if self.token is not None and token == self.token:
            if not header_site:
                return None, token, _error(400, "INVALID_ARGUMENT", "wix-site-id is required with an API key")
            return header_site, token, None
        with self.lock:
            issued = self.issued.get(token)
            valid = issued is not None and not issued.revoked and time.time() < issued.expires_at
        if issued is None or not valid:
            return None, token, _error(401, "UNAUTHENTICATED", "missing, invalid or expired access token")
        if header_site and header_site != issued.site_id:
            return None, token, _error(403, "PERMISSION_DENIED", "this token does not reach that site")
        return issued.site_id, token, None

    async def _admit(self, request: Request) -> tuple[str, str | None] | Response:
        """An injected fault or an auth refusal (logged, as the answer), else (site, token)."""
        fault = await self._fault()
        if fault is not None:
            self._log(request, fault.status_code)
            return fault
        site, token, err = self._site(request)
        if err is not None:
            self._log(request, err.status_code, token=token)
            return err
        assert site is not None
        return site, token

    async def _product(self, request: Request) -> Response:
        admitted = await self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        site, token = admitted
        pid = request.path_params["product_id"]
        with self.lock:
            product = self.products.get(site, {}).get(pid)
        if product is None:
            self._log(request, 404, site, token)
            return _error(404, "NOT_FOUND", f"Product {pid} not found")
        if request.method == "PATCH":
            patch = ((await request.json()) or {}).get("product", {})
            with self.lock:
                product.update(patch)
                self.updates.append((site, pid, patch))
        self._log(request, 200, site, token)
        return JSONResponse({"product": product})

    async def _draft(self, request: Request) -> Response:
        admitted = await self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        site, token = admitted
        key = request.headers.get("idempotency-key") or uuid.uuid4().hex
        body = (await request.json()) or {}
        with self.lock:
            draft = self.drafts.get(key)
            if draft is None:
                draft = {**body.get("draftPost", {}), "id": uuid.uuid4().hex, "siteId": site,
                         "status": "UNPUBLISHED", "token": token}
                self.drafts[key] = draft
            delay = self._hold.pop(0) if self._hold else 0.0
        self._log(request, 200, site, token)
        self.received.set()
        if delay:
            await asyncio.sleep(delay)
        return JSONResponse({"draftPost": {k: v for k, v in draft.items() if k != "token"}})
