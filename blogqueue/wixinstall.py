"""Which installation of the Wix app a tenant is (Wix app mode, issue 18).

In app mode (`WIX_APP_ID` + `WIX_APP_SECRET`) blogqueue calls Wix as the app
installed on each merchant's site: Wix gives an access token for one app
*instance* (one installation on one site). This module keeps the link
tenant → instance id in PostgreSQL (`bq_wix_installations`, sql/008):

- `get(pool, tenant)`: the tenant's link, or `{"linked": false}`;
- `put(pool, tenant, body)`: `{"instance_id": "<app instance id>"}` links the
  tenant (or moves its link); an instance already linked to another tenant is
  a 409 `wix_instance_taken` and nothing changes;
- `delete(pool, tenant)`: unlinks;
- `instance_for(pool, tenant)`: what the Wix calls use.

The service exposes these as `GET/PUT/DELETE /v1/wix-installation` (tenant-scoped,
like the AI settings); Wix's "App Instance Installed"/"App Instance Removed"
webhooks can maintain them as well (blogqueue.wixwebhook).
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from .db import Q
from .errors import Conflict, InvalidInput

# Wix instance ids are GUIDs; accept any id of that alphabet and a sane length (it travels in a JSON body
# to Wix's token endpoint, never into a URL or header).
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{7,99}")


def _out(row: asyncpg.Record | None, tenant_id: str) -> dict[str, Any]:
    if row is None:
        return {"tenant_id": tenant_id, "linked": False, "instance_id": None, "source": None, "updated_at": None}
    return {"tenant_id": tenant_id, "linked": True, "instance_id": row["instance_id"], "source": row["source"],
            "updated_at": row["updated_at"].isoformat()}


async def get(pool: asyncpg.Pool, tenant_id: str) -> dict[str, Any]:
    return _out(await pool.fetchrow(Q["wix_installation_get"], tenant_id), tenant_id)


def validate(body: Any) -> str:
    """The instance id of a PUT body, or InvalidInput naming the field."""
    if not isinstance(body, dict):
        raise InvalidInput('the body must be an object {"instance_id": "<Wix app instance id>"}',
                           details={"field": "body"})
    from .jobs import _unstorable  # here, not at the top: jobs -> sources -> wix -> wixauth -> this module

    if _unstorable(body, "body"):
        raise InvalidInput("the body contains a NUL character or a lone surrogate", details={"field": "body"})
    unknown = sorted(set(body) - {"instance_id"})
    if unknown:
        raise InvalidInput(f'{unknown[0]} is not a known field; use "instance_id"', details={"field": unknown[0]})
    value = body.get("instance_id")
    if not isinstance(value, str) or not INSTANCE_ID.fullmatch(value):
        raise InvalidInput("instance_id must be the Wix app instance id: 8-100 letters, digits, - or _",
                           details={"field": "instance_id"})
    return value


async def put(pool: asyncpg.Pool, tenant_id: str, body: Any, *, source: str = "api") -> dict[str, Any]:
    instance_id = validate(body)
    try:
        row = await pool.fetchrow(Q["wix_installation_put"], tenant_id, instance_id, source)
    except asyncpg.UniqueViolationError:
        raise Conflict("this Wix app instance is already linked to another tenant", code="wix_instance_taken",
                       details={"field": "instance_id"}) from None
    return _out(row, tenant_id)


async def delete(pool: asyncpg.Pool, tenant_id: str) -> dict[str, Any]:
    await pool.execute(Q["wix_installation_delete"], tenant_id)
    return _out(None, tenant_id)


async def instance_for(pool: asyncpg.Pool, tenant_id: str) -> str | None:
    value: str | None = await pool.fetchval(Q["wix_instance_for_tenant"], tenant_id)
    return value
