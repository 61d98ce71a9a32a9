"""Worker memory over a long run: RSS must stay flat.

Two real workers run `--jobs` blog posts (zero-latency offline provider, `none`
publisher) enqueued up front by ten tenants. Every second each worker's VmRSS
is read from /proc/<pid>/status. "Warm" is the RSS once `--warmup` of the
jobs are done (pools, caches and arq's buffers have grown to their working
size); growth is end vs warm. Target: < 10 %.

    python benchmarks/memory.py [--jobs 50000] [--workers 2] [--warmup 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from _harness import Bench, bench_env, rss_kb, table, write_result

TENANTS = 10


async def run(bench: Bench, jobs: int, workers: int, warmup: float) -> dict[str, Any]:
    await bench.reset()
    procs = await bench.start_workers(workers)
    start_rss = [rss_kb(p.pid) for p in procs]
    for t in range(TENANTS):
        await bench.enqueue(f"tenant-{t}", jobs // TENANTS + (jobs % TENANTS if t == 0 else 0))
    t0 = time.monotonic()
    series: list[dict[str, Any]] = []
    warm: list[int | None] | None = None
    while True:
        done = await bench.pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status IN ('done', 'failed')")
        rss = [rss_kb(p.pid) for p in procs]
        if any(r is None for r in rss):
            raise RuntimeError(f"a worker died; see {bench.logdir}")
        series.append({"t_s": round(time.monotonic() - t0, 1), "done": done, "rss_kb": rss})
        if len(series) % 15 == 1:
            print(f"  {series[-1]['t_s']:6.0f} s  {done:>7,} done  RSS MiB: "
                  + ", ".join(f"{r / 1024:.1f}" for r in rss if r is not None), flush=True)
        if warm is None and done >= warmup * jobs:
            warm = rss
        if done >= jobs:
            break
        await asyncio.sleep(1.0)
    wall = time.monotonic() - t0
    end = series[-1]["rss_kb"]
    peak = [max(s["rss_kb"][i] for s in series) for i in range(workers)]
    assert warm is not None
    growth = [100 * (e - w) / w for e, w in zip(end, warm, strict=True)]
    # A logged traceback loads source files into linecache once (~1 MiB): count them to tell that from a leak.
    errors = [_errors(bench.logdir / f"worker-{i}.log") for i in range(workers)]
    return {"jobs": jobs, "workers": workers, "warmup_fraction": warmup, "wall_s": wall, "jobs_per_s": jobs / wall,
            "rss_start_kb": start_rss, "rss_warm_kb": warm, "rss_end_kb": end, "rss_peak_kb": peak,
            "growth_pct": growth, "max_growth_pct": max(growth), "worker_errors_logged": errors, "series": series}


def _errors(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if " ERROR " in line)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of jobs done before the warm sample")
    args = ap.parse_args()
    async with bench_env() as bench:
        r = await run(bench, args.jobs, args.workers, args.warmup)
    table(f"Worker RSS over {r['jobs']:,} jobs ({r['wall_s']:.0f} s, {r['jobs_per_s']:.0f} jobs/s); "
          f"warm = after {args.warmup:.0%} of jobs",
          ["worker", "start MiB", "warm MiB", "end MiB", "peak MiB", "growth %", "errors logged"],
          [[i, r["rss_start_kb"][i] / 1024, r["rss_warm_kb"][i] / 1024, r["rss_end_kb"][i] / 1024,
            r["rss_peak_kb"][i] / 1024, r["growth_pct"][i], r["worker_errors_logged"][i]] for i in range(r["workers"])])
    verdict = "PASS" if r["max_growth_pct"] < 10 else "FAIL"
    print(f"\nmax growth after warm-up: {r['max_growth_pct']:.1f}% (target < 10%): {verdict}")
    write_result("memory", r)


if __name__ == "__main__":
    asyncio.run(main())
