"""Per-user AI settings: the preferred model and provider API keys (DESIGN §5).

Keys are write-only: `put` encrypts them (blogqueue.secrets), `get` shows only
their masked form (`sk-…abcd`). A `None` user means the tenant's own settings
(stored under user_id ''), which jobs enqueued without a user use.

Body of `put` (every field optional; absent fields are left as they are):

    {"model": "openai:gpt-4o-mini" | null,        # null clears the preference
     "keys": {"openai": "sk-..." | null, ...}}    # null deletes that stored key
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from . import secrets
from .db import Q
from .errors import InvalidInput, Unavailable
from .jobs import _unstorable
from .settings import Settings

if TYPE_CHECKING:
    from .app import App

MAX_KEY_LENGTH = 512


def owner(tenant_id: str, user_id: str | None, provider: str) -> str:
    """The associated data that binds a ciphertext to its row."""
    return f"{tenant_id}\x1f{user_id or ''}\x1f{provider}"


async def get(pool: asyncpg.Pool, tenant_id: str, user_id: str | None) -> dict[str, Any]:
    row = await pool.fetchrow(Q["ai_settings_get"], tenant_id, user_id or "")
    keys = {p: {"masked": k["masked"], "updated_at": k["updated_at"]} for p, k in sorted(row["keys"].items())}
    return {"tenant_id": tenant_id, "user_id": user_id, "model": row["preferred_model"], "keys": keys,
            "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None}


def _validate(body: Any, app: App) -> tuple[bool, str | None, dict[str, str | None]]:
    """Keys can be stored for the app's providers that need one (`app.key_providers`)."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be an object with \"model\" and/or \"keys\"", details={"field": "body"})
    # Checked first: later messages name fields, and a lone surrogate cannot even be rendered in an error.
    bad = _unstorable(body, "body")
    if bad:
        field = bad.removeprefix("body.")
        raise InvalidInput(f"{field} contains a NUL character or a lone surrogate", details={"field": field})
    unknown = sorted(set(body) - {"model", "keys"})
    if unknown:
        raise InvalidInput(f"{unknown[0]} is not a known field; use \"model\" and \"keys\"",
                           details={"field": unknown[0]})
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise InvalidInput("model must be a string like \"openai:gpt-4o-mini\", or null",
                               details={"field": "model"})
        try:
            app.validate_model(model)
        except ValueError as exc:
            raise InvalidInput(f"model: {exc}", details={"field": "model"}) from None
    keys = body.get("keys", {})
    if not isinstance(keys, dict):
        raise InvalidInput("keys must be an object of provider: key", details={"field": "keys"})
    for provider, key in keys.items():
        field = f"keys.{provider}"
        if provider not in app.key_providers:
            raise InvalidInput(f"{field}: keys can be stored for {', '.join(app.key_providers)}",
                               details={"field": field})
        # Never echo the value: a misplaced key must not come back in an error.
        if key is not None and (not isinstance(key, str) or not 8 <= len(key) <= MAX_KEY_LENGTH
                                or any(c.isspace() for c in key)):
            raise InvalidInput(f"{field} must be a key of 8 to {MAX_KEY_LENGTH} characters without spaces, "
                               f"or null to delete it", details={"field": field})
    return "model" in body, model, keys


async def put(pool: asyncpg.Pool, settings: Settings, tenant_id: str, user_id: str | None,
              body: Any, app: App) -> dict[str, Any]:
    """Validates everything first (against `app`'s providers); writes all of it in one transaction, or nothing."""
    has_model, model, keys = _validate(body, app)
    if any(k is not None for k in keys.values()) and not settings.secret_key:
        raise Unavailable("this server cannot store API keys: BLOGQUEUE_SECRET_KEY is not set (operator)",
                          code="secret_key_missing")
    uid = user_id or ""
    sealed = {p: (secrets.encrypt(settings, k, owner(tenant_id, user_id, p)), secrets.mask(k))
              for p, k in keys.items() if k is not None}
    async with pool.acquire() as conn, conn.transaction():
        if has_model:
            await conn.execute(Q["ai_settings_put_model"], tenant_id, uid, model)
        else:
            await conn.execute(Q["ai_settings_touch"], tenant_id, uid)
        for provider, key in keys.items():
            if key is None:
                await conn.execute(Q["provider_key_delete"], tenant_id, uid, provider)
            else:
                await conn.execute(Q["provider_key_put"], tenant_id, uid, provider, *sealed[provider])
    return await get(pool, tenant_id, user_id)


async def stored(pool: asyncpg.Pool, tenant_id: str, user_id: str | None) -> tuple[str | None, dict[str, str]]:
    """For resolution: the preferred model and the stored ciphertexts by provider."""
    row = await pool.fetchrow(Q["ai_resolve"], tenant_id, user_id or "")
    return row["preferred_model"], dict(row["keys"])


async def rotate(pool: asyncpg.Pool, settings: Settings) -> dict[str, int]:
    """Re-encrypts every stored key written with SECRET_KEY_PREVIOUS under SECRET_KEY.

    Keys that neither secret opens are left alone and counted as `unreadable`.
    """
    counts = {"rotated": 0, "current": 0, "unreadable": 0}
    for r in await pool.fetch(Q["provider_keys_all"]):
        who = owner(r["tenant_id"], r["user_id"] or None, r["provider"])
        if not secrets.needs_rotation(settings, r["ciphertext"]):
            counts["current"] += 1
            continue
        try:
            plain = secrets.decrypt(settings, r["ciphertext"], who)
        except secrets.DecryptError:
            counts["unreadable"] += 1
            continue
        await pool.execute(Q["provider_key_recipher"], r["tenant_id"], r["user_id"], r["provider"],
                           r["ciphertext"], secrets.encrypt(settings, plain, who))
        counts["rotated"] += 1
    return counts
