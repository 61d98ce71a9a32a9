"""Wix app mode: one OAuth access token per app installation, shared by every worker through Redis.

Wix documents the client-credentials flow for apps ("Create Access Token"):
`POST {WIX_BASE_URL}/oauth2/token` with `{"grant_type": "client_credentials",
"client_id": WIX_APP_ID, "client_secret": WIX_APP_SECRET, "instance_id": ...}`
answers `{"access_token", "token_type": "Bearer", "expires_in": 14400}` (4 hours);
the token goes in the `Authorization` header of every call for that site.

`token(settings, instance_id)`:

- returns the cached token while it is in Redis; the cache entry lives until
  a tenth of its life, at most `CACHE_MARGIN_S`, before Wix's expiry, so a
  token is never used in its last minutes (clock skew, a long call);
- otherwise ONE caller per instance creates the token: a Redis lock
  (`SET NX PX`, short TTL so a killed holder frees it by itself) is taken, the
  others poll the cache until the token appears (and within one process, the
  callers of the same moment share one poller). A thousand jobs of one site
  starting together make one token request, not a thousand;
- `stale=<token>` (after a 401 from Wix) replaces that token unless another
  caller already did; the 401'd callers of one token share one refresh;
- a refusal (4xx) means the installation is gone (the merchant removed the
  app) or the app credentials are wrong: `FatalError` code
  `wix_installation_revoked`, remembered for `REFUSAL_TTL_S` so the other jobs
  of that site fail at once without asking Wix again. 429, 5xx and transport
  errors are retryable as everywhere (blogqueue.remote).

The cached token is encrypted (AES-GCM, key derived from WIX_APP_SECRET by
HKDF, the instance's key as associated data): a Redis dump alone does not hold
a usable token. Neither the token nor the secret ever reaches a log line, an
error message or a job row: errors name the status only.

`instance_for(settings, tenant_id)` reads the tenant's link
(blogqueue.wixinstall) through a small pool of this module's own, because
sources and publishers are handed settings, not a pool.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import db, remote, wixinstall
from .errors import FatalError, RetryableError
from .settings import Settings

SERVICE = "Wix"
TOKEN_PATH = "/oauth2/token"
# Stop using a token this long before Wix's expiry: 5 minutes of a 4-hour token, a tenth of a short one.
CACHE_MARGIN_S = 300.0
CACHE_MARGIN_SHARE = 0.1
# The lock only covers one token request: a holder killed mid-request frees it after this, and a
# waiter then takes it over. The token request's own timeout stays below it, so a slow Wix cannot let
# the lock lapse while its holder is still asking (two creators); both far below a job's patience.
LOCK_TTL_S = 10.0
TOKEN_TIMEOUT_S = 8.0
# Waiters poll the cache this often: a token request takes tens of milliseconds, so 50 ms costs at
# most one poll interval of latency and a few Redis GETs per waiting job.
POLL_S = 0.05
REFUSAL_TTL_S = 15.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def app_mode(settings: Settings) -> bool:
    """App mode when WIX_APP_ID and WIX_APP_SECRET are set (Settings refuses one without the other)."""
    return bool(settings.wix_app_id and settings.wix_app_secret)


@dataclass
class _Process:
    redis: aioredis.Redis
    pool: asyncpg.Pool | None = None
    pool_lock: asyncio.Lock | None = None


_processes: dict[tuple[str, str, int], _Process] = {}


def _proc(settings: Settings) -> _Process:
    """This process's Redis client (and lazily, pool) for these settings, one per event loop."""
    k = (settings.redis_url, settings.database_url, id(asyncio.get_running_loop()))
    proc = _processes.get(k)
    if proc is None:
        proc = _processes[k] = _Process(aioredis.Redis.from_url(settings.redis_url), None, asyncio.Lock())
    return proc


async def instance_for(settings: Settings, tenant_id: str) -> str:
    """The tenant's Wix app instance id; FatalError `wix_not_linked` when it has none."""
    proc = _proc(settings)
    if proc.pool is None:
        assert proc.pool_lock is not None
        async with proc.pool_lock:
            if proc.pool is None:
                # Two connections: one indexed read per Wix call, far below the worker's own pool.
                proc.pool = await db.create_pool(settings, min_size=0, max_size=2)
    instance = await wixinstall.instance_for(proc.pool, tenant_id)
    if instance is None:
        raise FatalError("this tenant is not linked to a Wix site: link its Wix app instance first "
                         "(PUT /v1/wix-installation or Client.put_wix_installation)", code="wix_not_linked")
    return instance


def _keys(settings: Settings, instance_id: str) -> tuple[str, str, str, str]:
    h = hashlib.sha256(f"{settings.wix_app_id}\x1f{instance_id}".encode()).hexdigest()[:24]
    base = f"{settings.queue_name}:wix:{h}"
    return f"{base}:token", f"{base}:lock", f"{base}:refused", h


def _aead(settings: Settings) -> AESGCM:
    return _aead_for(settings.wix_app_secret or "")


@functools.lru_cache(maxsize=4)
def _aead_for(secret: str) -> AESGCM:
    # Derived once per secret: HKDF on every cache hit would cost as much as the Redis round trip.
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=b"blogqueue",
                       info=b"blogqueue wix token cache v1").derive(secret.encode()))


def _seal(settings: Settings, token: str, ad: str) -> bytes:
    nonce = os.urandom(12)
    return base64.urlsafe_b64encode(nonce + _aead(settings).encrypt(nonce, token.encode(), ad.encode()))


def _open(settings: Settings, blob: bytes, ad: str) -> str | None:
    """The cached token, or None when it was sealed with another app secret (or is damaged)."""
    try:
        raw = base64.urlsafe_b64decode(blob)
        return _aead(settings).decrypt(raw[:12], raw[12:], ad.encode()).decode()
    except (InvalidTag, ValueError):
        return None


def _refused(status: str) -> FatalError:
    return FatalError(f"Wix refused an access token for this tenant's app installation ({status}): the app was "
                      "removed from the site, or the linked instance id or WIX_APP_ID/WIX_APP_SECRET is wrong; "
                      "reinstall the app and link the tenant again", code="wix_installation_revoked")


_flights: dict[tuple[int, str, str | None], asyncio.Future[str]] = {}


async def token(settings: Settings, instance_id: str, *, stale: str | None = None) -> str:
    """A valid access token for this installation; see the module docstring.

    Callers of one process asking at the same time share one lookup (one coroutine polls Redis for
    all of them): a worker's 40 jobs of one site cost one wait, not 40 pollers.
    """
    key = (id(asyncio.get_running_loop()), _keys(settings, instance_id)[0], stale)
    flight = _flights.get(key)
    if flight is None:
        flight = _flights[key] = asyncio.ensure_future(_token(settings, instance_id, stale))

        def landed(done: asyncio.Future[str]) -> None:
            if _flights.get(key) is done:
                del _flights[key]
            if not done.cancelled():
                done.exception()  # retrieved here: every waiter may have been stopped meanwhile
        flight.add_done_callback(landed)
    # Shielded: a stopped job stops waiting; the shared lookup goes on for the others.
    return await asyncio.shield(flight)


async def _token(settings: Settings, instance_id: str, stale: str | None) -> str:
    proc = _proc(settings)
    token_key, lock_key, refused_key, ad = _keys(settings, instance_id)
    owner = uuid.uuid4().hex
    # A waiter gives up after two holders' budgets (one may have been killed holding the lock).
    deadline = time.monotonic() + 2 * LOCK_TTL_S

    async def usable() -> str | None:
        """The cached token unless it is the stale one; raises while the installation is known gone."""
        cached, refused = await proc.redis.mget(token_key, refused_key)
        if refused is not None:
            raise _refused(refused.decode())
        current = _open(settings, cached, ad) if cached is not None else None
        return current if current is not None and current != stale else None

    while True:
        if (current := await usable()) is not None:
            return current
        if await proc.redis.set(lock_key, owner, nx=True, px=int(LOCK_TTL_S * 1000)):
            try:
                # Re-read under the lock: the previous holder may have stored a token, or learnt
                # that the installation is gone, just now (then nobody asks Wix again).
                if (current := await usable()) is not None:
                    return current
                return await _create(settings, proc.redis, instance_id, token_key, refused_key, ad)
            finally:
                # redis-py types eval() as sync-or-async; on the asyncio client it is awaitable.
                await proc.redis.eval(_RELEASE, 1, lock_key, owner)  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise RetryableError("Wix: another worker's access-token request did not finish in time",
                                 code="wix_token_wait")
        await asyncio.sleep(POLL_S)


async def _create(settings: Settings, redis: aioredis.Redis, instance_id: str, token_key: str,
                  refused_key: str, ad: str) -> str:
    body = {"grant_type": "client_credentials", "client_id": settings.wix_app_id,
            "client_secret": settings.wix_app_secret, "instance_id": instance_id}
    timeout = min(settings.http_timeout_seconds, TOKEN_TIMEOUT_S)
    async with remote.client(timeout, settings.wix_base_url) as http:
        resp = await remote.send(http, SERVICE, "POST", TOKEN_PATH, json=body)
    status = resp.status_code
    if 400 <= status < 500 and status not in (408, 429):
        # Remembered briefly: the other jobs of this site fail at once instead of each asking Wix.
        await redis.set(refused_key, f"HTTP {status}", px=int(REFUSAL_TTL_S * 1000))
        raise _refused(f"HTTP {status}")
    remote.check(resp, SERVICE)  # 408, 429, 5xx: retryable / rate limited
    try:
        answer: Any = resp.json()
        access, lifetime = answer["access_token"], float(answer.get("expires_in", 14400))
        if not isinstance(access, str) or not access:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise RetryableError("Wix: the access-token answer was not the documented JSON", code="upstream_error") \
            from None
    ttl = lifetime - min(CACHE_MARGIN_S, lifetime * CACHE_MARGIN_SHARE)
    if ttl > 0:
        await redis.set(token_key, _seal(settings, access, ad), px=max(1, int(ttl * 1000)))
    return access
