"""The shared limiter against the real Redis: pacing, reservations, headers, 429 pauses, the token-fair
line (deficit round robin), killed waiters, stop."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from blogqueue import ratelimit
from blogqueue.errors import RateLimited
from blogqueue.providers.base import RateInfo
from blogqueue.settings import RateLimit

from .conftest import wait_until


@pytest.fixture
async def redis(settings):
    r = aioredis.Redis.from_url(settings.redis_url)
    yield r
    await r.aclose()


def make(settings, redis, burst: float | None = None, **limits):
    s = settings.replace(rate_limits={"openai": RateLimit(**limits)},
                         rate_limit_burst_seconds=burst or settings.rate_limit_burst_seconds)
    return ratelimit.Limiter(s, redis)


def soon(seconds: float = 0.0) -> float:
    return time.monotonic() + seconds


async def stats(redis, limiter):
    return {b["key_hash"]: b for b in await ratelimit.bucket_stats(redis, limiter.settings)}


async def test_grants_are_paced_at_the_limit_and_shared(settings, redis):
    """600 RPM is 10 grants a second after a burst of 0.25 s (2.5 calls), across limiter instances."""
    a, b = make(settings, redis, rpm=600), make(settings, redis, rpm=600)  # two "processes"
    start = time.monotonic()
    times = []
    for i in range(30):
        await (a if i % 2 else b).bucket("openai", "sk-shared").acquire(0, soon(10))
        times.append(time.monotonic() - start)
    # 30 grants need (30 - 2.5) / 10 s at least; a minute's worth at once would take no time at all.
    assert times[-1] >= 2.6
    assert sum(1 for t in times if t <= 1.0) <= 2.5 + 10 + 1
    # another key is another bucket, untouched
    t0 = time.monotonic()
    await a.bucket("openai", "sk-own-key").acquire(0, soon(1))
    assert time.monotonic() - t0 < 0.5
    st = await stats(redis, a)
    assert st[ratelimit.key_hash("sk-shared")]["used"]["requests"] == 30
    assert st[ratelimit.key_hash("sk-shared")]["waits"] > 0


async def test_a_wait_past_the_bound_is_handed_back(settings, redis):
    lim = make(settings, redis, rpm=6)  # one call every 10 s
    await lim.bucket("openai", "sk-b").acquire(0, soon())
    with pytest.raises(RateLimited) as info:
        await lim.bucket("openai", "sk-b").acquire(0, soon(1))
    assert 8 < info.value.retry_after <= 10 + ratelimit.BURST_MARGIN_S


async def test_the_minute_never_holds_more_than_the_limit(settings, redis):
    """Pacing alone would let a minute hold the limit plus the burst; the log holds it to the limit."""
    lim = make(settings, redis, burst=60, tpm=60_000)  # a burst of the whole minute: only the log binds
    bucket = lim.bucket("openai", "sk-m")
    for _ in range(4):
        g = await bucket.acquire(15_000, soon(1))
        await bucket.settle(g, used=15_000)
    with pytest.raises(RateLimited) as info:
        await bucket.acquire(100, soon(1))
    assert 55 < info.value.retry_after <= 60 + ratelimit.ARRIVAL_MARGIN_S


async def test_tokens_are_reserved_then_reconciled(settings, redis):
    lim = make(settings, redis, burst=0.5, tpm=60_000)  # 1,000 tokens/s, burst 500
    bucket = lim.bucket("openai", "sk-t")
    first = await bucket.acquire(400, soon())
    with pytest.raises(RateLimited):
        await bucket.acquire(400, soon(0.1))  # needs about 0.3 s more
    await bucket.settle(first, used=100)  # the call used far less than it reserved: 0.3 s given back
    t0 = time.monotonic()
    await bucket.acquire(400, soon(1))
    assert time.monotonic() - t0 < 0.3  # 0.4 s without the give-back
    st = (await stats(redis, lim))[ratelimit.key_hash("sk-t")]
    assert st["used"]["tokens"] == 500 and st["tokens_used_total"] == 100


async def test_provider_headers_saying_less_is_left_are_followed(settings, redis):
    lim = make(settings, redis, burst=0.5, tpm=60_000)  # 1,000 tokens/s, burst 500
    bucket = lim.bucket("openai", "sk-h")
    g = await bucket.acquire(100, soon())
    await asyncio.sleep(1.0)  # the paced bucket refills its burst: pacing alone would grant 400 at once
    # the bucket believes 59,900 are left; the provider says none are: what it has refills from now on
    await bucket.settle(g, used=100, info=RateInfo(remaining_tokens=0, reset_tokens_s=5))
    start = time.monotonic()
    await bucket.acquire(400, soon(5))  # pacing alone would grant it at once; the header's refill: 0.4 s
    assert time.monotonic() - start >= 0.3
    # the provider agreeing with the bucket lifts the constraint at once
    g = await bucket.acquire(10, soon(1))
    await bucket.settle(g, used=10, info=RateInfo(remaining_tokens=int(g.belief[1]), reset_tokens_s=30))
    start = time.monotonic()
    await bucket.acquire(10, soon(1))
    assert time.monotonic() - start < 0.2


async def test_headers_counting_our_own_later_calls_do_not_cap_the_bucket(settings, redis):
    lim = make(settings, redis, burst=1.0, rpm=6000, tpm=300_000)  # pacing far from binding
    bucket = lim.bucket("openai", "sk-race")
    first = await bucket.acquire(1000, soon())
    second = await bucket.acquire(1000, soon(0.5))  # granted later, reached the provider first
    # The provider's figures for the first call already hold the second: that is no unknown usage.
    await bucket.settle(first, used=200, info=RateInfo(
        remaining_requests=int(first.belief[0]) - 1, reset_requests_s=60,
        remaining_tokens=int(first.belief[1]) - 1000, reset_tokens_s=60))
    await bucket.settle(second, used=200)
    for _ in range(5):  # a cap would hold these back for the header's whole minute
        await bucket.settle(await bucket.acquire(1000, soon(0.5)), used=200)
    # Usage the bucket cannot explain still caps it: nothing left, refilling at 5,000 tokens/s from now.
    g = await bucket.acquire(1000, soon(1))
    await bucket.settle(g, used=200, info=RateInfo(remaining_tokens=0, reset_tokens_s=30))
    with pytest.raises(RateLimited) as info:
        await bucket.acquire(1000, soon(0.1))
    assert 0.1 < info.value.retry_after <= 0.2


async def test_a_429_pauses_the_whole_bucket(settings, redis):
    lim = make(settings, redis, rpm=6000)
    bucket = lim.bucket("openai", "sk-p")
    g = await bucket.acquire(0, soon())
    await bucket.settle(g, used=0, pause_s=0.7)
    st = (await stats(redis, lim))[ratelimit.key_hash("sk-p")]
    assert st["rate_limited_429"] == 1 and st["paused_until"] > time.time() and st["last_pause_s"] == 0.7
    with pytest.raises(RateLimited):  # a wait past the bound is handed back to the engine
        await lim.bucket("openai", "sk-p").acquire(0, soon(0.2))
    start = time.monotonic()
    await lim.bucket("openai", "sk-p").acquire(0, soon(5))
    assert time.monotonic() - start >= 0.4


async def test_after_a_429_storm_the_next_second_stays_at_the_paced_rate(settings, redis):
    """40 calls wait out a 429 pause; the second after it grants the limit's rate, not a herd."""
    lim = make(settings, redis, burst=1.0, rpm=600)  # 10/s; a herd would add a full burst (10) more
    bucket = lim.bucket("openai", "sk-storm")
    for _ in range(3):  # a storm: three 429s in a row
        g = await bucket.acquire(0, soon(5))
        await bucket.settle(g, used=0, pause_s=0.5)
    granted: list[float] = []

    async def take() -> None:
        await bucket.acquire(0, soon(30))
        granted.append(time.monotonic())

    tasks = [asyncio.create_task(take()) for _ in range(40)]
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    first = min(granted)
    in_first_second = sum(1 for t in granted if t < first + 1.0)
    assert in_first_second <= 11, sorted(t - first for t in granted)
    assert max(granted) - first >= 3.0  # 40 calls at 10/s


async def test_the_line_is_token_fair_by_tenant(settings, redis):
    """Deficit round robin: a tenant with 4x larger calls gets a quarter of the calls and the same tokens.

    Tenant `big` queues all its calls first; first come, first served would grant all of them before
    any of `small`'s.
    """
    lim = make(settings, redis, tpm=600_000)  # 10,000 tokens/s
    bucket = lim.bucket("openai", "sk-fair")
    g = await bucket.acquire(100, soon())
    await bucket.settle(g, used=100, pause_s=2.0)  # hold everyone until the line has formed
    order: list[tuple[str, int]] = []

    async def take(tenant: str, tokens: int) -> None:
        await bucket.acquire(tokens, soon(30), tenant=tenant)
        order.append((tenant, tokens))

    tasks = [asyncio.create_task(take("big", 400)) for _ in range(12)]
    await wait_until(lambda: _waiting(redis, lim, "sk-fair", 12), what="big's calls to wait")
    tasks += [asyncio.create_task(take("small", 100)) for _ in range(48)]
    await wait_until(lambda: _waiting(redis, lim, "sk-fair", 60), what="small's calls to wait")
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    # While both were waiting, every prefix of the grants is fair within one quantum + one call.
    tokens = {"big": 0, "small": 0}
    for tenant, n in order[:40]:
        tokens[tenant] += n
        assert abs(tokens["big"] - tokens["small"]) <= 800, order
    calls = {t: sum(1 for x, _ in order[:40] if x == t) for t in tokens}
    assert 3 <= calls["small"] / calls["big"] <= 5, calls


async def test_a_killed_waiter_does_not_block_the_line(settings, redis):
    lim = make(settings, redis, rpm=600)
    bucket = lim.bucket("openai", "sk-killed")
    g = await bucket.acquire(0, soon())
    await bucket.settle(g, used=0, pause_s=0.3)
    # A waiter that polled once and died (its process was killed): it is the head of the line.
    limits = [600, 1, -1, 0, -1, 0, -1, 0]
    out = await lim.acquire_script(keys=bucket.keys, args=[
        ratelimit.WINDOW_S, "dead-waiter", "t-dead", 1, ratelimit.STALE_WAITER_S,
        600, settings.rate_limit_burst_seconds, bucket.base, *limits, ratelimit.ARRIVAL_MARGIN_S])
    assert int(out[0]) == 0
    start = time.monotonic()
    await bucket.acquire(0, soon(10), tenant="t-live")
    waited = time.monotonic() - start
    # The live waiter's polls grant the dead head its turn (that grant is never picked up) and go on:
    # the line moves at the paced rate, without waiting for the dead ticket to expire.
    assert waited < ratelimit.STALE_WAITER_S, waited
    st = (await stats(redis, lim))[ratelimit.key_hash("sk-killed")]
    assert st["waiting"] == 0 and st["granted"] == 3  # the first call, the dead head's turn, the live one


async def test_stop_cancels_a_wait_at_once_and_frees_its_place(settings, redis):
    lim = make(settings, redis, rpm=1)
    await lim.bucket("openai", "sk-c").acquire(0, soon())
    waiter = asyncio.create_task(lim.bucket("openai", "sk-c").acquire(0, soon(120)))
    await wait_until(lambda: _waiting(redis, lim, "sk-c", 1), what="the call to wait")
    start = time.monotonic()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert time.monotonic() - start < 0.5
    assert await _waiting(redis, lim, "sk-c", 0)


async def test_keys_live_under_the_queue_name_and_hold_no_secret(settings, redis):
    lim = make(settings, redis, rpm=10, tpm=1000)
    await lim.bucket("openai", "sk-very-secret-key-123").acquire(10, soon())
    mine = [k.decode() for k in await redis.keys(f"{settings.queue_name}:rl:*")]
    assert len(mine) >= 3
    for n in await redis.keys("*"):
        assert b"sk-very-secret" not in n
        assert b"sk-very-secret" not in (await redis.dump(n) or b"")


async def _waiting(redis, lim, key, n):
    return (await stats(redis, lim))[ratelimit.key_hash(key)]["waiting"] == n
