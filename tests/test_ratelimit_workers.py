"""The limiter against the provider fakes: real worker processes against both of OpenAI's documented
enforcement styles (a rolling minute, and limits quantized per second), 200 waiting calls, 429 storms,
shared buckets, Anthropic's cache-aware ITPM, and a stored key that never leaks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import anthropic as anthropic_sdk
import pytest
import redis.asyncio as aioredis

from blogqueue import ratelimit
from blogqueue.providers import anthropic as anthropic_adapter
from blogqueue.providers.anthropic import AnthropicProvider
from blogqueue.providers.base import CallContext, ProviderConfig, TextRequest, TextResult
from blogqueue.providers.openai import OpenAIProvider
from blogqueue.settings import RateLimit
from blogqueue.testing.fake_anthropic import FakeAnthropic
from blogqueue.testing.fake_openai import FakeOpenAI

from .conftest import keyword_jobs, wait_until

PLATFORM_KEY = "sk-platform-PLATFORMKEY-000000000001"
OWN_KEY = "sk-proj-TENANTOWNKEY-9999999999zz"


MODES = ["window", "quantized"]


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def fake(mode):
    # 96,000 TPM: a blog post's text call reserves ~1,530 tokens (prompt + max_tokens 1,500), which must fit
    # in one second of a quantized limit (1,600) or the provider refuses it whatever the pacing.
    server = FakeOpenAI(rpm=600, tpm=96_000, completion_tokens=450, mode=mode).start()
    yield server
    server.stop()


@pytest.fixture
async def redis(settings):
    r = aioredis.Redis.from_url(settings.redis_url)
    yield r
    await r.aclose()


def openai_settings(settings, fake, **limits):
    return settings.replace(default_model="openai:gpt-4o-mini", openai_api_key=PLATFORM_KEY,
                            openai_base_url=fake.base_url, provider_timeout_seconds=10,
                            rate_limits={"openai": RateLimit(**(limits or {"rpm": 600, "tpm": 96_000}))},
                            max_inflight_per_tenant=100, secret_key="test-secret")


async def finished(client, out, timeout):
    async def check():
        b = await client.get_batch(out.batch_id)
        return b if b.finished else None
    return await wait_until(check, timeout=timeout, interval=0.25, what="batch to finish")


def max_in_any_minute(calls, field):
    """The most any rolling minute of admitted calls held, as the fake counted them."""
    ok = sorted((c["at"], c["tokens"]) for c in calls if c["status"] == 200)
    best, j, total = 0, 0, 0
    for i, (at, tok) in enumerate(ok):
        total += tok if field == "tokens" else 1
        while ok[j][0] <= at - 60:
            total -= ok[j][1] if field == "tokens" else 1
            j += 1
        best = max(best, total)
        del i
    return best


async def test_four_workers_make_zero_429s_at_the_tpm_limit(client, workers, settings, fake, pool, redis):
    """80 job slots against 1,600 tokens/s: a text call reserves almost a second of it, so the limiter must
    pace the reservations, and the fake sees no 429 in either enforcement style."""
    s = openai_settings(settings, fake)
    client.settings = s
    workers(4, **{k: getattr(s, k) for k in ("default_model", "openai_api_key", "openai_base_url",
                                            "provider_timeout_seconds", "rate_limits", "max_inflight_per_tenant")})
    out = await client.enqueue("shop-load", keyword_jobs(40))
    await finished(client, out, timeout=150)
    counts = (await client.get_batch(out.batch_id)).counts
    assert counts["done"] == 40
    st = fake.stats()
    assert st["rate_limited"] == 0, st
    assert st["by_status"]["200"] == 80  # one text and one image call per job, none repeated
    assert max_in_any_minute(fake.calls, "tokens") <= 96_000
    assert max_in_any_minute(fake.calls, "requests") <= 600
    assert await pool.fetchval("SELECT sum(failures) FROM bq_jobs WHERE batch_id = $1", out.batch_id) == 0
    [bucket] = await ratelimit.bucket_stats(redis, s)
    assert bucket["key_hash"] == ratelimit.key_hash(PLATFORM_KEY) and bucket["rate_limited_429"] == 0
    assert bucket["waits"] > 0  # it really was the limiter that held calls back


async def test_a_429_storm_uses_no_attempt(client, workers, settings, pool, redis, mode):
    with FakeOpenAI(error_429_rate=0.3, retry_after_s=0.3, seed=7, mode=mode) as fake:
        s = openai_settings(settings, fake, rpm=6000, tpm=960_000)
        client.settings = s
        workers(2, **{k: getattr(s, k) for k in ("default_model", "openai_api_key", "openai_base_url",
                                                "rate_limits", "max_inflight_per_tenant")})
        out = await client.enqueue("shop-storm", keyword_jobs(30))
        paused_seen = []

        async def done_and_watch():
            stats = await ratelimit.bucket_stats(redis, s)
            if stats and stats[0]["paused_until"] is not None:
                paused_seen.append(stats[0])
            b = await client.get_batch(out.batch_id)
            return b if b.finished else None
        batch = await wait_until(done_and_watch, timeout=120, interval=0.05, what="storm batch to finish")
        assert batch.counts["done"] == 30
        assert await pool.fetchval("SELECT sum(failures) FROM bq_jobs WHERE batch_id = $1", out.batch_id) == 0
        n429 = fake.stats()["rate_limited"]
        assert n429 >= 5
        [bucket] = await ratelimit.bucket_stats(redis, s)
        assert bucket["rate_limited_429"] == n429 and bucket["last_pause_s"] == pytest.approx(0.3)
        assert paused_seen, "the bucket's pause never showed in bucket_stats"


async def test_tenants_share_the_platform_bucket_but_an_own_key_is_not_slowed(client, workers, settings, redis,
                                                                             tmp_path: Path):
    """Two tenants on the platform key share one paced bucket (60 RPM: a call a second), in turns;
    a tenant's own key has a bucket of its own (here with its own, larger limit) and does not wait."""
    with FakeOpenAI(rpm=60, mode="window") as fake:  # per key: the own key's 10 calls fit its minute
        own = f"openai#{ratelimit.key_hash(OWN_KEY)[:8]}"
        s = openai_settings(settings, fake, rpm=60, tpm=None).replace(
            rate_limits={"openai": RateLimit(rpm=60), own: RateLimit(rpm=6000)})
        client.settings = s
        await client.pool.execute("TRUNCATE bq_ai_settings, bq_provider_keys")
        await client.put_ai_settings("shop-own", None, {"keys": {"openai": OWN_KEY}})
        workers(2, **{k: getattr(s, k) for k in ("default_model", "openai_api_key", "openai_base_url",
                                                "rate_limits", "max_inflight_per_tenant", "secret_key")})
        a = await client.enqueue("shop-a", keyword_jobs(15, image=False))
        b = await client.enqueue("shop-b", keyword_jobs(15, image=False))
        await wait_until(lambda: _platform_waiting(redis, s), timeout=30, what="a line at the platform bucket")
        start = time.monotonic()
        mine = await client.enqueue("shop-own", keyword_jobs(5))
        await finished(client, mine, timeout=30)
        # Not behind the 30 s the platform line needs (its jobs hold the 8 worker slots while they wait in
        # it, so the own-key jobs still queue for slots, freed about one a second).
        assert time.monotonic() - start < 20
        by_key = fake.calls_by_key()
        assert by_key[_h(OWN_KEY)] == 10 and by_key[_h(PLATFORM_KEY)] < 30
        assert fake.stats()["rate_limited"] == 0
        done = {t: (await client.get_batch(x.batch_id)).counts["done"] for t, x in (("a", a), ("b", b))}
        assert abs(done["a"] - done["b"]) <= 2, done  # one bucket, served in turns
        stats = {x["key_hash"]: x for x in await ratelimit.bucket_stats(redis, s)}
        assert stats[ratelimit.key_hash(OWN_KEY)]["used"]["requests"] == 10
        assert stats[ratelimit.key_hash(PLATFORM_KEY)]["limit"]["rpm"] == 60
        assert stats[ratelimit.key_hash(OWN_KEY)]["limit"]["rpm"] == 6000
        await client.stop_tenant("shop-a")
        await client.stop_tenant("shop-b")


async def test_200_waiting_calls_get_no_429_from_a_quantized_limit(settings, redis):
    """200 calls at once, from two limiter instances (two processes' worth), against 1,200 RPM enforced as
    20 requests a second with one second of burst: paced, the fake answers every one of them."""
    with FakeOpenAI(rpm=1200, tpm=10_000_000, completion_tokens=50, mode="quantized",
                    latency_ms=5, latency_spread_ms=45, seed=3) as fake:
        s = openai_settings(settings, fake, rpm=1200, tpm=10_000_000).replace(rate_limit_max_wait_seconds=60)
        provider = OpenAIProvider(ProviderConfig(s.openai_base_url, s.provider_timeout_seconds))
        limiters = [ratelimit.Limiter(s, aioredis.Redis.from_url(s.redis_url)) for _ in range(2)]

        async def one(i: int) -> None:
            req = TextRequest(model="gpt-4o-mini", prompt=f"Write a post.\nTopic: call {i}", max_tokens=100)
            cost = ratelimit.text_cost(provider.limit_dimensions, req.prompt, max_tokens=req.max_tokens)
            await limiters[i % 2].call("openai", PLATFORM_KEY, cost,
                                       lambda: provider.generate_text(req, PLATFORM_KEY, CallContext("j", 1, "c", "t")),
                                       used=ratelimit.text_usage, info=lambda r: r.limits, tenant=f"t{i % 3}")

        start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(200)))
        elapsed = time.monotonic() - start
        for lim in limiters:
            await lim.redis.aclose()
        st = fake.stats()
        assert st["rate_limited"] == 0, st
        assert st["by_status"]["200"] == 200
        assert elapsed >= (200 - 20) / 20 - 1  # it was the pacing that kept them apart


async def test_anthropic_cached_input_tokens_are_not_charged_to_itpm(settings, redis):
    """A 2,000-token system prompt cached after the first call: ITPM is charged input + cache writes only."""
    with FakeAnthropic(itpm=60_000, completion_tokens=20) as fake:
        s = settings.replace(anthropic_api_key="sk-ant-test", anthropic_base_url=fake.base_url,
                             rate_limits={"anthropic": RateLimit(itpm=60_000)}, rate_limit_max_wait_seconds=30)
        lim = ratelimit.Limiter(s, redis)
        sdk = anthropic_sdk.AsyncAnthropic(api_key="sk-ant-test", base_url=fake.base_url, max_retries=0)
        system = "You write blog posts for shops. " * 250  # ~8,000 characters: ~2,000 tokens
        for i in range(10):
            prompt = f"Topic: cached call {i}"
            cost = ratelimit.text_cost(AnthropicProvider.limit_dimensions, system, prompt, max_tokens=100)

            async def call(prompt: str = prompt) -> TextResult:
                msg = await sdk.messages.create(
                    model="claude-3-5-haiku-latest", max_tokens=100,
                    system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
                    messages=[{"role": "user", "content": prompt}])
                return TextResult(text="", model="x", **anthropic_adapter.usage_fields(msg.usage))

            await lim.call("anthropic", "sk-ant-test", cost, call, used=ratelimit.text_usage, info=lambda r: None)
        await sdk.close()
        ok = [c for c in fake.calls if c["status"] == 200]
        assert len(ok) == 10 and sum(1 for c in ok if c["cache_read_input_tokens"] > 1900) == 9
        [bucket] = await ratelimit.bucket_stats(redis, s)
        # One cache write (~2,000) and ten small inputs; charging the nine reads would make it ~20,000.
        assert bucket["used"]["input_tokens"] < 2_200, bucket
        assert bucket["used"]["input_tokens"] == sum(c["input_tokens"] + c["cache_creation_input_tokens"] for c in ok)


async def test_a_stored_key_never_appears_anywhere(client, workers, settings, pool, redis, tmp_path: Path):
    with FakeOpenAI(api_keys={PLATFORM_KEY}) as fake:  # the stored key is "wrong": 401 at the provider
        s = openai_settings(settings, fake)
        client.settings = s
        await pool.execute("TRUNCATE bq_ai_settings, bq_provider_keys")
        shown = await client.put_ai_settings("shop-leak", "u1", {"keys": {"openai": OWN_KEY}})
        workers(1, **{k: getattr(s, k) for k in ("default_model", "openai_api_key", "openai_base_url",
                                                "rate_limits", "secret_key")}, log_level="DEBUG")
        out = await client.enqueue("shop-leak", keyword_jobs(2), user_id="u1")
        fake.script("500")  # one retryable failure on the way too
        await finished(client, out, timeout=60)
        jobs = [await client.get_job(j.id, "shop-leak") for j in out.jobs]
        assert all(j.status == "failed" and j.error_code == "bad_api_key" for j in jobs)
        assert fake.stats()["by_status"]["401"] >= 2  # the key really was sent to the provider
        texts = [json.dumps(shown), json.dumps([j.model_dump(mode="json") for j in jobs]),
                 json.dumps(await client.get_ai_settings("shop-leak", "u1")),
                 json.dumps(await ratelimit.bucket_stats(redis, s)),
                 json.dumps([dict(r) for r in await pool.fetch("SELECT * FROM bq_job_events")], default=str),
                 json.dumps([dict(r) for r in await pool.fetch("SELECT * FROM bq_jobs")], default=str),
                 json.dumps([dict(r) for r in await pool.fetch("SELECT * FROM bq_provider_keys")], default=str)]
        logs = [p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker-*.log"))]  # noqa: ASYNC240
        assert logs and all("started" in log for log in logs)  # the logs exist and were read
        texts += logs
        for k in await redis.keys("*"):
            texts.append(repr(k) + repr(await redis.dump(k)))
        for t in texts:
            assert OWN_KEY not in t and OWN_KEY[8:24] not in t and OWN_KEY[-10:] not in t


def _h(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


async def _platform_waiting(redis, s):
    for b in await ratelimit.bucket_stats(redis, s):
        if b["key_hash"] == ratelimit.key_hash(PLATFORM_KEY) and b["waiting"] >= 2:
            return True
    return False
