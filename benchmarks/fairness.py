"""Fairness: one tenant with 5,000 jobs, then fifty tenants with 20 each.

Two real workers, the offline provider with a small latency (20 ms per call,
two calls per job). The big tenant enqueues first and is already running when
the small ones arrive. From bq_jobs: per small tenant, the delay from its
enqueue to its first start and to its last finish. Sampled every ~100 ms: the
in-flight work (dispatched + running) of each tenant backlogged then (at least
two), summarised by Jain's index J = (Σx)² / (n·Σx²) of the time-averaged
shares (1.0 = perfectly even) and the mean of the per-sample indexes. With more
backlogged tenants than slots no single sample can be even: round robin is fair
over time, not at every instant.

    python benchmarks/fairness.py [--big 5000] [--small 50] [--small-jobs 20] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from _harness import Bench, Sampler, bench_env, table, write_result

BIG = "big-store"


def jain(xs: list[float]) -> float | None:
    total, squares = sum(xs), sum(x * x for x in xs)
    return total * total / (len(xs) * squares) if squares else None


async def snapshot(bench: Bench) -> dict[str, tuple[int, int]]:
    """tenant → (in flight, unfinished) right now."""
    rows = await bench.pool.fetch(
        """SELECT tenant_id,
                  count(*) FILTER (WHERE status IN ('dispatched', 'running')) AS inflight,
                  count(*) AS unfinished
           FROM bq_jobs WHERE status IN ('scheduled', 'queued', 'dispatched', 'running') GROUP BY tenant_id""")
    return {r["tenant_id"]: (r["inflight"], r["unfinished"]) for r in rows}


async def run(bench: Bench, big: int, small: int, small_jobs: int, workers: int) -> dict[str, Any]:
    s = await bench.reset()
    await bench.start_workers(workers)
    await bench.enqueue(BIG, big)
    # Let the big tenant fill every slot first: the small ones arrive behind a busy queue.
    while await bench.pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'running'") < s.worker_concurrency:
        await asyncio.sleep(0.05)
    smalls = [f"small-{i:02d}" for i in range(small)]
    sampler = Sampler(lambda: snapshot(bench), 0.1).start()
    t_small = time.monotonic()
    for tenant in smalls:
        await bench.enqueue(tenant, small_jobs)
    enqueue_s = time.monotonic() - t_small
    await bench.wait_finished(big + small * small_jobs, timeout=600)
    samples = await sampler.stop()

    per = await bench.pool.fetch(
        """SELECT tenant_id, count(*) AS jobs, count(*) FILTER (WHERE status = 'done') AS done,
                  extract(epoch FROM min(started_at) - min(created_at))::float8 AS first_start_s,
                  extract(epoch FROM max(finished_at) - min(created_at))::float8 AS complete_s
           FROM bq_jobs GROUP BY tenant_id ORDER BY tenant_id""")
    by_tenant = {r["tenant_id"]: dict(r) for r in per}
    small_rows = [by_tenant[t] for t in smalls]
    # A tenant is backlogged while it has unfinished work: the dispatcher owes it a share.
    # Tenants arrive one after the other and the first ones can finish before the last
    # arrive, so each sample counts the tenants backlogged then (at least two of them).
    everyone = [BIG, *smalls]
    backlogged = [{t: snap[t][0] for t in everyone if snap.get(t, (0, 0))[1] > 0} for snap in samples]
    backlogged = [b for b in backlogged if len(b) >= 2]
    seen: dict[str, list[int]] = {}
    for b in backlogged:
        for t, v in b.items():
            seen.setdefault(t, []).append(v)
    avg_share = [statistics.fmean(seen[t]) for t in everyone if t in seen]
    per_sample = [j for b in backlogged if (j := jain(list(b.values()))) is not None]
    firsts = [r["first_start_s"] for r in small_rows]
    completes = [r["complete_s"] for r in small_rows]
    return {
        "big_jobs": big, "small_tenants": small, "small_jobs": small_jobs, "workers": workers,
        "concurrency": s.worker_concurrency, "latency_ms": s.offline_latency_ms,
        "max_inflight_per_tenant": s.max_inflight_per_tenant, "small_enqueue_s": enqueue_s,
        "small_first_start_s": {"p50": statistics.median(firsts), "max": max(firsts), "mean": statistics.fmean(firsts)},
        "small_complete_s": {"p50": statistics.median(completes), "max": max(completes),
                             "mean": statistics.fmean(completes)},
        "big_complete_s": by_tenant[BIG]["complete_s"],
        "backlogged_samples": len(backlogged),
        "jain_time_averaged": jain(avg_share) if avg_share else None,
        "jain_per_sample_mean": statistics.fmean(per_sample) if per_sample else None,
        "big_share_while_backlogged": (statistics.fmean(seen[BIG]) / sum(avg_share))
        if BIG in seen and sum(avg_share) else None,
        "per_tenant": small_rows,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big", type=int, default=5000)
    ap.add_argument("--small", type=int, default=50)
    ap.add_argument("--small-jobs", type=int, default=20)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    async with bench_env(offline_latency_ms=args.latency_ms) as bench:
        r = await run(bench, args.big, args.small, args.small_jobs, args.workers)
    f, c = r["small_first_start_s"], r["small_complete_s"]
    table(f"Fairness: 1 tenant × {r['big_jobs']:,} jobs, {r['small_tenants']} tenants × {r['small_jobs']}; "
          f"{r['workers']} workers × {r['concurrency']}, offline {r['latency_ms']:g} ms/call",
          ["measure", "p50", "max", "mean"],
          [["small tenant: first start after enqueue (s)", f["p50"], f["max"], f["mean"]],
           ["small tenant: all done after enqueue (s)", c["p50"], c["max"], c["mean"]]])
    table("Shares of the tenants backlogged at each sample (at least two)",
          ["measure", "value"],
          [["samples (every ~100 ms)", r["backlogged_samples"]],
           ["Jain's index, time-averaged in-flight shares", r["jain_time_averaged"]],
           ["Jain's index, mean of per-sample values", r["jain_per_sample_mean"]],
           ["big tenant's share of in-flight work", r["big_share_while_backlogged"]],
           ["big tenant done after (s)", r["big_complete_s"]],
           ["time to enqueue the 50 small tenants (s)", r["small_enqueue_s"]]])
    write_result("fairness", r)


if __name__ == "__main__":
    asyncio.run(main())
