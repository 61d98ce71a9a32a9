"""Cached token verification (blogqueue.tokens.TokenCache): the revocation bound, the size bound."""

from __future__ import annotations

import time

import asyncpg

from blogqueue import tokens
from blogqueue.client import Client
from blogqueue.settings import Settings
from tests.conftest import wait_until


async def test_a_revoked_token_is_refused_within_the_cache_bound(settings: Settings, pool: asyncpg.Pool) -> None:
    ttl = 1.0
    client = Client(settings.replace(token_cache_seconds=ttl), pool)
    token, row = await tokens.create(pool, "shop-a")
    assert (await client.verify_token(token)).tenant_id == "shop-a"
    await tokens.revoke(pool, row["id"])
    revoked_at = time.monotonic()
    # Served from the cache: no database round trip, so the revocation is not seen yet...
    still = await client.verify_token(token)
    if time.monotonic() - revoked_at < ttl / 2:
        assert still is not None and still.tenant_id == "shop-a"
    # ...and refused once the entry is older than the bound.
    await wait_until(lambda: _refused(client, token), timeout=ttl + 2, interval=0.05,
                     what="the revoked token to be refused")
    assert time.monotonic() - revoked_at <= ttl + 1.0
    # A fresh cache (another process) refuses it at once; so does a disabled one.
    assert await Client(settings.replace(token_cache_seconds=0), pool).verify_token(token) is None


async def _refused(client: Client, token: str) -> bool:
    return await client.verify_token(token) is None


async def test_cache_off_refuses_at_once(settings: Settings, pool: asyncpg.Pool) -> None:
    client = Client(settings.replace(token_cache_seconds=0), pool)
    token, row = await tokens.create(pool, "shop-a")
    assert await client.verify_token(token) is not None
    await tokens.revoke(pool, row["id"])
    assert await client.verify_token(token) is None


async def test_the_cache_is_bounded_and_keeps_no_token(settings: Settings, pool: asyncpg.Pool) -> None:
    cache = tokens.TokenCache(ttl=60, size=3)
    made = [await tokens.create(pool, f"shop-{n}") for n in range(5)]
    for token, _ in made:
        assert (await cache.verify(pool, token)) is not None
    assert len(cache) == 3
    kept = repr(cache._entries)  # what the cache keeps, looked at directly
    # The secret is everything after the id (`bq_<id>_<secret>`); it may itself hold "_", so
    # split at most twice: a fragment after an "_" of the secret is short enough to turn up
    # in the digests' repr by chance.
    assert not any(token in kept or token.split("_", 2)[2] in kept for token, _ in made)
    # Failures are not cached, so a flood of bad tokens cannot evict good ones.
    for n in range(10):
        assert await cache.verify(pool, f"bq_{n:012x}_" + "x" * 43) is None
    assert len(cache) == 3
    # The least recently used left first: once all are revoked, the last three are still
    # served from the cache and the first two, looked up again, are refused.
    for _, row in made:
        await tokens.revoke(pool, row["id"])
    assert [await cache.verify(pool, token) is not None for token, _ in made] == [False, False, True, True, True]
