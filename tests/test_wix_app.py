"""Wix app mode with real worker processes against the fake Wix (blogqueue/testing/fake_wix.py).

Each tenant is linked to its app instance; workers create one access token per
instance through Wix's documented client-credentials flow, share it through
Redis, refresh it when it expires or is refused, and fail only the jobs of a
tenant whose installation was removed. No token and no app secret may reach a
log line or a job row.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from blogqueue import wixauth
from blogqueue.client import Client
from blogqueue.errors import FatalError
from blogqueue.settings import Settings
from blogqueue.testing.fake_wix import REMOVED_STATUSES, FakeWix

from .conftest import keyword_jobs, wait_until

APP_ID = "5f7c1e2a-0b1d-4e3f-9a8b-7c6d5e4f3a2b"
APP_SECRET = "wixsecret-" + secrets.token_hex(16)
PRODUCT = {"id": "prod-1", "name": "Linen Apron", "description": "A heavy linen apron.",
           "priceData": {"formatted": {"price": "$30.00"}}}


def instance(name: str) -> str:
    return f"{uuid.uuid4()}-{name}"


def app_fake(instances: dict[str, str], **kw: Any) -> FakeWix:
    return FakeWix(app_id=APP_ID, app_secret=APP_SECRET, instances=instances, **kw)


def app_settings(fake: FakeWix, **extra: Any) -> dict[str, Any]:
    return dict(publisher="wix", wix_base_url=fake.url, wix_app_id=APP_ID, wix_app_secret=APP_SECRET,
                log_level="DEBUG", **extra)


async def all_finished(client: Client, ids: list[str], timeout: float = 90) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        jobs = [await client.get_job(i) for i in ids]
        return jobs if all(j.status in ("done", "failed", "cancelled") for j in jobs) else None
    return await wait_until(check, timeout=timeout, interval=0.2, what=f"{len(ids)} jobs to finish")


async def enqueue(client: Client, tenant: str, n: int, **extra: Any) -> list[str]:
    out = await client.enqueue(tenant, keyword_jobs(n, image=False, **extra))
    return [j.id for j in out.jobs]


def read_logs(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))


async def assert_no_secret_anywhere(fake: FakeWix, tmp_path: Path, pool: asyncpg.Pool) -> None:
    """The app secret and every token the fake issued: in no worker log and no job, event or stage row."""
    logs = read_logs(tmp_path)
    assert "job" in logs  # the logs are there (DEBUG), so their silence means something
    rows = await pool.fetch("SELECT row_to_json(j)::text AS t FROM bq_jobs j UNION ALL "
                            "SELECT row_to_json(e)::text FROM bq_job_events e UNION ALL "
                            "SELECT row_to_json(s)::text FROM bq_job_stages s")
    stored = "\n".join(r["t"] for r in rows)
    with fake.lock:
        issued = list(fake.issued)
    assert issued, "the fake issued no token: nothing was checked"
    for secret in [APP_SECRET, *issued]:
        assert secret not in logs and secret not in stored
        assert secret[-12:] not in logs and secret[-12:] not in stored


async def test_three_tenants_publish_to_their_own_sites_with_their_own_tokens(
        client: Client, workers: Any, pool: asyncpg.Pool, tmp_path: Path) -> None:
    tenants = {"shop-a": (instance("a"), "site-a"), "shop-b": (instance("b"), "site-b"),
               "shop-c": (instance("c"), "site-c")}
    with app_fake({inst: site for inst, site in tenants.values()}) as wix:
        for tenant, (inst, _site) in tenants.items():
            await client.put_wix_installation(tenant, {"instance_id": inst})
        workers(2, **app_settings(wix))
        ids = {t: await enqueue(client, t, 4) for t in tenants}
        jobs = await all_finished(client, [i for v in ids.values() for i in v])
        assert all(j.status == "done" for j in jobs), [j.last_error for j in jobs]
        for tenant, (_inst, site) in tenants.items():
            own = wix.tokens_of(site)
            assert len(own) == 1  # one token for the site, shared by both workers and all its jobs
            for job_id in ids[tenant]:
                draft = wix.drafts[job_id]  # the Idempotency-Key is the job id
                assert draft["siteId"] == site and draft["token"] in own
        assert wix.token_requests == 3 and len(wix.drafts) == 12
        await assert_no_secret_anywhere(wix, tmp_path, pool)


async def test_a_token_reaches_only_its_own_site(client: Client, workers: Any, pool: asyncpg.Pool) -> None:
    """Site B's product is not found with site A's token; B's own job reads it and writes the rewrite back."""
    a, b = instance("a"), instance("b")
    with app_fake({a: "site-a", b: "site-b"}) as wix:
        wix.products = {"site-a": {}, "site-b": {"prod-1": dict(PRODUCT)}}
        await client.put_wix_installation("shop-a", {"instance_id": a})
        await client.put_wix_installation("shop-b", {"instance_id": b})
        workers(1, **app_settings(wix))
        source = {"type": "product", "product_id": "prod-1"}
        foreign = await client.enqueue("shop-a", {"source": {**source, "store": "site-b"}})
        own = await client.enqueue("shop-b", {"kind": "product_optimization", "source": source})
        foreign_job, own_job = await all_finished(client, [foreign.jobs[0].id, own.jobs[0].id])
        assert foreign_job.status == "failed" and foreign_job.error_code == "not_found"
        assert own_job.status == "done", own_job.last_error
        ((site, pid, patch),) = wix.updates
        assert (site, pid) == ("site-b", "prod-1") and patch["name"] == own_job.result["title"][:80]


async def test_token_expiry_mid_run_refreshes_without_failing_a_job(
        client: Client, workers: Any, pool: asyncpg.Pool, settings: Settings, tmp_path: Path) -> None:
    """Three ways a token ends: Wix expires it early (401: one refresh, one retry), and the cache entry
    runs out before Wix's expiry (a new token before any 401). No job fails or even retries."""
    inst = instance("a")
    # 12 s tokens: the cache keeps them 10.8 s (a tenth before Wix's expiry), long enough that the
    # first jobs finish inside one token's life even on a loaded machine.
    with app_fake({inst: "site-a"}, token_lifetime_s=12) as wix:
        await client.put_wix_installation("shop-a", {"instance_id": inst})
        workers(2, **app_settings(wix, offline_latency_ms=20.0))
        first = await enqueue(client, "shop-a", 6)
        await all_finished(client, first)
        assert wix.token_requests == 1
        wix.expire_tokens()  # Wix now refuses the token our cache still holds
        second = await enqueue(client, "shop-a", 8)

        async def refreshed() -> bool:
            return wix.token_requests >= 2
        await wait_until(refreshed, what="a refresh after the 401")
        mid = await enqueue(client, "shop-a", 6)  # jobs keep coming while tokens come and go
        await all_finished(client, second + mid)
        assert wix.token_requests == 2  # every 401'd caller shared ONE refresh
        refused = sum(1 for c in wix.calls if c["status"] == 401)
        assert refused >= 1
        # The cache entry runs out before Wix's expiry: the next jobs get a new token with no 401 at all.
        token_key = wixauth._keys(settings.replace(wix_app_id=APP_ID, wix_app_secret=APP_SECRET), inst)[0]
        redis = wixauth._proc(settings)

        async def cache_expired() -> bool:
            return not await redis.redis.exists(token_key)
        await wait_until(cache_expired, timeout=20, what="the cached token to run out")
        third = await enqueue(client, "shop-a", 6)
        jobs = await all_finished(client, first + second + mid + third)
        assert wix.token_requests == 3 and sum(1 for c in wix.calls if c["status"] == 401) == refused
        assert all(j.status == "done" and j.attempts == 1 for j in jobs), \
            [(j.status, j.attempts, j.last_error) for j in jobs]
        assert len(wix.drafts) == 26
        await assert_no_secret_anywhere(wix, tmp_path, pool)


async def test_two_hundred_jobs_of_one_site_make_one_token_request(
        client: Client, workers: Any, pool: asyncpg.Pool, tmp_path: Path) -> None:
    inst = instance("big")
    # 150 ms per Wix call: the token request is in flight while dozens of jobs reach their publish stage.
    with app_fake({inst: "site-big"}, latency_ms=150) as wix:
        await client.put_wix_installation("big-store", {"instance_id": inst})
        # 2 x 16 slots: 32 jobs wait for the first token together. (More slots would only cost PostgreSQL
        # connections, which the test machine's server shares with other runs.)
        workers(2, **app_settings(wix, worker_concurrency=16, max_inflight_per_tenant=40))
        ids = await enqueue(client, "big-store", 200)
        jobs = await all_finished(client, ids, timeout=240)
        assert all(j.status == "done" for j in jobs), {j.last_error for j in jobs}
        assert wix.token_requests == 1 and len(wix.issued) == 1
        (token,) = wix.issued
        assert len(wix.drafts) == 200 and {d["token"] for d in wix.drafts.values()} == {token}
        await assert_no_secret_anywhere(wix, tmp_path, pool)


async def test_a_removed_installation_fails_only_that_tenants_jobs(
        client: Client, workers: Any, pool: asyncpg.Pool, tmp_path: Path) -> None:
    gone, kept = instance("gone"), instance("kept")
    with app_fake({gone: "site-gone", kept: "site-kept"}, removed_status=403) as wix:
        await client.put_wix_installation("shop-gone", {"instance_id": gone})
        await client.put_wix_installation("shop-kept", {"instance_id": kept})
        workers(2, **app_settings(wix))
        before = await enqueue(client, "shop-gone", 2) + await enqueue(client, "shop-kept", 2)
        assert all(j.status == "done" for j in await all_finished(client, before))
        wix.remove(gone)  # the merchant removes the app: its token stops working, no new one is given
        requests_before = wix.token_requests
        lost = await enqueue(client, "shop-gone", 6)
        fine = await enqueue(client, "shop-kept", 6)
        lost_jobs = await all_finished(client, lost)
        fine_jobs = await all_finished(client, fine)
        for job in lost_jobs:
            assert job.status == "failed" and job.error_code == "wix_installation_revoked"
            assert job.attempts == 1  # fatal at once, no retry loop
            assert "removed from the site" in job.last_error and "HTTP 403" in job.last_error
        assert all(j.status == "done" and j.attempts == 1 for j in fine_jobs)
        # One refused token request; the site's other jobs learnt it from the shared cache.
        assert wix.token_requests - requests_before == 1
        assert all(wix.drafts[i]["siteId"] == "site-kept" for i in fine)
        assert not any(i in wix.drafts for i in lost)
        await assert_no_secret_anywhere(wix, tmp_path, pool)


async def test_an_unlinked_tenant_fails_clearly(client: Client, workers: Any) -> None:
    with app_fake({}) as wix:
        workers(1, **app_settings(wix))
        (job_id,) = await enqueue(client, "shop-new", 1)
        (job,) = await all_finished(client, [job_id])
    assert job.status == "failed" and job.error_code == "wix_not_linked" and job.attempts == 1
    assert "PUT /v1/wix-installation" in job.last_error and wix.token_requests == 0


# -- the token cache in one process (no workers): the documented refusals, the stampede ------------

@pytest.mark.parametrize("removed_status", REMOVED_STATUSES)
async def test_every_refusal_status_is_a_revoked_installation(settings: Settings, removed_status: int) -> None:
    inst = instance("x")
    with app_fake({inst: "site-x"}, removed_status=removed_status) as wix:
        conf = settings.replace(wix_base_url=wix.url, wix_app_id=APP_ID, wix_app_secret=APP_SECRET)
        await wixauth.token(conf, inst)
        wix.remove(inst)
        with pytest.raises(FatalError) as err:
            await wixauth.token(conf, inst, stale=next(iter(wix.issued)))
        assert err.value.code == "wix_installation_revoked" and f"HTTP {removed_status}" in err.value.message
        with pytest.raises(FatalError):  # remembered: no second request
            await wixauth.token(conf, inst, stale="x")
        assert wix.token_requests == 2
        assert APP_SECRET not in err.value.message


async def test_wrong_app_secret_is_refused_and_never_shown(settings: Settings) -> None:
    inst = instance("x")
    with app_fake({inst: "site-x"}) as wix:
        conf = settings.replace(wix_base_url=wix.url, wix_app_id=APP_ID, wix_app_secret="not-the-secret")
        with pytest.raises(FatalError) as err:
            await wixauth.token(conf, inst)
    assert err.value.code == "wix_installation_revoked" and "HTTP 401" in err.value.message
    assert "not-the-secret" not in err.value.message and not wix.issued


async def test_a_hundred_concurrent_callers_share_one_token_request(settings: Settings) -> None:
    inst = instance("x")
    with app_fake({inst: "site-x"}, latency_ms=200) as wix:
        conf = settings.replace(wix_base_url=wix.url, wix_app_id=APP_ID, wix_app_secret=APP_SECRET)
        tokens = await asyncio.gather(*(wixauth.token(conf, inst) for _ in range(100)))
        assert len(set(tokens)) == 1 and wix.token_requests == 1
        # Cached encrypted: the Redis value is not the token.
        raw = await wixauth._proc(conf).redis.get(wixauth._keys(conf, inst)[0])
        assert raw and tokens[0].encode() not in raw and tokens[0][-12:].encode() not in raw
        # 50 callers that all saw the same token refused share one refresh.
        fresh = await asyncio.gather(*(wixauth.token(conf, inst, stale=tokens[0]) for _ in range(50)))
        assert len(set(fresh)) == 1 and fresh[0] != tokens[0] and wix.token_requests == 2


def test_half_configured_app_mode_fails_at_start_naming_the_variable() -> None:
    from blogqueue.settings import SettingsError

    with pytest.raises(SettingsError, match="BLOGQUEUE_WIX_APP_SECRET"):
        Settings.from_env({"BLOGQUEUE_WIX_APP_ID": APP_ID})
    with pytest.raises(SettingsError, match="BLOGQUEUE_WIX_APP_ID"):
        Settings.from_env({"BLOGQUEUE_WIX_APP_SECRET": APP_SECRET})
    s = Settings.from_env({"BLOGQUEUE_WIX_APP_ID": APP_ID, "BLOGQUEUE_WIX_APP_SECRET": APP_SECRET})
    assert APP_SECRET not in repr(s) and APP_ID in repr(s)
    assert Settings.from_env(s.to_env()) == s
    assert wixauth.app_mode(s) and not wixauth.app_mode(Settings())


async def test_wix_calls_pass_a_limiter_bucket_per_site(client: Client, workers: Any, settings: Settings) -> None:
    """RATE_LIMITS `wix:rpm=...` applies to each site's own bucket; a 429 pauses only that site's bucket and
    costs no attempt."""
    from blogqueue import ratelimit
    from blogqueue.settings import parse_rate_limits

    a, b = instance("a"), instance("b")
    limits = parse_rate_limits("wix:rpm=1000")
    with app_fake({a: "site-a", b: "site-b"}, retry_after_s=0.5) as wix:
        await client.put_wix_installation("shop-a", {"instance_id": a})
        await client.put_wix_installation("shop-b", {"instance_id": b})
        workers(1, **app_settings(wix, rate_limits=limits))
        warm = await enqueue(client, "shop-a", 3) + await enqueue(client, "shop-b", 2)
        assert all(j.status == "done" for j in await all_finished(client, warm))
        wix.script("429")  # the next Wix call (a draft of site A: both tokens are cached) is refused once
        (late,) = await enqueue(client, "shop-a", 1)
        (job,) = await all_finished(client, [late])
        assert job.status == "done" and job.attempts == 1
        redis = wixauth._proc(settings).redis
        stats = {s["key_hash"]: s for s in await ratelimit.bucket_stats(redis, settings.replace(rate_limits=limits))
                 if s["provider"] == "wix"}
        site_a, site_b = stats[ratelimit.key_hash(f"instance:{a}")], stats[ratelimit.key_hash(f"instance:{b}")]
        assert len(stats) == 2 and site_a["limit"]["rpm"] == site_b["limit"]["rpm"] == 1000
        assert site_a["used"]["requests"] == 5 and site_b["used"]["requests"] == 2  # 4 drafts + the 429'd try
        assert site_a["rate_limited_429"] == 1 and site_b["rate_limited_429"] == 0
        assert sum(1 for c in wix.calls if c["status"] == 429) == 1


async def test_a_lock_left_by_a_killed_worker_lapses(settings: Settings) -> None:
    """A worker killed while creating a token leaves its lock; the next caller takes over when it lapses."""
    inst = instance("x")
    with app_fake({inst: "site-x"}) as wix:
        conf = settings.replace(wix_base_url=wix.url, wix_app_id=APP_ID, wix_app_secret=APP_SECRET)
        redis = wixauth._proc(conf).redis
        _token_key, lock_key, _refused, _ad = wixauth._keys(conf, inst)
        await redis.set(lock_key, "a-dead-worker", px=700)
        token = await wixauth.token(conf, inst)
        assert token in wix.issued and wix.token_requests == 1
        assert await redis.get(lock_key) is None  # released by its new holder
