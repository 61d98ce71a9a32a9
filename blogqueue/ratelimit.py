"""The shared, paced, token-fair rate limiter (DESIGN §7).

A bucket is (provider, SHA-256 of the API key): every worker process and host
using the same key shares it through Redis; a user's own key has its own.
Each acquisition is ONE atomic Lua script on Redis's clock.

**Dimensions.** A call costs something on each dimension its provider is
limited on (the adapter's `limit_dimensions`, `RATE_LIMITS` names the limits):
`rpm` 1 per call; `tpm` prompt estimate + `max_tokens` (OpenAI, Gemini);
`itpm` the prompt estimate and `otpm` `max_tokens` (Anthropic). An image call
costs `rpm` only. The reservation is reconciled from the provider's `usage`
when the call returns (`settle` gives back or charges the difference); for
Anthropic, `cache_read_input_tokens` are not charged to ITPM, as Anthropic
documents for current models, while `input_tokens` and
`cache_creation_input_tokens` are.

**Pacing.** Each limited dimension is a continuously refilled bucket kept as a
GCRA: a theoretical arrival time `tat` that each grant pushes by cost/rate
(rate = limit / 60 s). A call is granted when `tat + cost/rate - now <= burst`,
so grants are spread evenly at the limit's rate and at most `burst` seconds of
it can go at once (a call bigger than the burst waits for the bucket to be
idle, see below). On top of that, each dimension keeps the last minute's calls
in a log and never lets that minute hold more than the limit, because
OpenAI's default enforcement is per minute.

Why the default burst is 0.25 s, not the provider's 1 s (the off-by-one). A
provider that enforces a limit L per minute "quantized" (OpenAI: "60,000
requests/minute may be enforced as 1,000 requests/second") or as a
continuously refilled token bucket (Anthropic) admits an arrival curve of at
most `B_p + r*t` in any interval t (r = L/60, B_p its burst, one second here).
Our grants obey `B + r*t`. A request reaches the provider some time after its
grant: between 0 and J (event loop, connection, TLS, network). Shifting
arrivals by up to J can pack `B + r*(t + J)` into an interval t. So zero 429s
need `B + r*J <= B_p`, i.e. `B <= B_p - r*J`: our burst must be the provider's
minus the jitter we allow for. A call normally starts within milliseconds of
its grant, but a fresh worker process builds its SDK client and connection
inside that time, a loaded event loop adds more, and a waiter granted by
another's poll picks its grant up at its own next poll (up to 0.25 s), so
`BURST_MARGIN_S` is 0.75 s: B = 1 s - 0.75 s = 0.25 s
(`RATE_LIMIT_BURST_SECONDS`). The RATE stays exactly r, so a backlogged
bucket still runs at 100 % of the limit: the margin costs burst, not
throughput (and since any poll grants every head whose turn has come, the
burst is not needed to absorb late polls). A call bigger than the burst
(x/r > B, e.g. one request at 60 RPM) is granted once the margin has passed
since the last grant (nothing earlier is still on its way) and the provider's
second (B + margin) holds what our bucket holds: such calls still go at the
limit's rate. The per-minute log has the same
off-by-one: the provider counts a call at its arrival, after our grant, so a
log entry stays 60 s from `grant + ARRIVAL_MARGIN_S` (0.25 s), and once the
answer says how long the provider worked on it (OpenAI's
`openai-processing-ms`) from `answer - processing`, an upper bound of the
arrival however slow our side was to send it. Steady throughput under a
rolling minute is then about `L * 60 / 60.25` = 99.6 % of the limit. Evenly
spaced grants at exactly the limit with no margin would put a 61st second's
call into the provider's minute now and then, and under a quantized limit
any jitter would 429: the margins are what let 0 x 429 and >= 99 % hold
together.

A bucket that is new or has been idle for a minute starts cold: its first
call goes at once and the next ones at the paced rate, without the burst
(for bursts up to the provider's second; a larger configured burst is taken
as meant).
When workers have just started, their first requests are the slowest to
leave (cold connections, a busy event loop), so the start is where arrivals
jitter most.

**A 429** keeps the request counted, pauses the whole bucket for the time the
provider asked, and sets every dimension's `tat` to the pause's end plus the
burst: the bucket restarts empty, so the end of the pause releases waiters
at the paced rate, not as a herd. The call is retried in place once the pause
is over and uses up no attempt.

**Provider headers.** When `x-ratelimit-remaining-*` (Anthropic:
`anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-remaining`)
say less is left than the bucket believed at the grant, minus what the bucket
granted since (those calls may have reached the provider first), the usage is
someone else's on the key: the dimension is capped at that figure until the
header's reset time. Anthropic rounds token figures to the nearest thousand,
so token shortfalls under `HEADER_TOKEN_SLACK` are ignored.

**The waiting line is token-fair by tenant: deficit round robin.** Waiting
calls are queued per tenant (FIFO within a tenant); the tenants with waiting
calls form a ring. The tenant at the front of the ring has a deficit; its
oldest call is the head of the line and is granted (when the bucket has room)
if the deficit covers the call's charge, which is then subtracted. Otherwise
the tenant gets a quantum added and goes to the back of the ring. A tenant
whose queue empties leaves the ring and loses its deficit. The charge is the
call's reserved tokens (on the bucket's limited token dimensions; 1 per call
when the bucket limits only requests), so over any period in which two
tenants stay backlogged they are granted the same tokens within a quantum and
two calls (DRR's bound), whatever the size of their calls: a tenant whose
calls are 4x larger gets a quarter of the calls. DRR rather than a virtual-time fair
queue because it needs O(1) state per tenant (a deficit) and O(1) work per
grant in a Lua script, no per-call virtual finish times to keep consistent
across processes. The quantum is the largest charge of the current line, so
a tenant never needs two rotations for one call. A call that costs nothing on
the dimensions the head is waiting for (an image while the head waits for
tokens) is not held behind it.

Any waiter's poll grants every head whose turn has come, in the line's order
(a head granted this way finds its grant at its next poll), so the bucket's
rate does not depend on the head polling at the right moment, and a waiter
that stops polling (killed process) cannot hold the line: its turn is granted
and never picked up (one call's capacity lost), and tickets not refreshed for
`STALE_WAITER_S` (every poll refreshes, at most `MAX_POLL_S` apart) are
dropped by the next acquisition. Stop cancels the task, which ends the wait at
once and removes the ticket. Waiting is bounded by
`RATE_LIMIT_MAX_WAIT_SECONDS`: when a call's own expected wait (ignoring the
line) or its total wait passes it, `RateLimited` goes to the engine, which
reschedules the job (no attempt used, worker slot freed).

`bucket_stats(redis, settings)` returns every bucket's figures for metrics.
The limiter needs a single Redis server (as arq does): its scripts touch
per-tenant keys derived from the bucket's prefix, so Redis Cluster is not
supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from .errors import RateLimited
from .providers.base import RateInfo, TextResult
from .redisconn import redis_options
from .settings import DIMENSIONS, RateLimit, Settings

WINDOW_S = 60.0
# Time allowed between our grant and the request's arrival at the provider (see the module docstring).
ARRIVAL_MARGIN_S = 0.25
# The burst's own margin is larger: a burst packs many calls into the arrival jitter (a fresh worker
# process builds its SDK client and connection inside it, a waiter granted by another's poll picks its
# grant up at its next poll), a minute's edge only one. With the default burst: 0.25 + 0.75 = 1 s.
BURST_MARGIN_S = 0.75
STALE_WAITER_S = 2.0
# Polls refresh a waiter's ticket; eight polls fit in the stale horizon, so a slow but live waiter keeps
# its place, and a killed one holds the line for 2 s at most. Shorter polls cost Redis time per waiter.
MAX_POLL_S = 0.25
MIN_POLL_S = 0.005
# A waiter that is not the head polls this often while the head's turn has come but it has not polled:
# its grant is made by whoever polls first, so this only bounds how late a granted waiter picks it up.
NONHEAD_POLL_S = 0.1
HEADER_TOKEN_SLACK = 1000
TOKEN_DIMS = ("tpm", "itpm", "otpm")

Cost = Mapping[str, int]

_PRELUDE = """
local st, log, cost = KEYS[1], KEYS[2], KEYS[3]
local window = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
if #old > 0 then
  local freed = {0, 0, 0, 0}
  for _, m in ipairs(old) do
    for d = 1, 4 do
      local v = redis.call('HGET', cost, m .. ':' .. d)
      if v then freed[d] = freed[d] + tonumber(v); redis.call('HDEL', cost, m .. ':' .. d) end
    end
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  for d = 1, 4 do if freed[d] ~= 0 then redis.call('HINCRBYFLOAT', st, 'sum' .. d, -freed[d]) end end
end
if redis.call('ZCARD', log) == 0 then
  for d = 1, 4 do redis.call('HSET', st, 'sum' .. d, 0) end
end
"""

# KEYS: st, log, cost, wseen, winfo, ring, wdef
# ARGV: window, id, tenant, charge, stale_s, ttl_s, burst_s, key prefix, then limit and cost of each of
#       rpm, tpm, itpm, otpm (limit -1: not limited), then the arrival margin
ACQUIRE = _PRELUDE + """
local wseen, winfo, ring, wdef = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local id, tenant, charge = ARGV[2], ARGV[3], tonumber(ARGV[4])
local stale, ttl, burst, base = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local L, C = {}, {}
for d = 1, 4 do L[d] = tonumber(ARGV[7 + 2 * d]); C[d] = tonumber(ARGV[8 + 2 * d]) end
for d = 1, 4 do redis.call('HSET', st, 'lim' .. d, L[d]) end
local function wkey(tn) return base .. ':wt:' .. tn end
local function remove(m)
  local tn = redis.call('HGET', winfo, m .. ':t')
  if tn then redis.call('ZREM', wkey(tn), m) end
  redis.call('HDEL', winfo, m .. ':t', m .. ':q', m .. ':1', m .. ':2', m .. ':3', m .. ':4')
  redis.call('ZREM', wseen, m)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', wseen, '-inf', now - stale)) do remove(m) end

local margin = tonumber(ARGV[17])
local gkey, gseen = base .. ':granted', base .. ':gseen'
for _, m in ipairs(redis.call('ZRANGEBYSCORE', gseen, '-inf', now - 5 * stale)) do  -- never picked up
  redis.call('HDEL', gkey, m); redis.call('ZREM', gseen, m)
end
local ready = redis.call('HGET', gkey, id)
if ready then
  redis.call('HDEL', gkey, id); redis.call('ZREM', gseen, id)
  if redis.call('ZSCORE', log, id) then redis.call('ZADD', log, now + margin, id) end
  return cjson.decode(ready)
end

local first = false
if not redis.call('HGET', winfo, id .. ':t') then
  first = true
  local qmax = tonumber(redis.call('HGET', st, 'qmax') or '0')
  if charge > qmax then qmax = charge; redis.call('HSET', st, 'qmax', qmax) end
  redis.call('ZADD', wkey(tenant), redis.call('HINCRBY', st, 'seq', 1), id)
  redis.call('HSET', winfo, id .. ':t', tenant, id .. ':q', charge, id .. ':1', C[1], id .. ':2', C[2],
             id .. ':3', C[3], id .. ':4', C[4])
  if not redis.call('HGET', wdef, tenant) then
    redis.call('RPUSH', ring, tenant)
    redis.call('HSET', wdef, tenant, math.max(qmax, 1))
  end
end
redis.call('ZADD', wseen, now, id)

-- Deficit round robin: the head of the line is the oldest call of the first tenant in the ring whose
-- deficit covers it.
local function next_head()
  local quantum = math.max(tonumber(redis.call('HGET', st, 'qmax') or '1'), 1)
  for _ = 1, 100000 do
    local tn = redis.call('LINDEX', ring, 0)
    if not tn then return nil end
    local h = redis.call('ZRANGE', wkey(tn), 0, 0)[1]
    if not h then
      redis.call('LPOP', ring); redis.call('HDEL', wdef, tn)
    else
      local def = tonumber(redis.call('HGET', wdef, tn) or '0')
      if def >= tonumber(redis.call('HGET', winfo, h .. ':q') or '0') then return h end
      redis.call('HSET', wdef, tn, def + quantum)
      redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
    end
  end
  return nil
end

local paused = tonumber(redis.call('HGET', st, 'paused_until') or '0')
-- How long until a call of costs `c` fits every dimension, and which dimensions hold it.
local function fit(c)
  local w, blocked = 0, {}
  if paused > now then w = paused - now end
  for d = 1, 4 do
    local x = c[d]
    if L[d] >= 0 and x > 0 then
      x = math.min(x, L[d])
      local r = L[d] / 60
      local wd = 0
      -- Room for x within the burst. A call bigger than the burst needs the bucket idle for its excess
      -- (at most the arrival margin): then no earlier grant can still be on its way to the provider.
      local tat = tonumber(redis.call('HGET', st, 'tat' .. d) or '0')
      local need = tat - now - (burst - x / r)
      if x / r > burst then
        -- Once the margin has passed since the last grant, nothing earlier is still on its way, and the
        -- provider's second (burst + margin) holds what our bucket holds.
        local last = tonumber(redis.call('HGET', st, 'last' .. d) or '0') + BURST_MARGIN - now
        need = math.max(tat - now - math.max(burst + BURST_MARGIN - x / r, 0), last)
      end
      if need > 0 then wd = need end
      local over = tonumber(redis.call('HGET', st, 'sum' .. d) or '0') + x - L[d]
      if over > 1e-6 then
        local freed, i, ww = 0, 0, window
        while true do
          local e = redis.call('ZRANGE', log, i, i + 15, 'WITHSCORES')
          if #e == 0 then break end
          local done = false
          for j = 1, #e, 2 do
            freed = freed + tonumber(redis.call('HGET', cost, e[j] .. ':' .. d) or '0')
            if freed >= over - 1e-6 then ww = tonumber(e[j + 1]) + window - now; done = true; break end
          end
          if done then break end
          i = i + 16
        end
        if ww > wd then wd = ww end
      end
      -- A provider's figure refills at the limit's rate from when it was read, until its reset.
      local hu = tonumber(redis.call('HGET', st, 'hu' .. d) or '0')
      if hu > now then
        local short = tonumber(redis.call('HGET', st, 'g' .. d) or '0') + x
                      - tonumber(redis.call('HGET', st, 'hc' .. d) or '0')
                      - r * (now - tonumber(redis.call('HGET', st, 'ht' .. d) or '0'))
        if short > 0 then wd = math.max(wd, math.min(hu - now, short / r)) end
      end
      if wd > 0 then
        blocked[d] = true
        if wd > w then w = wd end
      end
    end
  end
  return w, blocked
end

local function touch()
  for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, ttl) end
  redis.call('EXPIRE', wkey(tenant), ttl)
  redis.call('EXPIRE', gkey, ttl); redis.call('EXPIRE', gseen, ttl)
end

-- Grants `w` (costs `c`, tenant `tn`, line charge `q`): the paced buckets, the minute's log, the line.
local function grant(w, c, tn, q, head)
  remove(w)
  if head then redis.call('HINCRBYFLOAT', wdef, tn, -q) end
  -- The provider counts the call when it arrives, up to the margin after this grant.
  redis.call('ZADD', log, now + margin, w)
  local out = {1, redis.call('HINCRBY', st, 'grants', 1)}
  for d = 1, 4 do
    local belief = -1
    if c[d] > 0 then
      redis.call('HSET', cost, w .. ':' .. d, c[d])
      local sum = tonumber(redis.call('HINCRBYFLOAT', st, 'sum' .. d, c[d]))
      if L[d] >= 0 then
        local was = tonumber(redis.call('HGET', st, 'tat' .. d) or '0')
        redis.call('HSET', st, 'last' .. d, now)
        local step = math.min(c[d], L[d]) / (L[d] / 60)
        if was < now - 60 and burst <= 1 then
          -- Cold start (a new or long idle bucket, workers just started): no burst after the first call.
          redis.call('HSET', st, 'tat' .. d, now + math.max(step, burst))
        else
          redis.call('HSET', st, 'tat' .. d, math.max(was, now) + step)
        end
        belief = L[d] - sum
      end
    end
    out[#out + 1] = redis.call('HINCRBYFLOAT', st, 'g' .. d, c[d])
    out[#out + 1] = tostring(belief)
  end
  return out
end

local function costs_of(w)
  local c = {}
  for d = 1, 4 do c[d] = tonumber(redis.call('HGET', winfo, w .. ':' .. d) or '0') end
  return c
end

-- Whoever polls grants every head whose turn has come, in the line's order: the bucket's rate does not
-- depend on the head polling at the right moment. A head granted for another waiter finds its grant at
-- its next poll (the log entry then moves to that time).
local result, wait = nil, 0
for _ = 1, 64 do
  local head = next_head()
  if not head then break end
  local hc = costs_of(head)
  local hw, hblocked = fit(hc)
  if hw > 0 then
    -- A call that costs nothing on what the head waits for (an image while it waits for tokens) goes.
    if head ~= id and paused <= now then
      local free = fit(C) <= 0
      for d = 1, 4 do if hblocked[d] and C[d] > 0 then free = false end end
      if free then result = grant(id, C, tenant, charge, false) end
    end
    wait = hw
    break
  end
  local tn, q = redis.call('HGET', winfo, head .. ':t'), tonumber(redis.call('HGET', winfo, head .. ':q'))
  local out = grant(head, hc, tn, q, true)
  if head == id then result = out else
    redis.call('HSET', gkey, head, cjson.encode(out)); redis.call('ZADD', gseen, now, head)
  end
end
if redis.call('ZCARD', wseen) == 0 then
  redis.call('DEL', ring, wdef); redis.call('HSET', st, 'qmax', 0)
end
touch()
if result then return result end
if first then redis.call('HINCRBY', st, 'waits', 1) end
local mine = fit(C)
if redis.call('LINDEX', ring, 0) and redis.call('ZRANGE', wkey(redis.call('LINDEX', ring, 0)), 0, 0)[1] ~= id then
  wait = math.max(wait, NONHEAD_POLL)
end
return {0, tostring(math.max(wait, MIN_POLL)), tostring(mine)}
""".replace("NONHEAD_POLL", str(NONHEAD_POLL_S)).replace("MIN_POLL", str(MIN_POLL_S)).replace(
    "BURST_MARGIN", str(BURST_MARGIN_S))

# KEYS: st, log, cost
# ARGV: window, id, burst_s, pause_s (-1: no 429), grant number, then for each dimension:
#       limit, used (-1 keeps the reservation), remaining (-1 unknown), reset_s, g at grant, belief, slack;
#       then the provider's processing time (-1 unknown) and the arrival margin
SETTLE = _PRELUDE + """
local id, burst, pause, gn = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local processing, margin = tonumber(ARGV[34]), tonumber(ARGV[35])
local inlog = redis.call('ZSCORE', log, id)
if inlog and processing >= 0 then
  -- The answer took `processing` at the provider: it arrived no later than now - processing. The entry
  -- leaves the minute then, however long our own side took to send it (a loaded event loop, a new client).
  redis.call('ZADD', log, math.max(tonumber(inlog) - margin, now - processing), id)
end
for d = 1, 4 do
  local a = 6 + (d - 1) * 7
  local lim, used = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local rem, reset, g, belief, slack = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
                                       tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  if used >= 0 then
    local was = tonumber(redis.call('HGET', cost, id .. ':' .. d) or '-1')
    if was >= 0 and inlog then
      redis.call('HSET', cost, id .. ':' .. d, used)
      redis.call('HINCRBYFLOAT', st, 'sum' .. d, used - was)
      if lim >= 0 then  -- give back (or charge) the difference to the paced bucket
        local tat = tonumber(redis.call('HGET', st, 'tat' .. d) or '0')
        local delta = (math.min(used, lim) - math.min(was, lim)) / (lim / 60)
        if delta < 0 then redis.call('HSET', st, 'tat' .. d, math.max(tat + delta, now))
        elseif delta > 0 then redis.call('HSET', st, 'tat' .. d, math.max(tat, now) + delta) end
      end
    end
    if used > 0 and was >= 0 then redis.call('HINCRBYFLOAT', st, 'used' .. d, used) end
  end
  if pause >= 0 and lim >= 0 then
    -- The provider's bucket is empty: restart ours empty at the pause's end, so waiters leave paced.
    local tat = tonumber(redis.call('HGET', st, 'tat' .. d) or '0')
    redis.call('HSET', st, 'tat' .. d, math.max(tat, now + pause + burst))
  end
  -- Calls granted after this one may have reached the provider first and be in its figure but not in
  -- our belief: only a shortfall they cannot explain is usage we do not know of (another app on the key).
  if rem >= 0 and belief >= 0 then
    local later = tonumber(redis.call('HGET', st, 'g' .. d) or '0') - g
    if rem < belief - later - slack then
      redis.call('HSET', st, 'hc' .. d, g + rem, 'hu' .. d, now + math.max(reset, 0), 'hg' .. d, gn, 'ht' .. d, now)
    elseif gn > tonumber(redis.call('HGET', st, 'hg' .. d) or '0') then
      redis.call('HSET', st, 'hu' .. d, 0)
    end
  end
end
if pause >= 0 then
  redis.call('HINCRBY', st, 'n429', 1)
  local p = tonumber(redis.call('HGET', st, 'paused_until') or '0')
  if now + pause > p then redis.call('HSET', st, 'paused_until', now + pause, 'last_pause_s', pause) end
end
return 1
"""

# KEYS: st, log, cost, wseen ; ARGV: window
PEEK = _PRELUDE + """
local sums = {}
for d = 1, 4 do sums[d] = tostring(redis.call('HGET', st, 'sum' .. d) or '0') end
return {sums, tostring(now), redis.call('ZCARD', KEYS[4]), redis.call('HGETALL', st)}
"""

# KEYS: wseen, winfo ; ARGV: id, key prefix
LEAVE = """
local tn = redis.call('HGET', KEYS[2], ARGV[1] .. ':t')
if tn then redis.call('ZREM', ARGV[2] .. ':wt:' .. tn, ARGV[1]) end
local m = ARGV[1]
redis.call('HDEL', KEYS[2], m .. ':t', m .. ':q', m .. ':1', m .. ':2', m .. ':3', m .. ':4')
redis.call('ZREM', KEYS[1], m)
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


def text_cost(dimensions: tuple[str, ...], *texts: str | None, max_tokens: int) -> dict[str, int]:
    """What a text call reserves on each of its provider's dimensions.

    `tpm`: prompt estimate + `max_tokens` (OpenAI counts a request as that before it runs);
    `itpm`: the prompt estimate; `otpm`: `max_tokens` (Anthropic estimates OTPM from it).
    """
    prompt = estimate_tokens(*texts)
    cost = {"rpm": 1}
    if "tpm" in dimensions:
        cost["tpm"] = prompt + max_tokens
    if "itpm" in dimensions:
        cost["itpm"] = prompt
    if "otpm" in dimensions:
        cost["otpm"] = max_tokens
    return cost


def text_usage(result: TextResult) -> dict[str, int]:
    """What a text call really used, per dimension, from the provider's `usage`.

    ITPM counts `input_tokens` + `cache_creation_input_tokens`, not cache reads (Anthropic, current
    models); TPM counts prompt + completion as OpenAI reports them (its cached tokens are part of the
    prompt and count).
    """
    return {"tpm": result.total_tokens,
            "itpm": result.prompt_tokens + result.cache_creation_input_tokens,
            "otpm": result.completion_tokens}


def warm(provider: object, api_key: str | None) -> None:
    """Builds the adapter's SDK client for this key before the call asks for a grant.

    A fresh client takes a second on a loaded machine (an HTTP pool, an SSL context): built after
    the grant, that second would sit between the grant and the request's arrival at the provider,
    past the margin the pacing allows for (see the module docstring).
    """
    clients = getattr(provider, "clients", None)
    if api_key and clients is not None and hasattr(clients, "get"):
        clients.get(api_key)


def limits_for(settings: Settings, provider: str, khash: str) -> RateLimit:
    """`RATE_LIMITS` entry `provider#<key hash prefix>` overrides the provider's for one bucket."""
    for name, lim in settings.rate_limits.items():
        p, _, h = name.partition("#")
        if p == provider and h and khash.startswith(h):
            return lim
    return settings.rate_limit(provider)


def is_limited(settings: Settings, provider: str) -> bool:
    """True when `RATE_LIMITS` names the provider (or one of its buckets)."""
    return any(name.partition("#")[0] == provider for name in settings.rate_limits)


def _as_cost(cost: int | Cost) -> dict[str, int]:
    if isinstance(cost, int):  # tokens of a tpm-limited call, as callers before dimensions passed them
        cost = {"rpm": 1, "tpm": cost}
    return {d: int(cost.get(d, 0)) for d in DIMENSIONS}


@dataclass
class Grant:
    bucket: Bucket
    id: str
    number: int
    g: list[float]        # the bucket's cumulative grants per dimension, this one included
    belief: list[float]   # what the bucket believed was left per dimension after this grant (-1: no limit)


class Bucket:
    def __init__(self, limiter: Limiter, provider: str, api_key: str | None) -> None:
        self.limiter = limiter
        self.provider = provider
        self.hash = key_hash(api_key)
        self.base = f"{limiter.settings.queue_name}:rl:{provider}:{self.hash}"
        self.keys = [f"{self.base}:{k}" for k in ("st", "log", "cost", "wseen", "winfo", "ring", "wdef")]
        self.limit = limits_for(limiter.settings, provider, self.hash)

    def _limits(self) -> list[int]:
        return [-1 if (v := getattr(self.limit, d)) is None else v for d in DIMENSIONS]

    def charge(self, cost: Mapping[str, int]) -> int:
        """The call's weight in the fair line: its reserved tokens on limited token dimensions, else 1."""
        limited = [d for d in TOKEN_DIMS if getattr(self.limit, d) is not None]
        return sum(cost.get(d, 0) for d in limited) if limited else 1

    async def acquire(self, cost: int | Cost, deadline: float, tenant: str = "") -> Grant:
        """Waits for room and for the tenant's turn; raises RateLimited when the wait would pass `deadline`."""
        r, c = self.limiter, _as_cost(cost)
        limits = self._limits()
        args: list[Any] = []
        for d, lim in zip(DIMENSIONS, limits, strict=True):
            args += [lim, c[d]]
        call_id = uuid.uuid4().hex
        await r.redis.sadd(r.registry, f"{self.provider}:{self.hash}")
        try:
            while True:
                out = await r.acquire_script(keys=self.keys, args=[
                    WINDOW_S, call_id, tenant, self.charge(c), STALE_WAITER_S,
                    int(WINDOW_S * 10), r.settings.rate_limit_burst_seconds, self.base, *args, ARRIVAL_MARGIN_S])
                if int(out[0]) == 1:
                    vals = [float(v) for v in out[2:]]
                    return Grant(self, call_id, int(out[1]), vals[0::2], vals[1::2])
                wait, own_wait = float(out[1]), float(out[2])
                now = time.monotonic()
                if now + own_wait > deadline or now > deadline:
                    later = max(own_wait, MIN_POLL_S)
                    raise RateLimited(f"{self.provider} rate limit: the shared bucket is full for about "
                                      f"{math.ceil(later)} s; the job will continue then", retry_after=later)
                await asyncio.sleep(min(max(wait, MIN_POLL_S), MAX_POLL_S))
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(r.leave_script(keys=self.keys[3:5], args=[call_id, self.base]))
            raise

    async def settle(self, grant: Grant, *, used: int | Mapping[str, int] | None = None,
                     pause_s: float | None = None, info: RateInfo | None = None) -> None:
        """Reconciles the reservation with `used` (None keeps it), records a 429 pause and the headers."""
        info = info or RateInfo()
        if isinstance(used, int):
            used = {"tpm": used}
        headers = {"rpm": (info.remaining_requests, info.reset_requests_s),
                   "tpm": (info.remaining_tokens, info.reset_tokens_s),
                   "itpm": (info.remaining_input_tokens, info.reset_input_tokens_s),
                   "otpm": (info.remaining_output_tokens, info.reset_output_tokens_s)}
        args: list[Any] = []
        for i, (d, lim) in enumerate(zip(DIMENSIONS, self._limits(), strict=True)):
            rem, reset = headers[d]
            u = -1 if used is None or d not in used else used[d]
            slack = HEADER_TOKEN_SLACK if d in ("itpm", "otpm") else (1 if d == "tpm" else 0)
            args += [lim, u, -1 if rem is None else rem, -1 if reset is None else reset, grant.g[i],
                     grant.belief[i], slack]
        processing = -1 if info.processing_s is None else info.processing_s
        await self.limiter.settle_script(keys=self.keys[:3], args=[
            WINDOW_S, grant.id, self.limiter.settings.rate_limit_burst_seconds,
            -1 if pause_s is None else pause_s, grant.number, *args, processing, ARRIVAL_MARGIN_S])


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

    async def call(self, provider: str, api_key: str | None, cost: int | Cost,
                   fn: Callable[[], Awaitable[T]], used: Callable[[T], int | Mapping[str, int] | None],
                   info: Callable[[T], RateInfo | None], tenant: str = "") -> T:
        """Runs `fn` inside the bucket; a 429 pauses the bucket and the call is retried in place.

        `cost` is what the call reserves per dimension (`text_cost`; an int is tokens on `tpm`),
        `used` what it really used (`text_usage`), `tenant` its place in the fair line.
        """
        bucket = self.bucket(provider, api_key)
        deadline = time.monotonic() + self.settings.rate_limit_max_wait_seconds
        while True:
            grant = await bucket.acquire(cost, deadline, tenant)
            try:
                result = await fn()
            except RateLimited as exc:
                # The refused request counts; its tokens were never used.
                await asyncio.shield(bucket.settle(grant, used=dict.fromkeys(TOKEN_DIMS, 0),
                                                   pause_s=exc.retry_after))
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

    For the metrics endpoints. `limit` has `rpm` and `tpm` always and `itpm` / `otpm` when set;
    `used` has `requests` and `tokens` (Anthropic: input + output) and `input_tokens` /
    `output_tokens` when those are limited. `utilisation` is the largest used/limit over the
    limited dimensions in the last minute (None without limits); `paused_until` is a Unix time while
    a 429 pause lasts, else None. The key appears only as its hash prefix.
    """
    peek = redis.register_script(PEEK)
    out = []
    for member in sorted(m.decode() if isinstance(m, bytes) else m
                         for m in await redis.smembers(f"{settings.queue_name}:rl:buckets")):
        provider, _, khash = member.partition(":")
        base = f"{settings.queue_name}:rl:{provider}:{khash}"
        sums, now, waiting, flat = await peek(keys=[f"{base}:{k}" for k in ("st", "log", "cost", "wseen")],
                                              args=[WINDOW_S])
        h = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in zip(flat[::2], flat[1::2], strict=True)}
        used = dict(zip(DIMENSIONS, (float(s) for s in sums), strict=True))
        lim = limits_for(settings, provider, khash)
        dims = lim.dimensions()
        paused = float(h.get("paused_until", 0))
        utils = [used[d] / n for d, n in dims.items()]
        limit: dict[str, int | None] = {"rpm": lim.rpm, "tpm": lim.tpm}
        shown: dict[str, int] = {"requests": int(used["rpm"]),
                                 "tokens": round(used["tpm"] or used["itpm"] + used["otpm"])}
        for d, name in (("itpm", "input_tokens"), ("otpm", "output_tokens")):
            if getattr(lim, d) is not None:
                limit[d] = getattr(lim, d)
                shown[name] = round(used[d])
        total = sum(float(h.get(f"used{i}", 0)) for i in (2, 3, 4))
        out.append({
            "provider": provider, "key_hash": khash, "limit": limit, "used": shown,
            "utilisation": round(max(utils), 4) if utils else None,
            "waiting": int(waiting), "waits": int(h.get("waits", 0)), "granted": int(h.get("grants", 0)),
            "rate_limited_429": int(h.get("n429", 0)),
            "paused_until": paused if paused > float(now) else None,
            "last_pause_s": float(h["last_pause_s"]) if "last_pause_s" in h else None,
            "tokens_used_total": round(total),
        })
    return out


def stats_json(stats: list[dict[str, Any]]) -> str:
    return json.dumps(stats, indent=2)
