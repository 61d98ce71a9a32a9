"""Bearer-token authentication and the admin check.

The principal's tenant is put on the request state for the access log; the
token itself never leaves this module (not logged, not echoed in errors).
"""

from __future__ import annotations

from starlette.requests import Request

from blogqueue.tokens import Principal

from .errors import Forbidden, Unauthorized


async def authenticate(request: Request, *, metrics_scope_ok: bool = False) -> Principal:
    """The token's principal. A metrics-only token is refused (403) unless `metrics_scope_ok`."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing bearer token: send Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be: Bearer <token>")
    principal = await request.app.state.client.verify_token(token.strip())
    if principal is None:
        raise Unauthorized("invalid or revoked token")
    request.state.tenant = principal.tenant_id
    if principal.token_scope == "metrics" and not metrics_scope_ok:
        raise Forbidden("this token may only read GET /metrics")
    return principal


async def authenticate_admin(request: Request) -> Principal:
    """Metrics show every tenant's figures, so they need an admin token (403 otherwise)."""
    principal = await authenticate(request)
    if not principal.is_admin:
        raise Forbidden("this endpoint needs an admin token")
    return principal


async def authenticate_scraper(request: Request) -> Principal:
    """`GET /metrics`: an admin token or a metrics-only one (403 otherwise)."""
    principal = await authenticate(request, metrics_scope_ok=True)
    if not (principal.is_admin or principal.token_scope == "metrics"):
        raise Forbidden("this endpoint needs an admin or a metrics token")
    return principal
