"""`GET/PUT/DELETE /v1/wix-installation`: which installation of the Wix app the caller's tenant is.

Wix app mode (docs/sources-publishers-credits.md): each tenant is linked to the
app instance id of the app installed on its Wix site; the workers turn it into
that site's access token. Tenant-scoped like the AI settings: a token sees and
changes only its own tenant's link. An instance already linked to another
tenant is refused with 409 `wix_instance_taken`, so no tenant can take over a
site another tenant linked.

`POST /v1/wix/webhooks` takes Wix's "App Instance Installed"/"Removed" webhooks
(blogqueue.wixwebhook: verified with WIX_PUBLIC_KEY; no bearer token).

The routes and their OpenAPI entries live here; service/app.py and
service/openapi.py include them with one line each.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from blogqueue import wixwebhook
from blogqueue.client import Client

from .auth import authenticate
from .bodies import read_json


def _client(request: Request) -> Client:
    return request.app.state.client


async def get_wix_installation(request: Request) -> JSONResponse:
    principal = await authenticate(request)
    return JSONResponse(await _client(request).get_wix_installation(principal.tenant_id))


async def put_wix_installation(request: Request) -> JSONResponse:
    principal = await authenticate(request)
    client = _client(request)
    body = await read_json(request, client.settings)
    return JSONResponse(await client.put_wix_installation(principal.tenant_id, body))


async def delete_wix_installation(request: Request) -> JSONResponse:
    principal = await authenticate(request)
    return JSONResponse(await _client(request).delete_wix_installation(principal.tenant_id))


async def wix_webhook(request: Request) -> JSONResponse:
    """Wix's app webhooks: the body is a JWT signed with the app's key (no bearer token)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > wixwebhook.MAX_BODY:
            break
    text = body.strip()
    if text.startswith(b'"') and text.endswith(b'"'):  # a JWT sent as a JSON string
        text = text[1:-1]
    client = _client(request)
    return JSONResponse(await wixwebhook.handle(client.pool, client.settings, text))


ROUTES = [
    Route("/v1/wix/webhooks", wix_webhook, methods=["POST"]),
    Route("/v1/wix-installation", get_wix_installation, methods=["GET"]),
    Route("/v1/wix-installation", put_wix_installation, methods=["PUT"]),
    Route("/v1/wix-installation", delete_wix_installation, methods=["DELETE"]),
]


SCHEMAS: dict[str, Any] = {
    "WixInstallation": {
        "type": "object", "additionalProperties": False,
        "required": ["tenant_id", "linked", "instance_id", "source", "updated_at"],
        "properties": {
            "tenant_id": {"type": "string"},
            "linked": {"type": "boolean"},
            "instance_id": {"type": ["string", "null"]},
            "source": {"enum": ["api", "webhook", None]},
            "updated_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "WixInstallationInput": {
        "type": "object", "required": ["instance_id"], "additionalProperties": False,
        "properties": {"instance_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{7,99}$",
                                       "description": "the Wix app instance id of the app on the tenant's site"}},
    },
}


def openapi_paths(op: Any, json_: Any, err: Any, ref: Any) -> dict[str, Any]:
    """The document's entries, built with service/openapi.py's helpers (`_op`, `_json`, `_err`, `_ref`)."""
    one = json_(ref("WixInstallation"), "the tenant's link (linked false: none)")
    return {"/v1/wix-installation": {
        "get": op("The Wix app instance the caller's tenant is linked to (Wix app mode)", {"200": one}),
        "put": op("Link the caller's tenant to a Wix app instance, or move its link", {
            "200": one, "400": err("malformed JSON"), "413": err("body too large"),
            "409": err("code wix_instance_taken: the instance is linked to another tenant"),
            "422": err("invalid or unknown field (details.field names it)"),
        }, body=ref("WixInstallationInput")),
        "delete": op("Unlink the caller's tenant from its Wix app instance", {"200": one}),
    }, "/v1/wix/webhooks": {"post": {
        "summary": "Wix's App Instance Installed/Removed webhooks: a JWT signed with the app's key (RS256)",
        "security": [],
        "requestBody": {"required": True, "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "string", "description": "the JWT as a JSON string"}}}},
        "responses": {
            "200": json_({"type": "object", "required": ["event", "action"], "properties": {
                "event": {}, "action": {"enum": ["linked", "already_linked", "unlinked", "not_linked",
                                                 "ignored"]}}}, "verified and applied (or ignored)"),
            "401": err("code wix_webhook_unverified: not a JWT, not RS256, bad signature, expired, "
                       "or no WIX_PUBLIC_KEY configured"),
            "503": err("PostgreSQL unreachable"),
        }}}}
