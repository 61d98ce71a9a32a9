"""Fairness between tenants (invariant 6), with real worker processes and in SQL."""

import asyncio
import uuid

from blogqueue.db import Q

from .conftest import keyword_jobs, wait_until

CAP = 4


async def test_small_tenants_are_not_starved_by_a_big_one(client, workers, pool, settings):
    workers(2, max_inflight_per_tenant=CAP, dispatch_prefetch=1, offline_latency_ms=30.0)
    await client.enqueue("big", keyword_jobs(2000, image=False))

    async def big_saturates():
        # In flight, not running: with 30 ms jobs a slot is often between two jobs at any instant.
        return await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status IN ('dispatched', 'running')") >= 8
    await wait_until(big_saturates, what="big tenant to fill every slot")

    small = [f"small-{i}" for i in range(10)]
    visible = {}
    for t in small:
        await client.enqueue(t, keyword_jobs(10, image=False))
        visible[t] = await pool.fetchval("SELECT clock_timestamp()")  # committed: the dispatcher can see it

    async def small_done():
        n = await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE tenant_id LIKE 'small-%' AND status = 'done'")
        return n == 100
    await wait_until(small_done, timeout=60, what="small tenants to finish")
    big_done = await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE tenant_id = 'big' AND status = 'done'")
    await client.stop_tenant("big")

    for t in small:
        first = await pool.fetchval("SELECT min(started_at) FROM bq_jobs WHERE tenant_id = $1", t)
        # The big tenant's jobs the dispatcher chose after this tenant's work was visible:
        # this tenant's first job must start before the CAP-th of them.
        big_starts = await pool.fetch(
            "SELECT started_at FROM bq_jobs WHERE tenant_id = 'big' AND dispatched_at > $1 "
            "AND started_at IS NOT NULL ORDER BY started_at LIMIT $2", visible[t], CAP)
        if len(big_starts) == CAP:
            assert first < big_starts[-1]["started_at"], t
    # "Long before": when the last small job finished, most of the big backlog was still waiting.
    assert big_done < 1000, big_done


async def test_a_tenant_alone_uses_the_whole_capacity(client, workers, pool):
    workers(2, max_inflight_per_tenant=CAP, offline_latency_ms=400.0)
    await client.enqueue("alone", keyword_jobs(60, image=False))

    async def running_count():
        n = await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'running'")
        return n if n == 8 else None
    assert await wait_until(running_count, timeout=20, what="8 running jobs (2 workers x 4)") == 8
    await client.stop_tenant("alone")


async def _pick(pool, settings, capacity, cap=CAP, epoch=7):
    """What the dispatcher's one statement (`dispatch_cycle`) hands out with `capacity` free
    slots, per tenant; rolled back, so the state stays as it was."""
    inflight = await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status IN ('dispatched', 'running')")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("UPDATE bq_workers SET stopped_at = now() WHERE queue_name = $1", settings.queue_name)
            await conn.execute(
                "INSERT INTO bq_workers (id, queue_name, hostname, pid, concurrency, prefetch, kinds) "
                "VALUES ('cycle', $1, 'h', 1, $2, 0, $3)", settings.queue_name, capacity + inflight,
                ["blog_post", "product_optimization"])
            await conn.execute(
                "INSERT INTO bq_leader (queue_name, epoch, holder, backend_pid, lease_until) "
                "VALUES ($1, 7, 'cycle', pg_backend_pid(), now() + interval '1 minute') ON CONFLICT (queue_name) "
                "DO UPDATE SET epoch = 7, lease_until = excluded.lease_until", settings.queue_name)
            row = await conn.fetchrow(Q["dispatch_cycle"], cap, "salt", settings.queue_name, 30.0, 30.0, epoch)
            tenants = await conn.fetch("SELECT tenant_id, status, attempt FROM bq_jobs WHERE id = ANY($1::uuid[])",
                                       row["ids"])
        finally:
            await tx.rollback()
    assert row["free"] == capacity
    assert all(t["status"] == "dispatched" for t in tenants) and len(tenants) == len(row["ids"])
    counts: dict[str, int] = {}
    for t in tenants:
        counts[t["tenant_id"]] = counts.get(t["tenant_id"], 0) + 1
    return row["ids"], counts


async def test_the_dispatch_cycle_hands_out_only_under_its_epoch(client, pool, settings):
    await client.enqueue("a", keyword_jobs(30))
    _, counts = await _pick(pool, settings, 10)
    assert counts == {"a": 10}
    # A stale epoch hands out nothing and changes nothing.
    ids, counts = await _pick(pool, settings, 10, epoch=6)
    assert counts == {} and list(ids) == []
    assert await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'dispatched'") == 0


async def test_candidates_water_fill_below_the_cap_first(client, pool, settings):
    await client.enqueue("a", keyword_jobs(30))
    await client.enqueue("b", keyword_jobs(30))
    await client.enqueue("c", keyword_jobs(3))
    # Tenant a already has 6 in flight.
    await pool.execute("UPDATE bq_jobs SET status = 'running' WHERE id IN "
                       "(SELECT id FROM bq_jobs WHERE tenant_id = 'a' LIMIT 6)")
    _, counts = await _pick(pool, settings, 6)
    assert counts == {"b": 4, "c": 2} or counts == {"b": 3, "c": 3}
    _, counts = await _pick(pool, settings, 30)
    # Everyone under the cap first, then water-filling above it; every slot is used.
    assert sum(counts.values()) == 30 and counts["c"] == 3
    assert counts["b"] > counts["a"]


async def test_weights_and_priority(client, pool, settings):
    await client.enqueue("heavy", keyword_jobs(40))
    await client.enqueue("light", keyword_jobs(40))
    await pool.execute("INSERT INTO bq_tenants (tenant_id, weight) VALUES ('heavy', 3)")
    _, counts = await _pick(pool, settings, 20, cap=100)
    assert counts == {"heavy": 15, "light": 5}

    await pool.execute("TRUNCATE bq_job_events, bq_job_stages, bq_jobs, bq_batches, bq_tenants CASCADE")
    await client.enqueue("t", keyword_jobs(5))
    urgent = await client.enqueue("t", {"source": {"type": "keyword", "keyword": "urgent"}, "priority": 10})
    ids, _ = await _pick(pool, settings, 1)
    assert [str(i) for i in ids] == [urgent.jobs[0].id]


async def test_two_dispatchers_never_dispatch_an_attempt_twice(client, pool, settings):
    """Even two dispatchers at once (one term, no lease between them) cannot hand out one attempt twice."""
    from arq.connections import RedisSettings, create_pool

    from blogqueue.dispatcher import Dispatcher

    await pool.execute(Q["register_worker"], "fake", settings.queue_name, "h", 1, 400, 0, ["blog_post"])
    await client.enqueue("a", keyword_jobs(300))
    await client.enqueue("b", keyword_jobs(100))
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    try:
        one, two = Dispatcher(settings, pool, redis), Dispatcher(settings, pool, redis)
        # Both under one leadership term: the epoch fence lets them through, the row guards must hold.
        lease = await pool.fetchrow(Q["leader_acquire"], settings.queue_name, one.holder, 60.0)
        one.epoch = two.epoch = lease["epoch"]
        for _ in range(10):
            await asyncio.gather(one.cycle(), two.cycle())
        queued = await redis.zrange(settings.queue_name, 0, -1)
    finally:
        await redis.delete(settings.queue_name)
        await redis.aclose()
    ids = [q.decode().split(":")[0] for q in queued]
    assert len(ids) == len(set(ids)) == 400
    assert {q.decode().split(":")[1] for q in queued} == {"1"}
    assert one.dispatched + two.dispatched == 400
    assert await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'dispatched' AND attempt = 1") == 400
    assert all(uuid.UUID(i) for i in ids)
