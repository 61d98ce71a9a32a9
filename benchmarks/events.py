"""1,000 event-stream clients held open while jobs run (DESIGN §8, §12).

`blogqueue serve` runs as a real process with two real `blogqueue worker` processes (offline
provider, `--latency-ms` a call) on a database and a redis-server of this run's own. `--clients`
SSE clients (testkit/sse.py, raw sockets) follow `GET /v1/events`: all but `--admins` of them
with a tenant token, spread over `--tenants` tenants, the others with an admin token (every
event). A feeder enqueues `--rate` jobs/s across the tenants for `--seconds`.

Measured: the service's RSS (sampled every second; bound `--max-rss-mb`), the latency from an
event's `at` (its transaction's start, so an upper bound of commit-to-receipt) to its arrival
at a client, per delivery (p50/p95/p99/max; bound: p99 under `--max-p99-s`), the clients still
connected at the end, and correctness: after the load, every client's events are exactly the
job events table's rows of its tenant (all, for admins) after the first one it got, in order.
Prints a table, writes benchmarks/results/events.json, exits 1 if a bound or check fails.

    make bench-events                          # 1,000 clients, 60 s
    make bench-events BENCH_ARGS="--seconds 15 --clients 200"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
from datetime import datetime
from typing import Any

from _harness import Bench, bench_env, rss_kb, table, wait_for, write_result

from blogqueue import tokens
from testkit.sse import SSEClient


class Follower:
    """One client: its stream, what it received and when."""

    def __init__(self, tenant: str | None, stream: SSEClient) -> None:
        self.tenant = tenant
        self.stream = stream
        self.ids: list[int] = []
        self.latencies: list[float] = []
        self.ended = False

    async def run(self) -> None:
        while True:
            ev = await self.stream.next_event()
            if ev is None:
                self.ended = True
                return
            now = time.time()
            at = datetime.fromisoformat(ev.data["at"]).timestamp()
            assert ev.id is not None
            self.ids.append(ev.id)
            self.latencies.append(now - at)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def _feed(bench: Bench, tenants: list[str], rate: float, until: float) -> int:
    """Enqueues `rate` jobs/s, a few at a time, round robin over the tenants, until the deadline."""
    n = 0
    step = 0.25
    rng = random.Random(7)
    while time.monotonic() < until:
        started = time.monotonic()
        k = max(1, round(rate * step))
        tenant = tenants[n % len(tenants)]
        await bench.client.enqueue(tenant, [{"source": {"type": "keyword", "keyword": f"t{rng.random()}"}}
                                            for _ in range(k)])
        n += k
        await asyncio.sleep(max(0.0, step - (time.monotonic() - started)))
    return n


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--admins", type=int, default=10)
    p.add_argument("--tenants", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=20.0, help="jobs enqueued per second")
    p.add_argument("--latency-ms", type=float, default=20.0, help="offline provider latency per call")
    p.add_argument("--max-rss-mb", type=float, default=250.0)
    p.add_argument("--max-p99-s", type=float, default=1.0)
    args = p.parse_args()

    async with bench_env(offline_latency_ms=args.latency_ms) as bench:
        base = await bench.start_service()
        assert bench.service is not None
        await bench.start_workers(2)
        tenants = [f"shop-{i:02d}" for i in range(args.tenants)]
        tok = {t: (await tokens.create(bench.pool, t))[0] for t in tenants}
        admin, _ = await tokens.create(bench.pool, "ops", is_admin=True)
        rss_idle = rss_kb(bench.service.pid) or 0

        followers: list[Follower] = []
        t_connect = time.monotonic()
        for i in range(args.clients):
            tenant = None if i < args.admins else tenants[i % len(tenants)]
            stream = await SSEClient.open(base, "/v1/events", token=admin if tenant is None else tok[tenant])
            followers.append(Follower(tenant, stream))
        for f in followers:
            await f.stream.wait_ping(30)
        connect_s = time.monotonic() - t_connect
        rss_connected = rss_kb(bench.service.pid) or 0
        tasks = [asyncio.create_task(f.run()) for f in followers]

        samples: list[int] = []

        async def sample() -> None:
            while True:
                if (kb := rss_kb(bench.service.pid)) is not None:
                    samples.append(kb)
                await asyncio.sleep(1)

        sampler = asyncio.create_task(sample())
        t0 = time.monotonic()
        enqueued = await _feed(bench, tenants, args.rate, t0 + args.seconds)
        load_s = time.monotonic() - t0
        # Let the workers finish and the last events arrive, then compare with the table.
        await bench.wait_finished(enqueued, timeout=120)
        total = await bench.pool.fetchval("SELECT count(*) FROM bq_job_events")

        async def drained() -> bool:
            return all(f.ids and f.ids[-1] >= last[f.tenant] for f in followers if f.tenant in last)

        rows = await bench.pool.fetch("SELECT e.id, j.tenant_id FROM bq_job_events e JOIN bq_jobs j ON j.id = e.job_id "
                                      "ORDER BY e.id")
        by_tenant: dict[str | None, list[int]] = {None: [r["id"] for r in rows]}
        for r in rows:
            by_tenant.setdefault(r["tenant_id"], []).append(r["id"])
        last = {t: ids[-1] for t, ids in by_tenant.items() if ids}
        with contextlib.suppress(TimeoutError):
            await wait_for(drained, timeout=30, what="every client to get the last event of its tenant")
        sampler.cancel()
        for t in tasks:
            t.cancel()
        for f in followers:
            f.stream.close()

    wrong = 0
    for f in followers:
        want = by_tenant.get(f.tenant, [])
        if f.ids:
            want = [i for i in want if i >= f.ids[0]]
        if f.ids != want:
            wrong += 1
    lat = [x for f in followers for x in f.latencies]
    still = sum(1 for f in followers if not f.ended)
    rss_max = max(samples, default=0)
    p99 = _pct(lat, 99)
    ok = (rss_max / 1024 <= args.max_rss_mb and p99 is not None and p99 <= args.max_p99_s and wrong == 0
          and still == len(followers))
    rows_out: list[tuple[str, Any]] = [
        ("clients (admins)", f"{len(followers)} ({args.admins})"),
        ("tenants", args.tenants),
        ("connect all (s)", round(connect_s, 2)),
        ("load (s)", round(load_s, 1)),
        ("jobs enqueued", enqueued),
        ("events written", total),
        ("events delivered", len(lat)),
        ("deliveries/s", round(len(lat) / max(load_s, 1e-9))),
        ("latency p50 (ms)", round((_pct(lat, 50) or 0) * 1000, 1)),
        ("latency p95 (ms)", round((_pct(lat, 95) or 0) * 1000, 1)),
        ("latency p99 (ms)", round((p99 or 0) * 1000, 1)),
        ("latency max (ms)", round(max(lat, default=0) * 1000, 1)),
        ("service RSS idle (MB)", round(rss_idle / 1024, 1)),
        ("service RSS, clients connected (MB)", round(rss_connected / 1024, 1)),
        ("service RSS max under load (MB)", round(rss_max / 1024, 1)),
        ("RSS per client (kB)", round((rss_connected - rss_idle) / max(1, len(followers)), 1)),
        ("clients connected at the end", still),
        ("clients whose stream != the table", wrong),
        (f"bounds: RSS <= {args.max_rss_mb:g} MB, p99 <= {args.max_p99_s:g} s", "ok" if ok else "FAILED"),
    ]
    table("event stream: clients held open while jobs run", ["measure", "value"], rows_out)
    write_result("events", {
        "params": vars(args),
        "results": {
            "clients": len(followers), "connect_s": connect_s, "load_s": load_s, "jobs_enqueued": enqueued,
            "events_written": total, "deliveries": len(lat),
            "latency_s": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "p99": p99, "max": max(lat, default=None),
                          "mean": statistics.fmean(lat) if lat else None},
            "service_rss_mb": {"idle": rss_idle / 1024, "connected": rss_connected / 1024, "max": rss_max / 1024},
            "clients_connected_at_end": still, "clients_wrong": wrong, "ok": ok,
        },
    })
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
