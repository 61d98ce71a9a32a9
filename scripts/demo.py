"""`make demo`: the main job, end to end, through the HTTP API.

Starts the service and two workers against a database of its own
(`blogqueue_demo` on the configured server, reset at start), enqueues a skewed
multi-tenant load (one store with DEMO_JOBS posts, thirty stores with 20, a
burst of priority posts), shows live progress, prints a summary with per-tenant
first-start and finish times and Jain's fairness index, and stops everything it
started. Runs on the offline provider unless BLOGQUEUE_DEFAULT_MODEL names a
real one with its key configured.

The offline provider runs under the shared rate limiter: the seeds' 450 RPM /
450,000 TPM, with time compressed DEMO_LIMIT_SCALE times (default 20: 9,000
RPM / 9,000,000 TPM) so the demo stays short, unless BLOGQUEUE_RATE_LIMITS
names `offline` itself (DEMO_LIMIT_SCALE=0: no limit). The summary prints the
limiter's utilisation while calls were waiting, and its 429s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from blogqueue import db, tokens
from blogqueue.settings import RateLimit, Settings
from testkit.databases import recreate_database

console = Console()
SMALL_STORES = 30
SMALL_JOBS = 20
URGENT_JOBS = 40
WORKERS = 2
SEED_RPM, SEED_TPM = 450, 450_000  # the seeds' OpenAI limits


@dataclass
class LimiterTrace:
    """The offline bucket's grant counter over time, and whether calls were waiting."""

    samples: list[tuple[float, int, int, float]] = field(default_factory=list)  # (t, granted, waiting, tokens)

    def add(self, metrics: dict[str, Any]) -> None:
        for b in metrics.get("buckets") or []:
            if b.get("provider") == "offline":
                self.samples.append((time.time(), b["granted"], b["waiting"], b["tokens_used_total"]))


@dataclass
class Tenant:
    name: str
    token: str
    jobs: int
    batches: list[str] = field(default_factory=list)
    enqueued_at: float = 0.0
    done: int = 0
    failed: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def reset_database(settings: Settings) -> Settings:
    """`blogqueue_demo` on the configured server, empty and migrated; kept afterwards to look at."""
    url = await recreate_database(settings, "blogqueue_demo")
    demo = settings.replace(database_url=url, queue_name="blogqueue-demo")
    redis = aioredis.Redis.from_url(demo.redis_url)
    try:  # the last run's rate-limit buckets would show in this run's figures
        async for key in redis.scan_iter(match=f"{demo.queue_name}:rl:*", count=1000):
            await redis.delete(key)
    finally:
        await redis.aclose()
    return demo


def start(settings: Settings, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGQUEUE_")} | settings.to_env()
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "blogqueue.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


async def wait_ready(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (await http.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("demo: the service did not become ready in 30 s (see .blogqueue/demo/*.log)")


async def enqueue(http: httpx.AsyncClient, tenant: Tenant, jobs: list[dict[str, Any]]) -> None:
    for i in range(0, len(jobs), 1000):
        r = await http.post("/v1/jobs", json={"jobs": jobs[i:i + 1000]},
                            headers={"Authorization": f"Bearer {tenant.token}"})
        if r.status_code != 202:
            raise SystemExit(f"demo: enqueue for {tenant.name} answered {r.status_code}: {r.text[:300]}")
        tenant.batches.append(r.json()["batch_id"])
    tenant.enqueued_at = tenant.enqueued_at or time.time()


def posts(tenant: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"source": {"type": "keyword", "keyword": f"{tenant} idea {i}"}, **extra} for i in range(n)]


async def poll(http: httpx.AsyncClient, admin: str, tenants: list[Tenant]) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {admin}"}
    for t in tenants:
        counts = [(await http.get(f"/v1/batches/{b}", headers=auth)).json()["counts"] for b in t.batches]
        t.done = sum(c["done"] for c in counts)
        t.failed = sum(c["failed"] + c["cancelled"] for c in counts)
    r = await http.get("/v1/metrics", headers=auth)
    return r.json() if r.status_code == 200 else {}


def progress_view(progress: Progress, tenants: list[Tenant], metrics: dict[str, Any], rate: float) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_row(progress)
    small = tenants[1:]
    finished = sum(1 for t in small if t.done + t.failed == t.jobs)
    buckets = metrics.get("buckets") or metrics.get("rate_limits") or []
    util = ", ".join(f"{b.get('provider', '?')} {100 * (b.get('utilisation') or 0):.0f}% of the last minute, "
                     f"{b.get('waiting', 0)} waiting, {b.get('rate_limited_429', 0)} x 429"
                     for b in buckets) or "none"
    running = metrics.get("counts", {}).get("running", "?")
    grid.add_row(f"[bold]{rate:7.1f} jobs/s[/]   running {running}   small stores finished "
                 f"{finished}/{len(small)}   rate-limit utilisation: {util}")
    lane = metrics.get("batch_lane") or {}
    if lane:
        grid.add_row(f"batch lane: {lane.get('parked_jobs', 0)} jobs parked (no worker slot held), "
                     f"{lane.get('open_batches', 0)} provider batches open, {lane.get('requests', 0)} answered")
    return grid


async def timings(http: httpx.AsyncClient, admin: str, tenant: Tenant) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for batch in tenant.batches:
        cursor = None
        while True:
            params = {"batch_id": batch, "limit": 200, **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/v1/jobs", params=params, headers={"Authorization": f"Bearer {admin}"})).json()
            jobs += page["jobs"]
            cursor = page["next_cursor"]
            if not cursor:
                break
    return jobs


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def jain_index(x: list[float]) -> float:
    """Jain's index (Σx)²/(nΣx²): 1 when every share is equal, 1/n when one takes all."""
    return sum(x) ** 2 / (len(x) * sum(v * v for v in x)) if any(x) else float("nan")


def jain(samples: list[dict[str, int]]) -> tuple[float, float]:
    """Jain's index of time-averaged in-flight shares, and the mean of per-sample indexes.

    Each tenant's share is its mean in-flight count over the samples where it was
    backlogged. The per-sample mean also counts the hand-over when small tenants
    arrive while the big one holds every slot: the dispatcher never preempts.
    """
    samples = [x for x in samples if sum(x.values())]
    if not samples:
        return float("nan"), float("nan")
    seen: dict[str, list[int]] = {}
    for x in samples:
        for tenant, v in x.items():
            seen.setdefault(tenant, []).append(v)
    averaged = jain_index([statistics.fmean(v) for v in seen.values()])
    return averaged, statistics.fmean(jain_index([float(v) for v in x.values()]) for x in samples)


def fairness_samples(per_tenant: dict[str, list[dict[str, Any]]]) -> list[dict[str, int]]:
    """In-flight counts every 50 ms of the tenants that were backlogged then.

    A tenant is backlogged at t while some of its jobs have not started yet: the
    dispatcher owes it a share. Samples with fewer than two such tenants say
    nothing about fairness and are skipped.
    """
    spans = {t: [(ts(j["started_at"]) or 1e18, ts(j["finished_at"]) or 1e18) for j in jobs]
             for t, jobs in per_tenant.items()}
    start = min(s for v in spans.values() for s, _ in v)
    end = max(s for v in spans.values() for s, _ in v if s < 1e18)
    samples = []
    t = start
    while t < end:
        waiting = {name: v for name, v in spans.items() if any(s > t for s, _ in v)}
        if len(waiting) >= 2:
            samples.append({name: sum(1 for s, f in v if s <= t < f) for name, v in waiting.items()})
        t += 0.05
    return samples


async def main(workdir: Path) -> None:
    base = Settings.from_env()
    n_big = int(os.environ.get("DEMO_JOBS", "2000"))
    model = base.default_model
    console.print(f"[bold]blogqueue demo[/]: 1 store with {n_big} posts, {SMALL_STORES} stores with "
                  f"{SMALL_JOBS}, {URGENT_JOBS} priority posts; model {model}; {WORKERS} workers")
    latency = base.offline_latency_ms or 150.0
    scale = float(os.environ.get("DEMO_LIMIT_SCALE", "20"))
    limits = dict(base.rate_limits)
    if scale > 0 and "offline" not in limits:
        limits["offline"] = RateLimit(rpm=int(SEED_RPM * scale), tpm=int(SEED_TPM * scale))
    if "offline" in limits:
        lim = limits["offline"]
        console.print(f"offline provider limited to {lim.rpm or '-'} RPM / {lim.tpm or '-'} TPM "
                      f"(the seeds' 450 RPM / 450,000 TPM x {scale:g}, time compressed to keep the demo short)")
    # The batch lane (docs/batch-lane.md): a store whose posts may wait, sent through the offline
    # provider's simulated Batch API (each batch takes DEMO_BATCH_SECONDS).
    n_batch = int(os.environ.get("DEMO_BATCH_JOBS", "200"))
    batch_s = float(os.environ.get("DEMO_BATCH_SECONDS", "5"))
    settings = (await reset_database(base)).replace(offline_latency_ms=latency, worker_concurrency=25,
                                                    max_tenant_backlog=max(base.max_tenant_backlog, n_big + 100),
                                                    rate_limits=limits, offline_batch_seconds=batch_s,
                                                    batch_window_seconds=2.0, batch_poll_seconds=1.0,
                                                    batch_poll_max_seconds=2.0)
    pool = await db.create_pool(settings, max_size=2)
    names = ["big-store", *(f"store-{i:02d}" for i in range(1, SMALL_STORES + 1))]
    tenants = [Tenant(n, (await tokens.create(pool, n))[0], n_big + URGENT_JOBS if n == "big-store" else SMALL_JOBS)
               for n in names]
    batch = Tenant("batch-store", (await tokens.create(pool, "batch-store"))[0], n_batch)
    admin = (await tokens.create(pool, "operator", is_admin=True))[0]
    await pool.close()
    if n_batch:
        console.print(f"batch-store: {n_batch} posts in the batch lane (offline batches take {batch_s:g} s)")

    port = free_port()
    procs = [start(settings, "serve", "--port", str(port), log=workdir / "service.log")]
    procs += [start(settings, "worker", log=workdir / f"worker-{i}.log") for i in range(WORKERS)]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            await wait_ready(http)
            t0 = time.time()
            await enqueue(http, tenants[0], posts("big-store", n_big))
            if n_batch:
                await enqueue(http, batch, posts("batch-store", n_batch, lane="batch"))
            await asyncio.gather(*(enqueue(http, t, posts(t.name, SMALL_JOBS)) for t in tenants[1:]))
            await enqueue(http, tenants[0], posts("big-store-urgent", URGENT_JOBS, priority=10))
            extra = [batch] if n_batch else []
            total = sum(t.jobs for t in tenants + extra)
            trace = LimiterTrace()
            await live(http, admin, tenants, total, t0, trace, extra)
            wall = time.time() - t0
            await summary(http, admin, tenants, wall)
            if n_batch:
                await batch_summary(http, admin, batch)
            await limiter_summary(http, admin, trace, settings)
    finally:
        for p in procs:
            with_signal(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with_signal(p, signal.SIGKILL)
        console.print("stopped the service and the workers")


def with_signal(p: subprocess.Popen[bytes], sig: int) -> None:
    if p.poll() is None:
        p.send_signal(sig)


async def live(http: httpx.AsyncClient, admin: str, tenants: list[Tenant], total: int, t0: float,
               trace: LimiterTrace, extra: list[Tenant]) -> None:
    progress = Progress(TextColumn("{task.description:>22}"), BarColumn(bar_width=50), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    overall = progress.add_task("all stores", total=total)
    big = progress.add_task(tenants[0].name, total=tenants[0].jobs)
    small = progress.add_task(f"{len(tenants) - 1} small stores", total=sum(t.jobs for t in tenants[1:]))
    lanes = [(t, progress.add_task(f"{t.name} (batch lane)", total=t.jobs)) for t in extra]
    history: list[tuple[float, int]] = []
    with Live(console=console, refresh_per_second=4) as view:
        while True:
            metrics = await poll(http, admin, tenants + extra)
            trace.add(metrics)
            finished = sum(t.done + t.failed for t in tenants + extra)
            for t, task in lanes:
                progress.update(task, completed=t.done + t.failed)
            now = time.time()
            history = [(t, n) for t, n in history if now - t <= 5] + [(now, finished)]
            rate = (history[-1][1] - history[0][1]) / max(1e-6, history[-1][0] - history[0][0])
            progress.update(overall, completed=finished)
            progress.update(big, completed=tenants[0].done + tenants[0].failed)
            progress.update(small, completed=sum(t.done + t.failed for t in tenants[1:]))
            view.update(progress_view(progress, tenants, metrics, rate))
            if finished >= total or now - t0 > 600:
                return
            await asyncio.sleep(0.5)


async def batch_summary(http: httpx.AsyncClient, admin: str, batch: Tenant) -> None:
    jobs = await timings(http, admin, batch)
    last = max(ts(j["finished_at"]) or 0 for j in jobs) - batch.enqueued_at if jobs else 0.0
    lane = (await http.get("/v1/metrics", headers={"Authorization": f"Bearer {admin}"})).json().get("batch_lane", {})
    console.print(f"[bold]batch lane: {batch.done} of {batch.jobs} posts done {last:.1f} s after their enqueue, "
                  f"{lane.get('requests', 0)} requests in provider batches ({lane.get('tokens', 0):,} tokens, "
                  f"about {lane.get('estimated_saving_tokens', 0):,} token-equivalents saved), "
                  f"{lane.get('fallbacks_to_now_lane', 0)} sent back to the now-lane[/]")


async def summary(http: httpx.AsyncClient, admin: str, tenants: list[Tenant], wall: float) -> None:
    per_tenant = {t.name: await timings(http, admin, t) for t in tenants}
    done = sum(t.done for t in tenants)
    failed = sum(t.failed for t in tenants)
    table = Table(title="per-tenant timing (seconds after that tenant's enqueue)")
    for col in ("tenant", "jobs", "first start", "finished"):
        table.add_column(col, justify="right")
    firsts, finishes = [], []
    for t in tenants:
        jobs = per_tenant[t.name]
        first = min(ts(j["started_at"]) or 1e18 for j in jobs) - t.enqueued_at
        last = max(ts(j["finished_at"]) or 0 for j in jobs) - t.enqueued_at
        if t is not tenants[0]:
            firsts.append(first)
            finishes.append(last)
        if t is tenants[0] or len(firsts) <= 5:
            table.add_row(t.name, str(len(jobs)), f"{first:.2f}", f"{last:.1f}")
    table.add_row("… small stores", f"{len(firsts)} × {SMALL_JOBS}",
                  f"median {statistics.median(firsts):.2f}, max {max(firsts):.2f}",
                  f"median {statistics.median(finishes):.1f}, max {max(finishes):.1f}")
    console.print(table)
    averaged, per_sample = jain(fairness_samples(per_tenant))
    console.print(f"[bold]jobs done {done}, failed or cancelled {failed}, wall {wall:.1f} s, "
                  f"{done / wall:.1f} jobs/s[/]")
    console.print(f"[bold]Jain's fairness index of in-flight shares while tenants were backlogged: "
                  f"{averaged:.3f} time-averaged, {per_sample:.3f} mean per 50 ms sample[/]")


async def limiter_summary(http: httpx.AsyncClient, admin: str, trace: LimiterTrace, settings: Settings) -> None:
    """The offline bucket: grants per second while calls were waiting against its RPM, and its 429s."""
    r = await http.get("/v1/metrics", headers={"Authorization": f"Bearer {admin}"})
    buckets = [b for b in (r.json().get("buckets") or []) if b.get("provider") == "offline"]
    if not buckets:
        console.print("[bold]rate limiter: the offline provider ran without a limit[/]")
        return
    b = buckets[0]
    waiting = [x for x in trace.samples if x[2] > 0]
    line = (f"[bold]rate limiter (offline bucket, {b['limit']['rpm'] or '-'} RPM / {b['limit']['tpm'] or '-'} TPM): "
            f"{b['granted']} calls granted, {b['waits']} had to wait, {b['rate_limited_429']} x 429")
    if len(waiting) >= 2 and b["limit"]["rpm"]:
        (t0, g0, _, k0), (t1, g1, _, k1) = waiting[0], waiting[-1]
        rate = (g1 - g0) / max(1e-6, t1 - t0)
        line += (f"; while calls were waiting ({t1 - t0:.0f} s): {rate:.1f} calls/s = "
                 f"{rate * 60 / b['limit']['rpm']:.1%} of RPM")
        if b["limit"]["tpm"]:
            line += f", {(k1 - k0) / max(1e-6, t1 - t0) * 60 / b['limit']['tpm']:.1%} of TPM (tokens used)"
    console.print(line + "[/]")


if __name__ == "__main__":
    logs = Path(".blogqueue/demo")
    logs.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(logs))
