"""Provider-limit utilisation at the seeds' 450 RPM / 450,000 TPM, against three enforcement styles.

For each provider fake (OpenAI with a rolling minute, OpenAI quantized per
second, Anthropic with continuously refilled RPM/ITPM/OTPM buckets), starts
its own PostgreSQL database (on BLOGQUEUE_DATABASE_URL's server), a private
redis-server, the fake on 127.0.0.1 with a call latency spread over 1-6 s, and
real worker processes; enqueues more than `--minutes` of backlogged work for
two tenants and reports, from the fake's own log of admitted calls: 429s,
peak calls and tokens per second and per minute, the utilisation of the
binding limit over every full rolling minute while work was waiting, and the
tokens each tenant got. Prints a table and writes benchmarks/results/ratelimit.json.

    python benchmarks/ratelimit.py [--fakes openai-window,openai-quantized,anthropic] [--minutes 3]

OpenAI runs blog posts (one text call + one image call per job: requests bind);
the Anthropic run has no images (`"image": false`) and limits RPM 450, ITPM
450,000, OTPM 450,000: at 1,500 output tokens a call, OTPM binds (300 calls/min).
Its fake holds one second of each limit (stricter than Anthropic's documented
bucket, which refills up to the whole minute), so a burst would show as 429s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from blogqueue import db, ratelimit
from blogqueue.client import Client
from blogqueue.settings import RateLimit, Settings
from blogqueue.testing.fake_anthropic import FakeAnthropic
from blogqueue.testing.fake_openai import FakeOpenAI
from blogqueue.testing.fakeserver import FakeServer
from testkit.databases import drop_database, recreate_database
from testkit.processes import RedisServer, WorkerProcess

OUT = Path(__file__).parent / "results" / "ratelimit.json"
RPM, TPM = 450, 450_000
ANTHROPIC = {"rpm": 450, "itpm": 450_000, "otpm": 450_000}
COMPLETION = 1500   # blog posts use their max_tokens (content_stage asks for 1,500)
TENANTS = ("shop-a", "shop-b")


def sliding_max(points: list[tuple[float, float]], width: float) -> float:
    """The largest sum of values within any `width`-second window."""
    best, j, total = 0.0, 0, 0.0
    for at, v in points:
        total += v
        while points[j][0] <= at - width:
            total -= points[j][1]
            j += 1
        best = max(best, total)
    return best


def full_minutes(points: list[tuple[float, float]], t0: float, t1: float, step: float = 0.5) -> list[float]:
    """The sum of values in every full 60 s window starting in [t0, t1 - 60]."""
    out = []
    t = t0
    while t + 60 <= t1 + 1e-9:
        out.append(sum(v for at, v in points if t <= at < t + 60))
        t += step
    return out


def analyse(calls: list[dict[str, Any]], limits: dict[str, int], dims: dict[str, str],
            backlog_from: float, backlog_until: float) -> dict[str, Any]:
    ok = sorted((c for c in calls if c["status"] == 200), key=lambda c: c["at"])
    series = {d: [(c["at"], float(c.get(field, 1) if field else 1)) for c in ok] for d, field in dims.items()}
    res: dict[str, Any] = {"admitted": len(ok), "dims": {}}
    for d, pts in series.items():
        mins = full_minutes(pts, backlog_from, backlog_until)
        res["dims"][d] = {
            "limit": limits[d], "peak_per_s": sliding_max(pts, 1.0), "peak_per_min": sliding_max(pts, 60.0),
            "mean_per_min_backlogged": sum(mins) / len(mins) if mins else None, "full_minutes": len(mins),
            "utilisation": (sum(mins) / len(mins) / limits[d]) if mins else None}
    binding = max(res["dims"], key=lambda d: res["dims"][d]["utilisation"] or 0)
    res["binding"] = binding
    res["utilisation_binding"] = res["dims"][binding]["utilisation"]
    return res


async def run_one(fake_name: str, args: argparse.Namespace) -> dict[str, Any]:
    base = Settings.from_env()
    name = f"bq_bench_rl_{os.getpid()}"
    url = await recreate_database(base, name)
    tmp = tempfile.mkdtemp(prefix="bq-bench-rl-")
    redis = RedisServer(tmp).start()
    latency = {"latency_ms": 1000.0, "latency_spread_ms": 5000.0}
    fake: FakeServer
    key = "sk-bench-platform-key-000000"
    if fake_name == "anthropic":
        fake = FakeAnthropic(completion_tokens=COMPLETION, capacity_s=1.0, seed=1, **ANTHROPIC, **latency).start()
        limits = dict(ANTHROPIC)
        dims = {"rpm": "", "itpm": "tokens_in", "otpm": "output_tokens"}
        model, provider_settings = "anthropic:claude-3-5-haiku-latest", {
            "anthropic_api_key": key, "anthropic_base_url": fake.base_url}
        rate_limits = {"anthropic": RateLimit(**ANTHROPIC)}
        image, per_job = False, 1
    else:
        fake = FakeOpenAI(rpm=RPM, tpm=TPM, completion_tokens=COMPLETION, seed=1,
                          mode="quantized" if fake_name == "openai-quantized" else "window", **latency).start()
        limits = {"rpm": RPM, "tpm": TPM}
        dims = {"rpm": "", "tpm": "tokens"}
        model, provider_settings = "openai:gpt-4o-mini", {"openai_api_key": key, "openai_base_url": fake.base_url}
        rate_limits = {"openai": RateLimit(rpm=RPM, tpm=TPM)}
        image, per_job = True, 2
    # Enough jobs for `minutes` of work at the binding limit, plus a tenth.
    per_min = min(limits["rpm"] / per_job, (ANTHROPIC["otpm"] / COMPLETION) if fake_name == "anthropic" else 1e9)
    n_jobs = int(per_min * args.minutes * 1.1) // len(TENANTS) * len(TENANTS)
    procs: list[WorkerProcess] = []
    try:
        s = base.replace(database_url=url, redis_url=redis.url, queue_name="bench-rl", default_model=model,
                         rate_limits=rate_limits, worker_concurrency=args.concurrency,
                         max_inflight_per_tenant=1000, max_tenant_backlog=100_000, log_level="WARNING",
                         rate_limit_max_wait_seconds=args.max_wait, provider_timeout_seconds=30,
                         **provider_settings)
        procs = [WorkerProcess(s, Path(tmp) / f"worker-{i}.log").start() for i in range(args.workers)]
        pool = await db.create_pool(s)
        client = Client(s, pool)
        r = aioredis.Redis.from_url(redis.url)
        start = time.time()
        batches = []
        for t in TENANTS:
            jobs = [{"source": {"type": "keyword", "keyword": f"{t} idea {i}"}, "image": image}
                    for i in range(n_jobs // len(TENANTS))]
            batches.append(await client.enqueue(t, jobs))
        backlog_until = start
        while True:
            counts = [(await client.get_batch(b.batch_id)).counts for b in batches]
            waiting = sum(c["queued"] + c["retrying"] for c in counts)
            buckets = await ratelimit.bucket_stats(r, s)
            if waiting or any(b["waiting"] for b in buckets):
                backlog_until = time.time()
            done = sum(c["done"] + c["failed"] + c["cancelled"] for c in counts)
            print(f"\r{fake_name}: {done}/{n_jobs} done, fake 429s: {fake.stats()['rate_limited']}   ",
                  end="", flush=True)
            if done >= n_jobs:
                break
            await asyncio.sleep(1)
        elapsed = time.time() - start
        print()
        failures = await pool.fetchval("SELECT coalesce(sum(failures), 0) FROM bq_jobs")
        failed = await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status <> 'done'")
        bucket = (await ratelimit.bucket_stats(r, s))[0]
        await r.aclose()
        await pool.close()
        calls = [dict(c) for c in fake.calls]
        for c in calls:
            c["tokens_in"] = c.get("input_tokens", 0) + c.get("cache_creation_input_tokens", 0)
        # Full minutes from the first admitted call: the first minute holds the initial burst too.
        first = min(c["at"] for c in calls if c["status"] == 200)
        res = analyse(calls, limits, dims, first, backlog_until)
        per_tenant: dict[str, int] = dict.fromkeys(TENANTS, 0)
        for c in calls:
            if c["status"] == 200:
                for t in TENANTS:
                    if str(c.get("subject", "")).startswith(t) or f"{t} idea" in str(c.get("subject", "")):
                        per_tenant[t] += int(c["tokens"])
        refused: dict[str, int] = {}
        for c in calls:
            if c["status"] == 429:
                refused[str(c.get("binding"))] = refused.get(str(c.get("binding")), 0) + 1
        return {"fake": fake_name, "jobs": n_jobs, "429s_by_limit": refused,
                "first_admitted_after_s": round(first - start, 1), "failed": failed, "failures": failures,
                "workers": args.workers, "concurrency": args.concurrency, "latency_s": "1-6 (uniform)",
                "limits": limits, "elapsed_s": round(elapsed, 1), "backlogged_s": round(backlog_until - start, 1),
                "calls": fake.stats()["calls"], "fake_429s": fake.stats()["rate_limited"],
                "limiter_waits": bucket["waits"], "limiter_429s": bucket["rate_limited_429"],
                "tokens_per_tenant": per_tenant, **res}
    finally:
        for p in procs:
            p.terminate(10)
        fake.stop()
        redis.stop()
        await drop_database(base, name)
        shutil.rmtree(tmp, ignore_errors=True)


def table(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, ...]] = [("", *(r["fake"] for r in results))]

    def row(label: str, f: Any) -> None:
        rows.append((label, *(f(r) for r in results)))

    row("limits", lambda r: ", ".join(f"{d} {n:,}" for d, n in r["limits"].items()))
    row("jobs (failed) / elapsed", lambda r: f"{r['jobs']} ({r['failed']}) / {r['elapsed_s']} s")
    row("backlogged for", lambda r: f"{r['backlogged_s']} s")
    row("provider calls / 429s at the fake", lambda r: f"{r['calls']} / {r['fake_429s']}")
    row("attempts used by failures", lambda r: str(r["failures"]))
    for d in ("rpm", "tpm", "itpm", "otpm"):
        if any(d in r["dims"] for r in results):
            row(f"{d}: peak per s / per min", lambda r, d=d: (
                f"{r['dims'][d]['peak_per_s']:,.0f} / {r['dims'][d]['peak_per_min']:,.0f}" if d in r["dims"] else "-"))
            row(f"{d}: mean per full minute", lambda r, d=d: (
                f"{r['dims'][d]['mean_per_min_backlogged']:,.0f} ({r['dims'][d]['utilisation']:.1%})"
                if d in r["dims"] and r["dims"][d]["utilisation"] is not None else "-"))
    row("full rolling minutes (0.5 s apart)", lambda r: str(r["dims"][r["binding"]]["full_minutes"]))
    row("BINDING limit utilisation", lambda r: f"{r['binding']} {r['utilisation_binding'] or 0:.1%}")
    row("tokens per tenant", lambda r: " / ".join(f"{v:,}" for v in r["tokens_per_tenant"].values()))
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line]
    for i, x in enumerate(rows):
        out.append("| " + " | ".join(v.ljust(w) for v, w in zip(x, widths, strict=True)) + " |")
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fakes", default="openai-window,openai-quantized,anthropic")
    p.add_argument("--minutes", type=float, default=3.0, help="minutes of backlogged work at the binding limit")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--max-wait", type=float, default=30.0, help="RATE_LIMIT_MAX_WAIT_SECONDS (product default)")
    args = p.parse_args()
    results = []
    for name in args.fakes.split(","):
        results.append(asyncio.run(run_one(name.strip(), args)))
        print(table(results[-1:]))
    print(table(results))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"command": "make bench-ratelimit", "runs": results}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
