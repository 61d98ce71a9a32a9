"""API tokens: create, verify, revoke, list.

A token reads `bq_<id>_<secret>`: `id` (12 hex digits) names the row and is
safe to show and log; `secret` (32 random bytes, URL-safe) is shown once, at
creation, and only its SHA-256 is stored. Verification looks the row up by id
and compares hashes with `hmac.compare_digest`, so neither the lookup nor the
comparison leaks the secret through timing. A high-entropy random secret needs
no slow password hash: nothing can be guessed from its SHA-256.

`TokenCache` keeps recently verified tokens in the process for a few seconds
(BLOGQUEUE_TOKEN_CACHE_SECONDS, default 5), so a busy client costs one database
lookup per token per interval instead of one per request. The price is a bounded
revocation delay: a revoked token keeps working in a process that verified it
shortly before for at most that many seconds after `revoke` commits (0 turns the
cache off). The cache is keyed by the SHA-256 of the whole token, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from .db import Q
from .errors import InvalidInput, NotFound

_TOKEN = re.compile(r"^bq_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
# last_used_at is coarse on purpose: one write per token per minute, not one per request.
TOUCH_EVERY = timedelta(minutes=1)
_PREFIX = re.compile(r"^(?:bq_)?([0-9a-f]{4,12})")
# What a token may do: its tenant's work; every tenant's work and the metrics; only `GET /metrics`.
SCOPES = ("tenant", "admin", "metrics")


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    token_id: str
    tenant_id: str
    user_id: str | None
    is_admin: bool
    # One of SCOPES. A 'metrics' token (for a Prometheus scraper) is refused everywhere but /metrics.
    token_scope: str = "tenant"

    @property
    def scope(self) -> str | None:
        """The tenant filter for reads: None (every tenant) for admins."""
        return None if self.is_admin else self.tenant_id


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create(pool: asyncpg.Pool, tenant_id: str, *, user_id: str | None = None,
                 is_admin: bool = False, scope: str | None = None) -> tuple[str, dict[str, Any]]:
    """A new token; returns (token, its row without secrets). The token is never stored.

    `scope` is one of SCOPES (default: 'admin' when `is_admin`, else 'tenant').
    """
    scope = scope if scope is not None else ("admin" if is_admin else "tenant")
    if scope not in SCOPES or (is_admin and scope != "admin"):
        raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}", details={"field": "scope"})
    if not isinstance(tenant_id, str) or not 0 < len(tenant_id) <= 200:
        raise InvalidInput("tenant must be a string of 1 to 200 characters", details={"field": "tenant"})
    if user_id is not None and not 0 < len(user_id) <= 200:
        raise InvalidInput("user must be a string of 1 to 200 characters", details={"field": "user"})
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = await pool.fetchrow(Q["token_insert"], token_id, tenant_id, user_id, _hash(secret), scope)
    return f"bq_{token_id}_{secret}", _public(row)


async def verify(pool: asyncpg.Pool, token: str) -> Principal | None:
    """The principal of a live token, or None for anything else (malformed, unknown, revoked)."""
    m = _TOKEN.match(token or "")
    if not m:
        return None
    token_id, secret = m.groups()
    row = await pool.fetchrow(Q["token_by_id"], token_id)
    # Hash anyway when the id is unknown, so both paths cost the same.
    expected = row["secret_hash"] if row else _hash("")
    if not hmac.compare_digest(expected, _hash(secret)) or row is None:
        return None
    last = row["last_used_at"]
    if last is None or datetime.now(UTC) - last > TOUCH_EVERY:
        await pool.execute(Q["token_touch"], token_id)
    return Principal(token_id, row["tenant_id"], row["user_id"], row["is_admin"], row["scope"])


class TokenCache:
    """Verified tokens for `ttl` seconds, at most `size` of them (least recently used leaves first).

    Only successes are kept: an unknown or revoked token is looked up every time, so a
    stream of bad tokens cannot push the good ones out, and a new token works at once.
    Entries are keyed by the SHA-256 digest of the token, so the secret is not kept
    in memory beyond the request that carried it. Per process: with `serve --workers N`
    each process has its own, and the revocation delay is still at most `ttl`.
    """

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def verify(self, pool: asyncpg.Pool, token: str) -> Principal | None:
        if self.ttl <= 0:
            return await verify(pool, token)
        key = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None:
            if hit[0] > now:
                self._entries.move_to_end(key)
                return hit[1]
            del self._entries[key]
        principal = await verify(pool, token)
        if principal is not None:
            # Stamped with the time the lookup started: the revocation bound counts from it.
            self._entries[key] = (now + self.ttl, principal)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return principal


async def revoke(pool: asyncpg.Pool, id_or_prefix: str) -> dict[str, Any]:
    """Revokes the one live token whose id starts with `id_or_prefix` (a full token works too)."""
    m = _PREFIX.match(id_or_prefix.strip())
    if not m:
        raise InvalidInput("give a token id (or at least its first 4 hex digits)", details={"field": "token"})
    matches = [r["id"] for r in await pool.fetch(Q["token_matches"], m.group(1))]
    if not matches:
        raise NotFound("no live token with that id", details={"id": m.group(1)})
    if len(matches) > 1:
        raise InvalidInput("that prefix matches several tokens; give more digits",
                           details={"field": "token", "matches": matches})
    row = await pool.fetchrow(Q["token_revoke"], matches[0])
    if row is None:
        raise NotFound("no live token with that id", details={"id": matches[0]})
    return {"id": row["id"], "tenant_id": row["tenant_id"], "revoked": True}


async def list_tokens(pool: asyncpg.Pool, tenant_id: str) -> list[dict[str, Any]]:
    return [_public(r) for r in await pool.fetch(Q["token_list"], tenant_id)]


def _public(row: asyncpg.Record) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(row).items()}
