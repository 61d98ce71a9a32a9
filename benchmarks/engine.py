"""Engine overhead: jobs/s through every stage, beside raw arq running no-op jobs.

blogqueue: `blog_post` jobs (source → content → image → publish) on the
zero-latency `offline` provider and the `none` publisher, with 1 and 2 real
worker processes; the clock runs from the first enqueue until PostgreSQL says
every job is done. Raw arq: the same number of no-op jobs pushed into arq's
queue in one pipeline, `max_jobs` 100 and `poll_delay` 0.05, the clock runs
until arq's queue is empty. Both on this machine, in this run. The ratio
blogqueue/arq is the figure: what durability, fairness and checkpoints cost.

    python benchmarks/engine.py [--jobs 5000] [--workers 1,2] [--profile]

`--profile` attaches py-spy (if installed) to one worker during the 2-worker
run and prints the hottest frames; transactions per job come from
pg_stat_database either way.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _harness import ROOT, Bench, Sampler, bench_env, cpu_times, proc_cpu_s, table, wait_for, write_result
from arq.connections import RedisSettings, create_pool
from arq.constants import expires_extra_ms, job_key_prefix
from arq.jobs import serialize_job

TENANTS = 10
STATS_FLUSH_S = 1.5  # PostgreSQL backends report transaction counts at most once a second


async def run_blogqueue(bench: Bench, workers: int, jobs: int, profile: bool, **tuning: Any) -> dict[str, Any]:
    s = await bench.reset(**tuning)
    procs = await bench.start_workers(workers)
    await asyncio.sleep(STATS_FLUSH_S)  # the workers' start-up transactions reach the statistics first
    own: collections.Counter[str] = collections.Counter()  # this script's own statements (polling), taken off the count

    async def in_flight() -> int:
        own["polls"] += 1
        n: int = await bench.pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status IN ('dispatched', 'running')")
        return n

    async def finished() -> bool:
        own["polls"] += 1
        n = await bench.pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status IN ('done', 'failed', 'cancelled')")
        if any(not w.alive() for w in procs):
            raise RuntimeError(f"a worker died; see {bench.logdir}")
        return bool(n >= jobs)

    xacts0 = await bench.xact_count()
    spy = _start_profiler(procs[0].pid, bench.logdir) if profile else None
    if spy:
        await asyncio.sleep(1.0)  # py-spy needs a moment to attach before the load starts
    inflight = Sampler(in_flight, 0.1).start()
    pg0 = {pid: proc_cpu_s(pid) for pid in await bench.backend_pids()}
    cpu0, wcpu0 = cpu_times(), sum(proc_cpu_s(p.pid) for p in procs)
    t0 = time.monotonic()
    per = jobs // TENANTS
    for t in range(TENANTS):
        await bench.enqueue(f"tenant-{t}", per + (jobs % TENANTS if t == 0 else 0))
    t_enq = time.monotonic()
    enqueues = sum(-(-(per + (jobs % TENANTS if t == 0 else 0)) // s.max_batch_size) for t in range(TENANTS))
    await wait_for(finished, timeout=max(120, jobs / 20), interval=0.02, what=f"{jobs} jobs to finish")
    t1 = time.monotonic()
    cpu1, wcpu1 = cpu_times(), sum(proc_cpu_s(p.pid) for p in procs)
    # Backends opened during the run started from zero; ones closed during it are missed (pools keep theirs).
    pg_cpu = sum(proc_cpu_s(pid) - pg0.get(pid, 0.0) for pid in await bench.backend_pids())
    await asyncio.sleep(STATS_FLUSH_S)  # a backend reports its counts up to a second late
    xacts1 = await bench.xact_count()
    samples = await inflight.stop()
    done = await bench.count("done")
    span = await bench.pool.fetchrow(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 AS run_s FROM bq_jobs")
    hot = _stop_profiler(spy) if spy else None
    bench.stop_workers()
    cycles, dispatched, claims, grouped = _dispatcher_counts(bench.logdir)
    # The workers' own heartbeats and the benchmark's polling are in this count too: an upper bound.
    return {"system": "blogqueue", "workers": workers, "concurrency": s.worker_concurrency,
            "prefetch": s.dispatch_prefetch, "jobs": jobs, "done": done, "wall_s": t1 - t0,
            "enqueue_s": t_enq - t0, "jobs_per_s": jobs / (t1 - t0),
            "run_jobs_per_s": jobs / span["run_s"] if span["run_s"] else None,
            # Every client's transactions on the database during the run (the workers' heartbeats
            # included) minus this script's own: its polls and the enqueues (one per batch).
            "pg_xacts_per_job": (xacts1 - xacts0 - own["polls"] - enqueues) / jobs,
            "dispatch_cycles": cycles, "jobs_per_dispatch_cycle": dispatched / cycles if cycles else None,
            "claim_statements": claims, "jobs_per_claim": jobs / claims if claims else None,
            # Group commit (blogqueue.groupcommit): rows per write of checkpoints and of finishes.
            "rows_per_checkpoint_write": (grouped["checkpoint_rows"] / grouped["checkpoint_statements"]
                                          if grouped["checkpoint_statements"] else None),
            "rows_per_finish_write": (grouped["finish_rows"] / grouped["finish_statements"]
                                      if grouped["finish_statements"] else None),
            "machine_cpu_busy_pct": 100 * (cpu1[0] - cpu0[0]) / max(1.0, cpu1[1] - cpu0[1]),
            "worker_cpu_ms_per_job": 1000 * (wcpu1 - wcpu0) / jobs,
            "postgres_cpu_ms_per_job": 1000 * pg_cpu / jobs,
            "mean_inflight": sum(samples) / len(samples) if samples else None,
            "capacity": workers * (s.worker_concurrency + s.dispatch_prefetch), "profile": hot}


async def run_arq(redis_url: str, workers: int, jobs: int) -> dict[str, Any]:
    queue = f"arq-noop-{uuid.uuid4().hex[:8]}"
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    keys = [f"{queue}:health-{i}" for i in range(workers)]
    procs = [_spawn_arq(redis_url, queue, k) for k in keys]
    try:
        async def ready() -> bool:
            return await redis.exists(*keys) == len(keys)
        await wait_for(ready, timeout=30, what="arq workers")
        t0 = time.monotonic()
        now_ms = int(time.time() * 1000)
        # Same hand-off as blogqueue's dispatcher: job keys and queue entries in one pipeline.
        for start in range(0, jobs, 5000):
            async with redis.pipeline(transaction=False) as pipe:
                for n in range(start, min(jobs, start + 5000)):
                    job_id = f"noop-{n}"
                    pipe.psetex(job_key_prefix + job_id, expires_extra_ms,
                                serialize_job("noop", (n,), {}, None, now_ms))
                    pipe.zadd(queue, {job_id: now_ms})
                await pipe.execute()

        async def empty() -> bool:
            return await redis.zcard(queue) == 0
        await wait_for(empty, timeout=max(60, jobs / 50), interval=0.01, what="arq queue to drain")
        wall = time.monotonic() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
        await redis.aclose()
    return {"system": "arq no-op", "workers": workers, "concurrency": 100, "jobs": jobs, "done": jobs,
            "wall_s": wall, "jobs_per_s": jobs / wall}


def _dispatcher_counts(logdir: Path) -> tuple[int, int, int, collections.Counter[str]]:
    """Dispatch cycles, dispatched jobs (only the leader's are non-zero), claim statements and
    the grouped writes' statements and rows, from the workers' stop lines."""
    cycles = dispatched = claims = 0
    grouped: collections.Counter[str] = collections.Counter()
    for log in logdir.glob("worker-*.log"):
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if "worker stopped" in line:
                cycles += _field(line, "dispatcher_cycles")
                dispatched += _field(line, "dispatched")
                claims += _field(line, "claim_statements")
                for name in ("checkpoint_statements", "checkpoint_rows", "finish_statements", "finish_rows"):
                    grouped[name] += _field(line, name)
        log.unlink()  # the next case starts its own logs
    return cycles, dispatched, claims, grouped


def _field(line: str, name: str) -> int:
    m = re.search(rf"\b{name}\W+(\d+)", line)
    return int(m.group(1)) if m else 0


def _spawn_arq(redis_url: str, queue: str, health_key: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "_arq_noop.py"), redis_url, queue, health_key],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _start_profiler(pid: int, logdir: Path) -> tuple[subprocess.Popen[bytes], Path] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("note: py-spy not installed (pip install py-spy); no profile taken")
        return None
    out = logdir / "profile.txt"
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
                             "--rate", "200", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, out


def _stop_profiler(spy: tuple[subprocess.Popen[bytes], Path]) -> dict[str, Any]:
    proc, out = spy
    proc.send_signal(2)
    proc.wait(30)
    return summarize_profile(out)


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Collapsed stacks → share of samples per frame (inclusive), and per leaf file (exclusive)."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        for f in set(frames):
            inclusive[f] += n
        leaf[_module(frames[-1])] += n
    ours = collections.Counter({f: n for f, n in inclusive.items() if "blogqueue/" in f or "arq/" in f})
    return {"samples": total,
            "inclusive": [(f, round(100 * n / total, 1)) for f, n in inclusive.most_common(top)],
            "ours": [(f, round(100 * n / total, 1)) for f, n in ours.most_common(2 * top)],
            "self_by_file": [(f, round(100 * n / total, 1)) for f, n in leaf.most_common(top)]}


def _module(frame: str) -> str:
    # "func (path/to/file.py:123)" → the file's last two path parts
    inside = frame.rpartition("(")[2].rstrip(")")
    path = inside.rpartition(":")[0] or inside
    return "/".join(Path(path).parts[-2:]) if path else frame


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker process counts")
    ap.add_argument("--profile", action="store_true", help="py-spy one worker in the largest run")
    ap.add_argument("--concurrency", type=int, help="WORKER_CONCURRENCY (default: the settings default)")
    ap.add_argument("--prefetch", type=int, help="DISPATCH_PREFETCH (default: the settings default)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    tuning = {k: v for k, v in (("worker_concurrency", args.concurrency), ("dispatch_prefetch", args.prefetch))
              if v is not None}

    rows: list[dict[str, Any]] = []
    async with bench_env() as bench:
        for w in counts:
            rows.append(await run_arq(bench.settings.redis_url, w, args.jobs))
            rows.append(await run_blogqueue(bench, w, args.jobs, args.profile and w == max(counts), **tuning))
    arq_rate = {r["workers"]: r["jobs_per_s"] for r in rows if r["system"] == "arq no-op"}
    for r in rows:
        if r["system"] == "blogqueue":
            r["ratio_to_arq"] = r["jobs_per_s"] / arq_rate[r["workers"]]
    table(f"Engine overhead: {args.jobs:,} jobs, offline provider (0 ms), publisher none",
          ["system", "workers", "max_jobs", "wall s", "jobs/s", "vs arq", "PG xacts/job", "CPU busy %",
           "worker CPU ms/job", "PG CPU ms/job", "jobs/cycle", "jobs/claim", "rows/ckpt write",
           "rows/finish write", "in flight/cap"],
          [[r["system"], r["workers"], r["concurrency"], r["wall_s"], r["jobs_per_s"], r.get("ratio_to_arq"),
            r.get("pg_xacts_per_job"), r.get("machine_cpu_busy_pct"), r.get("worker_cpu_ms_per_job"),
            r.get("postgres_cpu_ms_per_job"), r.get("jobs_per_dispatch_cycle"), r.get("jobs_per_claim"),
            r.get("rows_per_checkpoint_write"), r.get("rows_per_finish_write"),
            f"{r['mean_inflight']:.1f}/{r['capacity']}" if r.get("mean_inflight") is not None else None]
           for r in rows])
    for r in rows:
        prof = r.get("profile")
        if prof and prof.get("samples"):
            table(f"py-spy, one of {r['workers']} workers ({prof['samples']} samples): self time by file",
                  ["file", "% samples"], prof["self_by_file"])
            table("inclusive time by frame", ["frame", "% samples"], prof["inclusive"])
            table("inclusive time, blogqueue and arq frames", ["frame", "% samples"], prof.get("ours", []))
    write_result("engine", {"jobs": args.jobs, "tenants": TENANTS, "results": rows})


if __name__ == "__main__":
    asyncio.run(main())
