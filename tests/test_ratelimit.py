"""The shared limiter against the real Redis: windows, reservations, headers, 429 pauses, FIFO, stop."""

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


def make(settings, redis, **limits):
    s = settings.replace(rate_limits={"openai": RateLimit(**limits)})
    return ratelimit.Limiter(s, redis)


def soon(seconds: float = 0.0) -> float:
    return time.monotonic() + seconds


async def stats(redis, limiter):
    return {b["key_hash"]: b for b in await ratelimit.bucket_stats(redis, limiter.settings)}


async def test_requests_per_minute_are_shared_and_bounded(settings, redis):
    a, b = make(settings, redis, rpm=5), make(settings, redis, rpm=5)  # two "processes"
    for lim in (a, b, a, b, a):
        await lim.bucket("openai", "sk-shared").acquire(0, soon())
    with pytest.raises(RateLimited) as info:
        await b.bucket("openai", "sk-shared").acquire(0, soon(5))
    assert 55 < info.value.retry_after <= 60  # until the oldest call leaves the minute
    # another key is another bucket, untouched
    await a.bucket("openai", "sk-own-key").acquire(0, soon())
    st = await stats(redis, a)
    shared = st[ratelimit.key_hash("sk-shared")]
    assert shared["used"]["requests"] == 5 and shared["utilisation"] == 1.0 and shared["waits"] == 1
    assert st[ratelimit.key_hash("sk-own-key")]["used"]["requests"] == 1


async def test_tokens_are_reserved_then_reconciled(settings, redis):
    lim = make(settings, redis, tpm=1000)
    bucket = lim.bucket("openai", "sk-t")
    first = await bucket.acquire(600, soon())
    with pytest.raises(RateLimited):
        await bucket.acquire(600, soon(1))
    await bucket.settle(first, used=100)  # the call used far less than it reserved
    await bucket.acquire(600, soon())
    st = (await stats(redis, lim))[ratelimit.key_hash("sk-t")]
    assert st["used"]["tokens"] == 700 and st["tokens_used_total"] == 100


async def test_provider_headers_saying_less_is_left_are_followed(settings, redis):
    lim = make(settings, redis, rpm=100)
    bucket = lim.bucket("openai", "sk-h")
    g = await bucket.acquire(0, soon())
    # the bucket believes 99 are left; the provider says none are, for 0.6 s
    await bucket.settle(g, used=0, info=RateInfo(remaining_requests=0, reset_requests_s=0.6))
    start = time.monotonic()
    await bucket.acquire(0, soon(5))
    assert time.monotonic() - start >= 0.5
    # the provider agreeing with the bucket lifts the constraint at once
    g = await bucket.acquire(0, soon(0.2))
    await bucket.settle(g, used=0, info=RateInfo(remaining_requests=97, reset_requests_s=30))
    await bucket.acquire(0, soon(0.2))


async def test_headers_counting_our_own_later_calls_do_not_cap_the_bucket(settings, redis):
    lim = make(settings, redis, rpm=100, tpm=3000)
    bucket = lim.bucket("openai", "sk-race")
    first = await bucket.acquire(1000, soon())
    second = await bucket.acquire(1000, soon())  # granted later, reached the provider first
    # The provider's figures for the first call already hold the second: that is no unknown usage.
    await bucket.settle(first, used=200, info=RateInfo(
        remaining_requests=first.belief_r - 1, reset_requests_s=60,
        remaining_tokens=first.belief_t - 1000, reset_tokens_s=60))
    await bucket.settle(second, used=200)
    for _ in range(5):  # a cap would hold these back for the header's whole minute
        await bucket.settle(await bucket.acquire(1000, soon(0.5)), used=200)
    # Usage the bucket cannot explain still caps it until the provider's reset.
    g = await bucket.acquire(1000, soon())
    await bucket.settle(g, used=200, info=RateInfo(remaining_tokens=500, reset_tokens_s=30))
    with pytest.raises(RateLimited):
        await bucket.acquire(1000, soon(1))


async def test_a_429_pauses_the_whole_bucket(settings, redis):
    lim = make(settings, redis, rpm=100)
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


async def test_waiters_are_served_first_come_first_served(settings, redis):
    lim = make(settings, redis, tpm=1000)
    bucket = lim.bucket("openai", "sk-f")
    held = await bucket.acquire(900, soon())
    order: list[str] = []

    async def take(name: str, est: int) -> None:
        await bucket.acquire(est, soon(120))
        order.append(name)

    big = asyncio.create_task(take("big", 500))
    await wait_until(lambda: _waiting(redis, lim, "sk-f", 1), what="the big call to wait")
    small = asyncio.create_task(take("small", 50))  # would fit now, but must not overtake
    await wait_until(lambda: _waiting(redis, lim, "sk-f", 2), what="the small call to wait")
    await asyncio.sleep(0.3)
    assert order == []
    await bucket.settle(held, used=10)
    await asyncio.wait_for(asyncio.gather(big, small), 5)
    # Once there is room for both, the order of their grants no longer takes anything from the big one.
    assert sorted(order) == ["big", "small"]


async def test_stop_cancels_a_wait_and_frees_its_place(settings, redis):
    lim = make(settings, redis, rpm=1)
    await lim.bucket("openai", "sk-c").acquire(0, soon())
    waiter = asyncio.create_task(lim.bucket("openai", "sk-c").acquire(0, soon(120)))
    await wait_until(lambda: _waiting(redis, lim, "sk-c", 1), what="the call to wait")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await _waiting(redis, lim, "sk-c", 0)


async def test_keys_live_under_the_queue_name_and_hold_no_secret(settings, redis):
    lim = make(settings, redis, rpm=10, tpm=1000)
    await lim.bucket("openai", "sk-very-secret-key-123").acquire(10, soon())
    mine = [k.decode() for k in await redis.keys(f"{settings.queue_name}:rl:*")]
    assert len(mine) >= 4
    for n in await redis.keys("*"):
        assert b"sk-very-secret" not in n
        assert b"sk-very-secret" not in (await redis.dump(n) or b"")


async def _waiting(redis, lim, key, n):
    return (await stats(redis, lim))[ratelimit.key_hash(key)]["waiting"] == n
