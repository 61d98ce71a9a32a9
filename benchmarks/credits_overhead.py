"""What the credit ledger costs: enqueue and final-status updates with credits off and on.

Runs against real PostgreSQL in a database of its own (dropped afterwards):

    .venv/bin/python benchmarks/credits_overhead.py [--jobs 20000] [--batch 1000]

Prints a table and writes benchmarks/results/credits_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import asyncpg

from blogqueue import db
from blogqueue.client import Client
from blogqueue.settings import Settings
from testkit.databases import drop_database, recreate_database


async def run_case(settings: Settings, pool: asyncpg.Pool, enabled: bool, jobs: int, batch: int) -> dict[str, float]:
    await pool.execute("TRUNCATE bq_job_events, bq_job_stages, bq_jobs, bq_batches, bq_credit_ledger CASCADE")
    bq = Client(settings.replace(credits_enabled=enabled), pool)
    tenant = "bench"
    if enabled:
        await bq.grant_credits(tenant, 25 * jobs)
    started = time.perf_counter()
    for i in range(jobs // batch):
        await bq.enqueue(tenant, [{"source": {"type": "keyword", "keyword": f"k{i}-{n}"}} for n in range(batch)])
    enqueue_s = time.perf_counter() - started
    # The final update is what the worker's finish_attempt does; the trigger settles in it.
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM bq_jobs")]
    started = time.perf_counter()
    for i in range(0, len(ids), 100):
        await pool.execute("UPDATE bq_jobs SET status = 'done', finished_at = now() WHERE id = ANY($1::uuid[])",
                           ids[i:i + 100])
    settle_s = time.perf_counter() - started
    charges = await pool.fetchval("SELECT count(*) FROM bq_credit_ledger WHERE movement = 'charge'")
    assert charges == (jobs if enabled else 0)
    return {"enqueue_jobs_per_s": jobs / enqueue_s, "finish_jobs_per_s": jobs / settle_s}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    base = Settings.from_env()
    name = "bq_bench_credits"
    settings = base.replace(database_url=await recreate_database(base, name), max_backlog=10**7,
                            max_tenant_backlog=10**7, max_batch_size=10_000)
    try:
        pool = await db.create_pool(settings)
        try:
            results = {"off": await run_case(settings, pool, False, args.jobs, args.batch),
                       "on": await run_case(settings, pool, True, args.jobs, args.batch)}
        finally:
            await pool.close()
    finally:
        await drop_database(base, name)
    print(f"{args.jobs} jobs, batches of {args.batch}")
    print(f"{'credits':<8} {'enqueue jobs/s':>15} {'finish jobs/s':>15}")
    for case, r in results.items():
        print(f"{case:<8} {r['enqueue_jobs_per_s']:>15.0f} {r['finish_jobs_per_s']:>15.0f}")
    out = Path(__file__).parent / "results" / "credits_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"jobs": args.jobs, "batch": args.batch, "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
