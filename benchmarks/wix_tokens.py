"""Wix app mode: what the shared token cache costs and what it saves.

Against a redis-server of its own and the fake Wix on 127.0.0.1 (token requests
answered after `--latency-ms`, as a remote Wix would):

    .venv/bin/python benchmarks/wix_tokens.py [--processes 4] [--callers 250] [--hits 3000]

1. Stampede: `--processes` processes each start `--callers` concurrent
   `wixauth.token()` calls for ONE installation at once (a big store's batch
   reaching its publish stage): how many token requests reach Wix, and how long
   until every caller has the token.
2. Cache hit: `--hits` sequential `token()` calls with the token cached (a Redis
   MGET and an AES-GCM decrypt), beside a plain Redis GET of the same key in the
   same run: the ratio is the cache's cost over the cheapest possible lookup.

Prints a table and writes benchmarks/results/wix_tokens.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from blogqueue import wixauth
from blogqueue.settings import Settings
from blogqueue.testing.fake_wix import FakeWix
from testkit.processes import RedisServer

APP_ID, APP_SECRET = "bench-app", "bench-secret-0123456789"


def _stampede(settings: Settings, instance: str, callers: int, ready: multiprocessing.Queue, go: object,
              out: multiprocessing.Queue) -> None:
    async def run() -> None:
        await wixauth._proc(settings).redis.ping()  # connected before the start line, like a running worker
        ready.put(1)
        while not go.is_set():  # type: ignore[attr-defined]
            await asyncio.sleep(0.001)
        t0 = time.time()
        tokens = await asyncio.gather(*(wixauth.token(settings, instance) for _ in range(callers)))
        out.put({"distinct_tokens": len(set(tokens)), "done_at": time.time(), "started": t0})

    asyncio.run(run())


async def _hits(settings: Settings, instance: str, n: int) -> dict[str, float]:
    await wixauth.token(settings, instance)
    redis = wixauth._proc(settings).redis
    key = wixauth._keys(settings, instance)[0]
    cached, raw = [], []
    for _ in range(n):
        t = time.perf_counter()
        await wixauth.token(settings, instance)
        cached.append(time.perf_counter() - t)
        t = time.perf_counter()
        await redis.get(key)
        raw.append(time.perf_counter() - t)
    return {"cached_token_us_p50": statistics.median(cached) * 1e6,
            "redis_get_us_p50": statistics.median(raw) * 1e6,
            "ratio_p50": statistics.median(cached) / statistics.median(raw)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--callers", type=int, default=250)
    parser.add_argument("--hits", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args()

    instance = str(uuid.uuid4())
    with tempfile.TemporaryDirectory() as tmp, \
            FakeWix(app_id=APP_ID, app_secret=APP_SECRET, instances={instance: "site"},
                    latency_ms=args.latency_ms) as wix:
        redis = RedisServer(tmp).start()
        try:
            settings = Settings(redis_url=redis.url, queue_name=f"bench-{uuid.uuid4().hex[:6]}",
                                wix_base_url=wix.url, wix_app_id=APP_ID, wix_app_secret=APP_SECRET)
            ctx = multiprocessing.get_context("spawn")
            out: multiprocessing.Queue = ctx.Queue()
            ready: multiprocessing.Queue = ctx.Queue()
            go = ctx.Event()
            procs = [ctx.Process(target=_stampede, args=(settings, instance, args.callers, ready, go, out))
                     for _ in range(args.processes)]
            for p in procs:
                p.start()
            for _ in procs:  # every process imported and connected: then all start at once
                ready.get(timeout=300)
            start_at = time.time()
            go.set()
            results = [out.get(timeout=120) for _ in procs]
            for p in procs:
                p.join(30)
            stampede = {
                "callers": args.processes * args.callers, "processes": args.processes,
                "token_requests": wix.token_requests,
                "distinct_tokens": len({t for t in wix.issued}),
                # From a process's start line to its last caller served (the slowest process).
                "all_have_token_after_s": max(r["done_at"] - r["started"] for r in results),
                "late_start_s": max(r["started"] for r in results) - start_at,
                "token_request_latency_s": args.latency_ms / 1000,
            }
            hits = asyncio.run(_hits(settings, instance, args.hits))
        finally:
            redis.stop()

    print(f"{'stampede':<34} {'value':>12}")
    for k, v in stampede.items():
        print(f"  {k:<32} {v:>12.3f}" if isinstance(v, float) else f"  {k:<32} {v:>12}")
    print(f"{'cache hit (sequential)':<34} {'value':>12}")
    for k, v in hits.items():
        print(f"  {k:<32} {v:>12.1f}" if "us" in k else f"  {k:<32} {v:>12.2f}")
    result = {"command": "benchmarks/wix_tokens.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()), "stampede": stampede, "cache_hit": hits}
    path = Path(__file__).parent / "results" / "wix_tokens.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
