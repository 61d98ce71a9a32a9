"""Token fairness at a shared bucket: two tenants backlogged on one key, one with calls about 4x larger.

Starts a private redis-server and the OpenAI fake (quantized: 450,000 TPM
enforced per second too; 1-6 s latency) and `--processes` real processes,
each running `--callers` concurrent callers per tenant through the shared
limiter (`Limiter.call` with the OpenAI adapter): tenant `small` asks for
`max_tokens` 400, tenant `big` for 1,600, both with the same short prompt, so
`big`'s calls reserve about 4x the tokens. Every caller is always waiting, so
both tenants stay backlogged and the bucket (TPM) binds. Reports, from the
fake's log over the measured window (after the first `--warmup` seconds):
tokens per minute and calls per tenant, Jain's index of the two token shares
(1.0 = equal tokens) and 429s. Writes benchmarks/results/token_fairness.json.

    python benchmarks/token_fairness.py [--seconds 150] [--processes 2] [--callers 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from blogqueue import ratelimit
from blogqueue.providers.base import CallContext, ProviderConfig, TextRequest
from blogqueue.providers.openai import OpenAIProvider
from blogqueue.settings import RateLimit, Settings
from blogqueue.testing.fake_openai import FakeOpenAI
from testkit.processes import RedisServer

OUT = Path(__file__).parent / "results" / "token_fairness.json"
TPM = 450_000
MAX_TOKENS = {"small": 400, "big": 1600}
KEY = "sk-bench-shared-platform-key-0001"


def jain(x: list[float]) -> float:
    """(Σx)² / (n·Σx²): 1 when every share is equal, 1/n when one takes all."""
    return sum(x) ** 2 / (len(x) * sum(v * v for v in x)) if any(x) else float("nan")


async def callers(settings: Settings, n: int, until: float) -> None:
    provider = OpenAIProvider(ProviderConfig(settings.openai_base_url, settings.provider_timeout_seconds))
    ratelimit.warm(provider, KEY)  # as pipeline.Run does: the SDK client exists before the first grant
    lim = ratelimit.Limiter(settings, aioredis.Redis.from_url(settings.redis_url))

    async def loop(tenant: str, i: int) -> None:
        k = 0
        while time.time() < until:
            req = TextRequest(model="gpt-4o-mini", prompt=f"Write a post.\nTopic: {tenant} {i}-{k}",
                              max_tokens=MAX_TOKENS[tenant])
            cost = ratelimit.text_cost(provider.limit_dimensions, req.prompt, max_tokens=req.max_tokens)
            try:
                await lim.call("openai", KEY, cost,
                               lambda req=req: provider.generate_text(req, KEY, CallContext("j", 1, "c", tenant)),
                               used=ratelimit.text_usage, info=lambda r: r.limits, tenant=tenant)
            except Exception:  # a bounded wait handed back: wait again, as a rescheduled job would
                await asyncio.sleep(0.1)
            k += 1

    await asyncio.gather(*(loop(t, i) for t in MAX_TOKENS for i in range(n)))
    await lim.redis.aclose()


def process_main(env: dict[str, str], n: int, until: float) -> None:
    asyncio.run(callers(Settings.from_env(env), n, until))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=150.0)
    p.add_argument("--warmup", type=float, default=30.0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--callers", type=int, default=40, help="concurrent callers per tenant in each process")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bq-bench-fair-")
    redis = RedisServer(tmp).start()
    fake = FakeOpenAI(rpm=100_000, tpm=TPM, completion_tokens=max(MAX_TOKENS.values()), mode="quantized",
                      latency_ms=1000, latency_spread_ms=5000, seed=2).start()
    base = Settings.from_env()
    s = base.replace(redis_url=redis.url, queue_name="bench-fair", openai_api_key=KEY,
                     openai_base_url=fake.base_url, rate_limits={"openai": RateLimit(rpm=100_000, tpm=TPM)},
                     rate_limit_max_wait_seconds=120, provider_timeout_seconds=30)
    start = time.time()
    until = start + args.seconds
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=process_main, args=(s.to_env(), args.callers, until)) for _ in range(args.processes)]
    try:
        for pr in procs:
            pr.start()
        while any(pr.is_alive() for pr in procs):
            st = fake.stats()
            print(f"\r{time.time() - start:5.0f} s, calls {st['calls']}, 429s {st['rate_limited']}", end="", flush=True)
            time.sleep(2)
        print()
    finally:
        for pr in procs:
            pr.join(30)
        fake.stop()
        redis.stop()
    ok = [c for c in fake.calls if c["status"] == 200]
    t0 = min(c["at"] for c in ok) + args.warmup
    t1 = until
    window = [c for c in ok if t0 <= c["at"] < t1]
    minutes = (t1 - t0) / 60
    per: dict[str, dict[str, Any]] = {}
    for tenant in MAX_TOKENS:
        mine = [c for c in window if str(c.get("subject", "")).startswith(tenant)]
        tokens = sum(c["tokens"] for c in mine)
        reserved = sum(c["estimate"] for c in mine)
        per[tenant] = {"calls": len(mine), "tokens": tokens, "tokens_per_min": round(tokens / minutes),
                       "reserved_per_call": round(reserved / len(mine)) if mine else None,
                       "calls_per_min": round(len(mine) / minutes, 1)}
    shares = [per[t]["tokens"] for t in MAX_TOKENS]
    res = {"command": "make bench-token-fairness", "tpm": TPM, "seconds": args.seconds, "warmup_s": args.warmup,
           "measured_s": round(t1 - t0, 1), "processes": args.processes,
           "callers_per_tenant": args.callers * args.processes,
           "latency_s": "1-6 (uniform)", "fake": "openai quantized", "tenants": per,
           "jain_token_shares": round(jain([float(x) for x in shares]), 4),
           "call_ratio_small_to_big": round(per["small"]["calls"] / max(1, per["big"]["calls"]), 2),
           "total_tokens_per_min": round(sum(shares) / minutes),
           "utilisation_tpm": round(sum(shares) / minutes / TPM, 4),
           "fake_429s": fake.stats()["rate_limited"]}
    rows = [("tenant", "max_tokens", "reserved/call", "calls", "calls/min", "tokens/min")]
    for t in MAX_TOKENS:
        x = per[t]
        rows.append((t, str(MAX_TOKENS[t]), str(x["reserved_per_call"]), str(x["calls"]), str(x["calls_per_min"]),
                     f"{x['tokens_per_min']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
    print(f"Jain's index of token shares: {res['jain_token_shares']}; "
          f"calls small/big: {res['call_ratio_small_to_big']}; "
          f"TPM used {res['total_tokens_per_min']:,} of {TPM:,} ({res['utilisation_tpm']:.1%}); "
          f"429s at the fake: {res['fake_429s']}; measured {res['measured_s']} s")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
