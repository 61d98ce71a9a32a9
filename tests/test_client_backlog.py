"""The backlog limits and idempotency under concurrent enqueues from several clients (processes' pools).

The limits are checked against counters (migration 013) instead of count(*) under a lock;
these tests show the counters keep both limits exact while jobs are enqueued and finished
at the same time, and that the counters always agree with the jobs table.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from blogqueue.client import Client
from blogqueue.errors import BacklogFull
from blogqueue.settings import Settings

from .conftest import keyword_jobs

LIVE = "SELECT count(*) FROM bq_jobs WHERE status IN ('scheduled', 'queued', 'dispatched', 'running')"


@contextlib.asynccontextmanager
async def clients(settings: Settings, n: int) -> AsyncIterator[list[Client]]:
    """`n` clients with pools of their own, like `n` service processes."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Client.open(settings, min_size=4, max_size=4)) for _ in range(n)]


async def enqueue_all(clients: list[Client], tenants: list[str], jobs: int = 1) -> tuple[int, int]:
    """One enqueue per tenant in `tenants`, all at once, spread over the clients: (accepted, refused)."""
    async def one(n: int, tenant: str) -> bool:
        try:
            await clients[n % len(clients)].enqueue(tenant, keyword_jobs(jobs))
            return True
        except BacklogFull:
            return False

    results = await asyncio.gather(*(one(n, t) for n, t in enumerate(tenants)))
    return sum(results), len(results) - sum(results)


async def counters_agree(pool: asyncpg.Pool) -> None:
    """Folded counters plus pending deltas equal the live jobs, per tenant and in total."""
    rows = await pool.fetch(
        """SELECT tenant_id, sum(live) AS live FROM (
               SELECT tenant_id, live FROM bq_backlog UNION ALL SELECT tenant_id, n FROM bq_backlog_delta
               UNION ALL SELECT '', n FROM bq_backlog_delta) c GROUP BY tenant_id""")
    counted = {r["tenant_id"]: r["live"] for r in rows if r["live"]}
    actual = {r["tenant_id"]: r["n"] for r in await pool.fetch(
        LIVE.replace("count(*)", "tenant_id, count(*) AS n") + " GROUP BY tenant_id")}
    total = sum(actual.values())
    assert counted == ({**actual, "": total} if total else {})


async def test_concurrent_enqueues_never_pass_the_tenant_limit(settings: Settings, pool: asyncpg.Pool) -> None:
    small = settings.replace(max_tenant_backlog=10, max_backlog=1000)
    async with clients(small, 3) as cs:
        await cs[0].enqueue("shop-a", keyword_jobs(4))
        accepted, refused = await enqueue_all(cs, ["shop-a"] * 40)
        assert (accepted, refused) == (6, 34)
        assert await pool.fetchval(LIVE + " AND tenant_id = 'shop-a'") == 10
        # Bulk enqueues race the same way: of five batches of 3 into 1 free place... none fits.
        await pool.execute("UPDATE bq_jobs SET status = 'done', finished_at = now() WHERE id IN "
                           "(SELECT id FROM bq_jobs WHERE tenant_id = 'shop-a' LIMIT 7)")
        accepted, refused = await enqueue_all(cs, ["shop-a"] * 5, jobs=3)
        assert (accepted, refused) == (2, 3)  # 3 live + 2 × 3 = 9; a third batch would make 12
        await counters_agree(pool)


async def test_concurrent_enqueues_never_pass_the_global_limit(settings: Settings, pool: asyncpg.Pool) -> None:
    small = settings.replace(max_tenant_backlog=100, max_backlog=12)
    async with clients(small, 3) as cs:
        accepted, refused = await enqueue_all(cs, [f"shop-{n}" for n in range(40)])
        assert (accepted, refused) == (12, 28)
        assert await pool.fetchval(LIVE) == 12
        await counters_agree(pool)


async def test_limits_hold_while_jobs_finish_and_enqueues_race(settings: Settings, pool: asyncpg.Pool) -> None:
    """Jobs finishing concurrently with enqueues: after every round neither limit is passed,
    the freed places were used (the counters saw the finishes), and the counters agree."""
    small = settings.replace(max_tenant_backlog=15, max_backlog=25)
    async with clients(small, 3) as cs:
        async def churn() -> None:
            for _ in range(10):
                await pool.execute("UPDATE bq_jobs SET status = 'done', finished_at = now() WHERE id IN "
                                   "(SELECT id FROM bq_jobs WHERE status = 'queued' ORDER BY random() LIMIT 2)")
                await asyncio.sleep(0)

        for _ in range(5):
            await asyncio.gather(enqueue_all(cs, [f"shop-{n % 3}" for n in range(30)]), churn())
            per_tenant = [r["n"] for r in await pool.fetch(
                LIVE.replace("count(*)", "tenant_id, count(*) AS n") + " GROUP BY tenant_id")]
            assert max(per_tenant) <= 15 and sum(per_tenant) <= 25
            await counters_agree(pool)
        # Places freed by the last finishes are given out again, to the limit and no further.
        await pool.execute("UPDATE bq_jobs SET status = 'cancelled', finished_at = now() WHERE status = 'queued'")
        assert await enqueue_all(cs, ["shop-0"] * 20) == (15, 5)
        # A job made live again (a retry) counts as well.
        requeued = len(await pool.fetch(
            "UPDATE bq_jobs SET status = 'queued' WHERE id IN (SELECT id FROM bq_jobs WHERE tenant_id = 'shop-1' "
            "AND status IN ('cancelled', 'done') LIMIT 3) RETURNING id"))
        assert requeued >= 1
        await counters_agree(pool)
        # global: 15 (shop-0) + the re-queued + the admitted = 25
        assert await enqueue_all(cs, ["shop-1"] * 20) == (10 - requeued, 10 + requeued)


@pytest.mark.parametrize("credits_enabled", [False, True])
async def test_concurrent_idempotent_enqueues_make_one_job(settings: Settings, pool: asyncpg.Pool,
                                                          credits_enabled: bool) -> None:
    s = settings.replace(credits_enabled=credits_enabled)
    async with clients(s, 3) as cs:
        if credits_enabled:
            await cs[0].grant_credits("shop-a", 10_000)
        job = {"source": {"type": "keyword", "keyword": "tea"}, "idempotency_key": "once"}
        outs = await asyncio.gather(*(cs[n % 3].enqueue("shop-a", job) for n in range(20)))
        assert len({o.jobs[0].id for o in outs}) == 1
        assert sum(not o.jobs[0].replayed for o in outs) == 1
        assert await pool.fetchval("SELECT count(*) FROM bq_jobs") == 1
        await counters_agree(pool)
