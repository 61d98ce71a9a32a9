"""The batch lane: 5,000 batch-lane jobs of one store plus 50 small now-lane stores.

Two real workers against the OpenAI fake with its Batch API (FakeOpenAIBatch: batches
complete `--completion-s` after submission; synchronous calls take `--latency-ms`). The
big store enqueues its batch-lane jobs first; once they are parked, fifty small stores
enqueue `--small-jobs` now-lane jobs each. Reported: the small stores' first start
(enqueue → first job started, per store), everyone's finish, and the provider cost of
both lanes in tokens at list price (a batch token costs BATCH_PRICE_RATIO of a
synchronous one).

    python benchmarks/batch_lane.py [--big 5000] [--small 50] [--small-jobs 5] [--completion-s 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from _harness import bench_env, table, wait_for, write_result

from blogqueue.testing.fake_openai_batch import FakeOpenAIBatch

KEY = "sk-bench-batch-lane-0000"
BIG = "big-store"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with FakeOpenAIBatch(completion_delay_s=args.completion_s, latency_ms=args.latency_ms) as fake:
        lane = {"openai_base_url": fake.base_url, "openai_api_key": KEY, "batch_window_seconds": 1.0,
                "batch_max_requests": 1000, "batch_poll_seconds": 0.5, "batch_poll_max_seconds": 1.0,
                "worker_concurrency": 20, "default_model": "openai:gpt-4o-mini"}
        async with bench_env(**lane) as bench:
            await bench.reset()
            await bench.start_workers(2)
            t0 = time.monotonic()
            await bench.enqueue(BIG, args.big, lane="batch", image=False)
            enqueued_big = time.monotonic() - t0

            async def parked() -> bool:
                n = await bench.pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'parked'")
                return n >= args.big * 0.5

            await wait_for(parked, timeout=300, what="half the big store's jobs to park")
            for i in range(args.small):
                await bench.enqueue(f"small-{i:02d}", args.small_jobs, image=False)
            total = args.big + args.small * args.small_jobs
            done_at = await bench.wait_finished(total, timeout=1800)
            starts = await bench.pool.fetch(
                """SELECT tenant_id, extract(epoch FROM min(started_at) - min(created_at))::float8 AS first_start_s,
                          extract(epoch FROM max(finished_at) - min(created_at))::float8 AS last_finish_s
                   FROM bq_jobs WHERE tenant_id LIKE 'small-%' GROUP BY tenant_id""")
            statuses = {r["status"]: r["n"] for r in await bench.pool.fetch(
                "SELECT status, count(*) AS n FROM bq_jobs GROUP BY status")}
            batch = await bench.pool.fetchrow(
                """SELECT count(*) FILTER (WHERE state = 'done') AS requests,
                          coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint AS tokens
                   FROM bq_batch_requests""")
            batches = await bench.pool.fetchval("SELECT count(*) FROM bq_provider_batches")
            ratio = bench.settings.batch_price_ratio
        sync_calls = [c for c in fake.calls if c["path"] == "/v1/chat/completions" and c["status"] == 200]
        resubmitted = sum(1 for v in fake.custom_ids.values() if v > 1)
    firsts = sorted(r["first_start_s"] for r in starts)
    sync_tokens = sum(c["tokens"] for c in sync_calls)
    result = {
        "big": args.big, "small": args.small, "small_jobs": args.small_jobs, "completion_s": args.completion_s,
        "enqueue_big_s": round(enqueued_big, 2), "total_s": round(done_at - t0, 2), "statuses": statuses,
        "small_first_start_s": {"p50": round(statistics.median(firsts), 3), "max": round(firsts[-1], 3)},
        "small_last_finish_s_max": round(max(r["last_finish_s"] for r in starts), 3),
        "provider_batches": batches, "custom_ids_submitted_twice": resubmitted,
        "now_lane": {"requests": len(sync_calls), "tokens": sync_tokens, "cost_tokens": sync_tokens},
        "batch_lane": {"requests": batch["requests"], "tokens": batch["tokens"],
                       "cost_tokens": round(batch["tokens"] * ratio),
                       "saving_tokens": round(batch["tokens"] * (1 - ratio))},
    }
    print(table("batch lane: one big batch-lane store + small now-lane stores",
                ["measure", "value"],
                [["big store jobs (batch lane)", args.big], ["small stores x jobs (now lane)",
                                                              f"{args.small} x {args.small_jobs}"],
                 ["small stores' first start p50 / max (s)",
                  f"{result['small_first_start_s']['p50']} / {result['small_first_start_s']['max']}"],
                 ["all finished after (s)", result["total_s"]], ["provider batches", batches],
                 ["custom ids submitted twice", resubmitted],
                 ["now lane: requests / tokens / cost", f"{len(sync_calls)} / {sync_tokens} / {sync_tokens}"],
                 ["batch lane: requests / tokens / cost",
                  f"{batch['requests']} / {batch['tokens']} / {result['batch_lane']['cost_tokens']}"],
                 ["batch lane saving (token-equivalents)", result["batch_lane"]["saving_tokens"]]]))
    write_result("batch_lane", result)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--big", type=int, default=5000)
    p.add_argument("--small", type=int, default=50)
    p.add_argument("--small-jobs", type=int, default=5)
    p.add_argument("--completion-s", type=float, default=3.0)
    p.add_argument("--latency-ms", type=float, default=50.0)
    asyncio.run(main(p.parse_args()))
