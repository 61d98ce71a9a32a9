"""`GET /v1/ai-settings` and `PUT /v1/ai-settings`: the caller's preferred model and provider keys.

Whose settings: the token's tenant and user. A token created without a user
reads and writes the tenant's own settings (stored under user ''), which are
the ones jobs enqueued without a user resolve against. An admin token has no
wider reach here: settings hold keys, so each caller sees only their own.

Keys are write-only: the library stores them encrypted and answers with their
masked form only; the body is never logged.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from blogqueue.client import Client

from .auth import authenticate
from .bodies import read_json


def _client(request: Request) -> Client:
    return request.app.state.client


async def get_ai_settings(request: Request) -> JSONResponse:
    principal = await authenticate(request)
    return JSONResponse(await _client(request).get_ai_settings(principal.tenant_id, principal.user_id))


async def put_ai_settings(request: Request) -> JSONResponse:
    principal = await authenticate(request)
    client = _client(request)
    body = await read_json(request, client.settings)
    return JSONResponse(await client.put_ai_settings(principal.tenant_id, principal.user_id, body))
