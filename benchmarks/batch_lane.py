"""The batch lane: 5,000 batch-lane jobs of one store plus 50 small now-lane stores.

Two real workers against the OpenAI fake with its Batch API (FakeOpenAIBatch: batches
complete `--completion-s` after submission; synchronous calls take `--latency-ms`). The
big store enqueues its batch-lane jobs first; once 1,000 of them have entered the lane
(parked or answered, the rest still queued), fifty small stores enqueue `--small-jobs`
now-lane jobs each. Reported: the small stores' first start (enqueue → first job
started, per store), everyone's finish, and the provider cost of both lanes in tokens at
list price (a batch token costs BATCH_PRICE_RATIO of a synchronous one).

`--control` runs the same load a second time with the big store in the now-lane, in the
same process, so the small stores' first start can be compared as a ratio under the same
machine load (this VM's 2 cores are shared).

    python benchmarks/batch_lane.py [--big 5000] [--small 50] [--small-jobs 5] [--completion-s 3] [--control]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from _harness import Bench, bench_env, table, wait_for, write_result

from blogqueue.testing.fake_openai_batch import FakeOpenAIBatch

KEY = "sk-bench-batch-lane-0000"
BIG = "big-store"


async def run_case(bench: Bench, fake: FakeOpenAIBatch, args: argparse.Namespace, big_lane: str) -> dict[str, Any]:
    fake.reset()
    fake.custom_ids.clear()
    await bench.reset()
    await bench.pool.execute("TRUNCATE bq_provider_batches CASCADE")
    await bench.start_workers(2)
    t0 = time.monotonic()
    await bench.enqueue(BIG, args.big, lane=big_lane, image=False)

    # The small stores arrive once the big store is well under way: in the batch lane, 1,000 of
    # its jobs parked or answered (the rest queued); in the now-lane, as many of its jobs done.
    async def under_way() -> bool:
        sql = ("SELECT count(*) FROM bq_batch_requests" if big_lane == "batch"
               else "SELECT count(*) FROM bq_jobs WHERE status = 'done'")
        return await bench.pool.fetchval(sql) >= min(args.big, 1000)

    await wait_for(under_way, timeout=600, what="the big store to be under way")
    parked_then = await bench.pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'parked'")
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
    bench.stop_workers()
    sync_calls = [c for c in fake.calls if c["path"] == "/v1/chat/completions" and c["status"] == 200]
    sync_tokens = sum(c["tokens"] for c in sync_calls)
    firsts = sorted(r["first_start_s"] for r in starts)
    return {
        "big_lane": big_lane, "total_s": round(done_at - t0, 2), "statuses": statuses,
        "small_first_start_s": {"p50": round(statistics.median(firsts), 3), "max": round(firsts[-1], 3)},
        "small_last_finish_s_max": round(max(r["last_finish_s"] for r in starts), 3),
        "provider_batches": batches, "big_parked_when_small_arrived": parked_then,
        "custom_ids_submitted_twice": sum(1 for v in fake.custom_ids.values() if v > 1),
        "now_lane": {"requests": len(sync_calls), "tokens": sync_tokens, "cost_tokens": sync_tokens},
        "batch_lane": {"requests": batch["requests"], "tokens": batch["tokens"],
                       "cost_tokens": round(batch["tokens"] * ratio),
                       "saving_tokens": round(batch["tokens"] * (1 - ratio))},
    }


def rows(r: dict[str, Any]) -> list[list[Any]]:
    now, lane = r["now_lane"], r["batch_lane"]
    return [["small stores' first start p50 / max (s)",
             f"{r['small_first_start_s']['p50']} / {r['small_first_start_s']['max']}"],
            ["small stores' last finish, max (s)", r["small_last_finish_s_max"]],
            ["all finished after (s)", r["total_s"]], ["provider batches", r["provider_batches"]],
            ["custom ids submitted twice", r["custom_ids_submitted_twice"]],
            ["now lane: requests / tokens / cost", f"{now['requests']} / {now['tokens']} / {now['cost_tokens']}"],
            ["batch lane: requests / tokens / cost", f"{lane['requests']} / {lane['tokens']} / {lane['cost_tokens']}"],
            ["provider cost, both lanes (token-equivalents)", now["cost_tokens"] + lane["cost_tokens"]]]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with FakeOpenAIBatch(completion_delay_s=args.completion_s, latency_ms=args.latency_ms) as fake:
        lane = {"openai_base_url": fake.base_url, "openai_api_key": KEY, "batch_window_seconds": 1.0,
                "batch_max_requests": 1000, "batch_poll_seconds": 0.5, "batch_poll_max_seconds": 1.0,
                "worker_concurrency": 20, "default_model": "openai:gpt-4o-mini"}
        async with bench_env(**lane) as bench:
            cases = [await run_case(bench, fake, args, "batch")]
            if args.control:
                cases.append(await run_case(bench, fake, args, "now"))
    result = {"big": args.big, "small": args.small, "small_jobs": args.small_jobs,
              "completion_s": args.completion_s, "latency_ms": args.latency_ms, "cases": cases}
    title = (f"batch lane: one store x {args.big} jobs, then {args.small} stores x {args.small_jobs} now-lane "
             f"jobs (big store in the {' / '.join(c['big_lane'] for c in cases)} lane)")
    merged = [[name, *(rows(c)[i][1] for c in cases)] for i, (name, _) in enumerate(rows(cases[0]))]
    print(table(title, ["measure", *(f"big store: {c['big_lane']} lane" for c in cases)], merged))
    write_result("batch_lane", result)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--big", type=int, default=5000)
    p.add_argument("--small", type=int, default=50)
    p.add_argument("--small-jobs", type=int, default=5)
    p.add_argument("--completion-s", type=float, default=3.0)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--control", action="store_true", help="run it again with the big store in the now-lane")
    asyncio.run(main(p.parse_args()))
