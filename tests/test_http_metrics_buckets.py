"""Rate-limit buckets in both metrics endpoints, from the real limiter on the test Redis; and without Redis."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from blogqueue import ratelimit
from blogqueue.settings import RateLimit, Settings
from tests.http_fixtures import Api, TokenFactory
from tests.openapi_contract import check

KEY = "sk-proj-metrics-Zq8wLk2mNv7Tx4Rp9876"


@pytest_asyncio.fixture(loop_scope="session")
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(settings.redis_url)
    yield r
    await r.aclose()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


async def test_buckets_in_json_and_prometheus(api: Api, make_token: TokenFactory, settings: Settings,
                                              redis: aioredis.Redis) -> None:
    s = settings.replace(rate_limits={"openai": RateLimit(rpm=60, tpm=10_000)})
    limiter = ratelimit.Limiter(s, redis)
    bucket = limiter.bucket("openai", KEY)
    for _ in range(3):
        await bucket.settle(await bucket.acquire(100, time.monotonic() + 5), used=50)
    await bucket.settle(await bucket.acquire(100, time.monotonic() + 5), used=0, pause_s=30)  # a 429
    other = limiter.bucket("anthropic", "sk-ant-other-key-1234")  # no limits configured for anthropic
    await other.settle(await other.acquire(10, time.monotonic() + 5), used=10)

    admin = await api.client(await make_token("ops", admin=True), settings=s)
    resp = await admin.get("/v1/metrics")
    check(resp)
    m = resp.json()
    assert m["redis_reachable"] is True
    by = {(b["provider"], b["key_hash"]): b for b in m["buckets"]}
    khash = ratelimit.key_hash(KEY)
    b = by[("openai", khash)]
    assert b["limit"] == {"rpm": 60, "tpm": 10_000}
    assert b["used"]["requests"] == 4 and b["granted"] == 4 and b["tokens_used_total"] == 150
    assert b["utilisation"] == round(max(4 / 60, b["used"]["tokens"] / 10_000), 4)
    assert b["rate_limited_429"] == 1 and b["paused_until"] > time.time() and b["last_pause_s"] == 30
    a = by[("anthropic", ratelimit.key_hash("sk-ant-other-key-1234"))]
    assert a["limit"] == {"rpm": None, "tpm": None} and a["utilisation"] is None and a["granted"] == 1

    prom = await admin.get("/metrics")
    check(prom)
    got = samples(prom.text)
    lab = (("key_hash", khash), ("provider", "openai"))
    assert got[("blogqueue_redis_up", ())] == 1
    assert got[("blogqueue_ratelimit_limit_requests_per_minute", lab)] == 60
    assert got[("blogqueue_ratelimit_limit_tokens_per_minute", lab)] == 10_000
    assert got[("blogqueue_ratelimit_used_requests", lab)] == 4
    assert got[("blogqueue_ratelimit_utilisation", lab)] == b["utilisation"]
    assert got[("blogqueue_ratelimit_granted_total", lab)] == 4
    assert got[("blogqueue_ratelimit_waits_total", lab)] == b["waits"]
    assert got[("blogqueue_ratelimit_rate_limited_total", lab)] == 1
    assert got[("blogqueue_ratelimit_tokens_used_total", lab)] == 150
    assert got[("blogqueue_ratelimit_paused", lab)] == 1
    alab = (("key_hash", a["key_hash"]), ("provider", "anthropic"))
    assert got[("blogqueue_ratelimit_used_requests", alab)] == 1
    assert ("blogqueue_ratelimit_limit_requests_per_minute", alab) not in got  # no limit, no sample
    for text in (resp.text, prom.text):
        assert KEY not in text and KEY[-12:] not in text and "sk-ant" not in text


async def test_metrics_answer_without_redis(api: Api, make_token: TokenFactory, settings: Settings) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    admin = await api.client(await make_token("ops", admin=True), settings=settings.replace(redis_url=dead))
    started = time.monotonic()
    resp = await admin.get("/v1/metrics")
    check(resp)
    assert resp.json()["redis_reachable"] is False and resp.json()["buckets"] == []
    assert "counts" in resp.json()  # PostgreSQL's figures are still there
    prom = await admin.get("/metrics")
    assert prom.status_code == 200
    got = samples(prom.text)
    assert got[("blogqueue_redis_up", ())] == 0 and ("blogqueue_workers", ()) in got
    assert time.monotonic() - started < 10
