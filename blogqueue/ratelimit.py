"""The shared, token-aware rate limiter (DESIGN §7).

A bucket is (provider, SHA-256 of the API key): every worker process and host
using the same key shares it through Redis; a user's own key has its own.
Each acquisition is ONE atomic Lua script that, on Redis's clock:

1. drops the calls older than the window (60 s) from the bucket's log;
2. refuses while the bucket is paused by a 429;
3. admits the call if the requests and tokens of the last minute, plus every
   call queued *ahead* of it, plus this call stay within RPM and TPM, and
   within what the provider's own headers last said was left;
4. otherwise returns how long until enough of the log expires.

Fairness: waiting callers hold FIFO tickets in the bucket. A call may only be
admitted when there is room for it *and* for everyone with an earlier ticket,
so nobody is overtaken by a later (smaller or luckier) call and a big tenant
cannot barge ahead of the small ones waiting. Tenant shares of the waiting
line are already fair because the dispatcher admits work to workers round
robin by tenant with a per-tenant in-flight cap (invariant 6); FIFO in the
bucket keeps that order instead of letting whichever process polls first win.
Tickets of callers that stop polling (killed, cancelled) expire after
`STALE_WAITER_S`.

Tokens are reserved up front (prompt characters / 4 + `max_tokens`) and
reconciled when the call returns: the log entry then takes the tokens really
used and moves to the completion time, so the bucket's minute always covers
the provider's (the provider counted the call somewhere between our grant and
our completion). A 429 keeps the request counted, pauses the whole bucket
for the time the provider asked, and the call is retried in place once the
pause is over; it never uses up an attempt. Waiting is bounded by
`RATE_LIMIT_MAX_WAIT_SECONDS`: past it `RateLimited` is raised and the engine
reschedules the job (no attempt used, worker slot freed). Stop cancels the
task, which ends the wait at once.

`bucket_stats(redis, settings)` returns every bucket's figures for metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from .errors import RateLimited
from .providers.base import RateInfo
from .redisconn import redis_options
from .settings import RateLimit, Settings

WINDOW_S = 60.0
STALE_WAITER_S = 5.0
MAX_POLL_S = 0.25
MIN_POLL_S = 0.005
# A shortage only in-flight reservations cause ends when one settles, a call's latency away: polling
# sooner than that wastes Redis time, later leaves freed room unused (the window refills late).
INFLIGHT_POLL_S = 0.02

_EXPIRE = """
local log, tok, st = KEYS[1], KEYS[2], KEYS[3]
local window = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
if #old > 0 then
  local sum = 0
  for i, m in ipairs(old) do
    sum = sum + (tonumber(redis.call('HGET', tok, m)) or 0)
    redis.call('HDEL', tok, m)
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  redis.call('HINCRBYFLOAT', st, 'tokens', -sum)
end
-- In-flight calls older than the window no longer hold anything (a killed caller never settles).
redis.call('ZREMRANGEBYSCORE', KEYS[3] .. ':inf', '-inf', now - window)
local count = redis.call('ZCARD', log)
local tokens = tonumber(redis.call('HGET', st, 'tokens') or '0')
if count == 0 then tokens = 0; redis.call('HSET', st, 'tokens', 0) end
"""

# KEYS: log, tok, st, wq, west, wseen
# ARGV: window, id, est, rpm (-1 none), tpm (-1 none), stale_s, ttl_s
ACQUIRE = _EXPIRE + """
local wq, west, wseen = KEYS[4], KEYS[5], KEYS[6]
local inf = st .. ':inf'
local id, est, rpm, tpm = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local stale, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
redis.call('HSET', st, 'rpm', rpm, 'tpm', tpm)
local dead = redis.call('ZRANGEBYSCORE', wseen, '-inf', now - stale)
for i, m in ipairs(dead) do
  redis.call('ZREM', wq, m); redis.call('HDEL', west, m); redis.call('ZREM', wseen, m)
end
local first = false
if not redis.call('ZSCORE', wq, id) then
  redis.call('ZADD', wq, redis.call('HINCRBY', st, 'ticket', 1), id)
  redis.call('HSET', west, id, est)
  first = true
end
redis.call('ZADD', wseen, now, id)
local paused = tonumber(redis.call('HGET', st, 'paused_until') or '0')
local rank = redis.call('ZRANK', wq, id)
local ahead_tok = 0
if rank > 0 then
  for i, m in ipairs(redis.call('ZRANGE', wq, 0, rank - 1)) do
    ahead_tok = ahead_tok + (tonumber(redis.call('HGET', west, m)) or 0)
  end
end
local grants = tonumber(redis.call('HGET', st, 'grants') or '0')
local tgrants = tonumber(redis.call('HGET', st, 'tgrants') or '0')
-- How long until there is room for this call after `ahead_n` calls of `ahead_t` tokens.
local function wait_for(ahead_n, ahead_t)
  local w = 0
  if paused > now then w = paused - now end
  if w == 0 and rpm >= 0 and count + ahead_n + 1 > rpm then
    local need = count + ahead_n + 1 - rpm
    if need > count then w = 0.05
    else
      local e = redis.call('ZRANGE', log, need - 1, need - 1, 'WITHSCORES')
      w = tonumber(e[2]) + window - now
    end
  end
  -- A call without tokens (an image) takes nothing the token line ahead is waiting for.
  if w == 0 and tpm >= 0 and est > 0 and tokens + ahead_t + est > tpm then
    -- Reservations of calls still in flight shrink to their real usage when they settle:
    -- if that alone could make room, poll soon instead of waiting for the window.
    local flying = 0
    for i, m in ipairs(redis.call('ZRANGE', inf, 0, -1)) do
      flying = flying + (tonumber(redis.call('HGET', tok, m)) or 0)
    end
    local need = tokens - flying + ahead_t + est - tpm
    if need <= 0 then w = INFLIGHT_POLL
    else
      local freed = 0
      w = window
      for i, m in ipairs(redis.call('ZRANGE', log, 0, -1)) do
        if not redis.call('ZSCORE', inf, m) then
          freed = freed + (tonumber(redis.call('HGET', tok, m)) or 0)
          if freed >= need then
            w = tonumber(redis.call('ZSCORE', log, m)) + window - now
            break
          end
        end
      end
    end
  end
  if w == 0 then
    local until_r = tonumber(redis.call('HGET', st, 'hdr_req_until') or '0')
    if until_r > now and grants + ahead_n + 1 > tonumber(redis.call('HGET', st, 'hdr_req_cap')) then
      w = until_r - now
    end
    local until_t = tonumber(redis.call('HGET', st, 'hdr_tok_until') or '0')
    if until_t > now and est > 0 and tgrants + ahead_t + est > tonumber(redis.call('HGET', st, 'hdr_tok_cap')) then
      w = math.max(w, until_t - now)
    end
  end
  return w
end
local wait = wait_for(rank, ahead_tok)
if wait > 0 then
  if first then redis.call('HINCRBY', st, 'waits', 1) end
  for i, k in ipairs(KEYS) do redis.call('EXPIRE', k, ttl) end
  -- The second figure ignores the line ahead: it decides whether the wait is past the bound
  -- (reservations ahead shrink when reconciled, so the line's own estimate is pessimistic).
  return {0, tostring(math.max(wait, MIN_WAIT)), tostring(wait_for(0, 0)), 0, 0, 0}
end
redis.call('ZREM', wq, id); redis.call('HDEL', west, id); redis.call('ZREM', wseen, id)
redis.call('ZADD', log, now, id)
redis.call('ZADD', inf, now, id)
redis.call('HSET', tok, id, est)
redis.call('HINCRBYFLOAT', st, 'tokens', est)
grants = redis.call('HINCRBY', st, 'grants', 1)
tgrants = tonumber(redis.call('HINCRBYFLOAT', st, 'tgrants', est))
for i, k in ipairs(KEYS) do redis.call('EXPIRE', k, ttl) end
redis.call('EXPIRE', inf, ttl)
local belief_r, belief_t = -1, -1
if rpm >= 0 then belief_r = rpm - count - 1 end
if tpm >= 0 then belief_t = tpm - tokens - est end
return {1, '0', grants, tostring(tgrants), belief_r, tostring(belief_t)}
""".replace("MIN_WAIT", str(MIN_POLL_S)).replace("INFLIGHT_POLL", str(INFLIGHT_POLL_S))

# KEYS: log, tok, st
# ARGV: window, id, used (-1 keeps the reservation), pause_s (-1 no 429), rem_req, reset_req, rem_tok,
#       reset_tok (-1 unknown), grants, tgrants, belief_r, belief_t
SETTLE = _EXPIRE + """
local id, used, pause = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local rem_r, reset_r, rem_t, reset_t = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local g, tg, belief_r, belief_t = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
redis.call('ZREM', st .. ':inf', id)
if redis.call('ZSCORE', log, id) then
  local old = tonumber(redis.call('HGET', tok, id) or '0')
  local new = old
  if used >= 0 then new = used end
  redis.call('ZADD', log, now, id)
  redis.call('HSET', tok, id, new)
  redis.call('HINCRBYFLOAT', st, 'tokens', new - old)
end
if used > 0 then redis.call('HINCRBYFLOAT', st, 'used_total', used) end
if pause >= 0 then
  redis.call('HINCRBY', st, 'n429', 1)
  local p = tonumber(redis.call('HGET', st, 'paused_until') or '0')
  if now + pause > p then redis.call('HSET', st, 'paused_until', now + pause, 'last_pause_s', pause) end
end
-- Calls granted after this one may have reached the provider first and be in its figure but not in
-- our belief: only a shortfall they cannot explain is usage we do not know of (another app on the
-- key). Capping on the race alone would hold the bucket until the header's reset, a whole minute.
local later_r = tonumber(redis.call('HGET', st, 'grants') or '0') - g
local later_t = tonumber(redis.call('HGET', st, 'tgrants') or '0') - tg
if rem_r >= 0 and belief_r >= 0 then
  if rem_r < belief_r - later_r then
    redis.call('HSET', st, 'hdr_req_cap', g + rem_r, 'hdr_req_until', now + math.max(reset_r, 0), 'hdr_req_g', g)
  elseif g > tonumber(redis.call('HGET', st, 'hdr_req_g') or '0') then
    redis.call('HSET', st, 'hdr_req_until', 0)
  end
end
if rem_t >= 0 and belief_t >= 0 then
  if rem_t < belief_t - later_t - 1 then
    redis.call('HSET', st, 'hdr_tok_cap', tg + rem_t, 'hdr_tok_until', now + math.max(reset_t, 0), 'hdr_tok_g', g)
  elseif g > tonumber(redis.call('HGET', st, 'hdr_tok_g') or '0') then
    redis.call('HSET', st, 'hdr_tok_until', 0)
  end
end
return 1
"""

# KEYS: log, tok, st, wq ; ARGV: window
PEEK = _EXPIRE + """
local paused = tonumber(redis.call('HGET', st, 'paused_until') or '0')
local h = redis.call('HGETALL', st)
return {count, tostring(tokens), tostring(now), redis.call('ZCARD', KEYS[4]), h}
"""

# KEYS: wq, west, wseen ; ARGV: id
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('HDEL', KEYS[2], ARGV[1]); redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

T = TypeVar("T")


def key_hash(api_key: str | None) -> str:
    """The bucket's name for a key: never the key, only its SHA-256 (first 16 hex digits)."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:16]


def estimate_tokens(*texts: str | None, max_tokens: int = 0) -> int:
    """Prompt estimate (characters / 4, no tokenizer download) plus the completion's ceiling.

    The texts are counted together, as the provider counts the request's messages: rounding each
    one up separately would reserve up to a token per text more than the provider's estimate.
    """
    chars = sum(len(t) for t in texts if t)
    return (chars + 3) // 4 + max_tokens


def limits_for(settings: Settings, provider: str, khash: str) -> RateLimit:
    """`RATE_LIMITS` entry `provider#<key hash prefix>` overrides the provider's for one bucket."""
    for name, lim in settings.rate_limits.items():
        p, _, h = name.partition("#")
        if p == provider and h and khash.startswith(h):
            return lim
    return settings.rate_limit(provider)


@dataclass
class Grant:
    bucket: Bucket
    id: str
    grants: int
    tgrants: float
    belief_r: int
    belief_t: float


class Bucket:
    def __init__(self, limiter: Limiter, provider: str, api_key: str | None) -> None:
        self.limiter = limiter
        self.provider = provider
        self.hash = key_hash(api_key)
        base = f"{limiter.settings.queue_name}:rl:{provider}:{self.hash}"
        self.keys = [f"{base}:log", f"{base}:tok", f"{base}:st", f"{base}:wq", f"{base}:west", f"{base}:wseen"]
        self.limit = limits_for(limiter.settings, provider, self.hash)

    async def acquire(self, est: int, deadline: float) -> Grant:
        """Waits for room (FIFO); raises RateLimited when the wait would pass `deadline`."""
        lim, r = self.limit, self.limiter
        if lim.tpm is not None:
            est = min(est, lim.tpm)  # a call bigger than the whole minute would otherwise never fit
        call_id = uuid.uuid4().hex
        await r.redis.sadd(r.registry, f"{self.provider}:{self.hash}")
        try:
            while True:
                out = await r.acquire_script(keys=self.keys, args=[
                    WINDOW_S, call_id, est, -1 if lim.rpm is None else lim.rpm,
                    -1 if lim.tpm is None else lim.tpm, STALE_WAITER_S, int(WINDOW_S * 10)])
                if int(out[0]) == 1:
                    return Grant(self, call_id, int(out[2]), float(out[3]), int(out[4]), float(out[5]))
                wait, own_wait = float(out[1]), float(out[2])
                if time.monotonic() + own_wait > deadline or time.monotonic() > deadline:
                    later = max(own_wait, MIN_POLL_S)
                    raise RateLimited(f"{self.provider} rate limit: the shared bucket is full for about "
                                      f"{math.ceil(later)} s; the job will continue then", retry_after=later)
                # Poll well inside the stale-ticket horizon so a live waiter never loses its place.
                await asyncio.sleep(min(max(wait, MIN_POLL_S), MAX_POLL_S))
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(r.leave_script(keys=self.keys[3:], args=[call_id]))
            raise

    async def settle(self, grant: Grant, *, used: int | None = None, pause_s: float | None = None,
                     info: RateInfo | None = None) -> None:
        info = info or RateInfo()

        def num(v: float | None) -> float:
            return -1 if v is None else v

        await self.limiter.settle_script(keys=self.keys[:3], args=[
            WINDOW_S, grant.id, -1 if used is None else used, num(pause_s),
            num(info.remaining_requests), num(info.reset_requests_s), num(info.remaining_tokens),
            num(info.reset_tokens_s), grant.grants, grant.tgrants, grant.belief_r, grant.belief_t])


class Limiter:
    """One per process and Redis URL: holds the connection and the loaded scripts."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.registry = f"{settings.queue_name}:rl:buckets"
        self.acquire_script = redis.register_script(ACQUIRE)
        self.settle_script = redis.register_script(SETTLE)
        self.leave_script = redis.register_script(LEAVE)

    def bucket(self, provider: str, api_key: str | None) -> Bucket:
        return Bucket(self, provider, api_key)

    async def call(self, provider: str, api_key: str | None, est_tokens: int,
                   fn: Callable[[], Awaitable[T]], used: Callable[[T], int | None],
                   info: Callable[[T], RateInfo | None]) -> T:
        """Runs `fn` inside the bucket; a 429 pauses the bucket and the call is retried in place."""
        bucket = self.bucket(provider, api_key)
        deadline = time.monotonic() + self.settings.rate_limit_max_wait_seconds
        while True:
            grant = await bucket.acquire(est_tokens, deadline)
            try:
                result = await fn()
            except RateLimited as exc:
                await asyncio.shield(bucket.settle(grant, used=0, pause_s=exc.retry_after))
                if time.monotonic() + exc.retry_after > deadline:
                    raise
                continue
            except BaseException:
                # Failed or aborted: the provider may have counted it, so the reservation stays.
                with contextlib.suppress(Exception):
                    await asyncio.shield(bucket.settle(grant))
                raise
            await asyncio.shield(bucket.settle(grant, used=used(result), info=info(result)))
            return result


_limiters: dict[tuple[str, str, int], Limiter] = {}


def limiter(settings: Settings) -> Limiter:
    """The process's limiter for these settings (one Redis connection pool per event loop)."""
    loop = id(asyncio.get_running_loop())
    k = (settings.redis_url, settings.queue_name, loop)
    lim = _limiters.get(k)
    if lim is None or lim.settings is not settings:
        redis = lim.redis if lim is not None else aioredis.Redis.from_url(settings.redis_url,
                                                                         **redis_options(settings))
        lim = _limiters[k] = Limiter(settings, redis)
    return lim


async def bucket_stats(redis: aioredis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Every bucket of this queue: limits, what the last minute used, utilisation, waits, 429s, pause.

    For the metrics endpoints. `utilisation` is the larger of requests/RPM and
    tokens/TPM over the last minute (None without limits); `paused_until` is a
    Unix time while a 429 pause lasts, else None. The key appears only as its
    hash prefix.
    """
    peek = redis.register_script(PEEK)
    out = []
    for member in sorted(m.decode() if isinstance(m, bytes) else m
                         for m in await redis.smembers(f"{settings.queue_name}:rl:buckets")):
        provider, _, khash = member.partition(":")
        base = f"{settings.queue_name}:rl:{provider}:{khash}"
        count, tokens, now, waiting, flat = await peek(
            keys=[f"{base}:log", f"{base}:tok", f"{base}:st", f"{base}:wq"], args=[WINDOW_S])
        h = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in zip(flat[::2], flat[1::2], strict=True)}
        lim = limits_for(settings, provider, khash)
        tokens_f, now_f = float(tokens), float(now)
        paused = float(h.get("paused_until", 0))
        utils = [u for u in ((count / lim.rpm) if lim.rpm else None,
                             (tokens_f / lim.tpm) if lim.tpm else None) if u is not None]
        out.append({
            "provider": provider, "key_hash": khash, "limit": {"rpm": lim.rpm, "tpm": lim.tpm},
            "used": {"requests": int(count), "tokens": round(tokens_f)},
            "utilisation": round(max(utils), 4) if utils else None,
            "waiting": int(waiting), "waits": int(h.get("waits", 0)), "granted": int(h.get("grants", 0)),
            "rate_limited_429": int(h.get("n429", 0)),
            "paused_until": paused if paused > now_f else None,
            "last_pause_s": float(h["last_pause_s"]) if "last_pause_s" in h else None,
            "tokens_used_total": round(float(h.get("used_total", 0))),
        })
    return out


def stats_json(stats: list[dict[str, Any]]) -> str:
    return json.dumps(stats, indent=2)
