"""A chaos run: real workers doing real jobs while the harness breaks things on purpose.

On a schedule it logs, the harness `kill -9`s workers (and starts replacements),
FLUSHALLs the Redis it was given (use one you started: never a shared one),
terminates every PostgreSQL backend of the database, and stops jobs, batches and
tenants. At the end `verify()` checks the promises of DESIGN §3:

- every job is done, failed with a reason, or cancelled by a stop the harness issued;
- no job finished twice (one `done` event per done job, none for the others);
- no stage's provider call was made again after its output was saved
  (the offline provider's call log, or the fake OpenAI server's, against `bq_job_stages`);
- no publish was delivered twice (the webhook receiver's deliveries by Idempotency-Key);
- the credit ledger balances;
- no secret (platform key, a user's stored key, webhook secret) appears in any worker log;
- no lease is left dangling and nothing is still in flight.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from blogqueue.client import Client
from blogqueue.db import Q
from blogqueue.settings import Settings

from .processes import WorkerProcess


@dataclass
class ChaosPlan:
    jobs: int = 1000
    tenants: int = 8
    workers: int = 3
    kills: int = 2
    flushes: int = 1
    backend_storms: int = 1
    stops: int = 3
    fault_gap_s: float = 2.0
    flaky_share: float = 0.05
    timeout_s: float = 240.0
    seed: int = 7
    model: str = "offline:template"
    own_key_tenant: bool = False  # chaos-1 brings its own key (needs SECRET_KEY)


@dataclass
class ChaosReport:
    schedule: list[str] = field(default_factory=list)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    unfinished_at_fault: list[int] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.checks.values())

    def table(self) -> str:
        lines = ["fault schedule:", *(f"  {s}" for s in self.schedule), "checks:"]
        lines += [f"  [{'PASS' if ok else 'FAIL'}] {name}: {why}" for name, (ok, why) in self.checks.items()]
        lines.append("jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
                     + f"; wall {self.wall_s:.1f}s")
        return "\n".join(lines)


@dataclass
class Stack:
    """What the run talks to besides PostgreSQL and Redis, when it uses them."""

    fake_openai: Any = None        # blogqueue.testing.fake_openai.FakeOpenAI
    receiver: Any = None           # blogqueue.testing.fake_webhook.FakeWebhookReceiver
    logs: list[Path] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)


OWN_KEY = "sk-chaos-own-key-7f3a9c2e5b1d"


class Chaos:
    def __init__(self, plan: ChaosPlan, settings: Settings, client: Client, pool: asyncpg.Pool,
                 spawn: Callable[[], WorkerProcess], stack: Stack | None = None) -> None:
        self.plan = plan
        self.settings = settings
        self.client = client
        self.pool = pool
        self.spawn = spawn
        self.stack = stack or Stack()
        self.rng = random.Random(plan.seed)
        self.report = ChaosReport()
        self.workers: list[WorkerProcess] = []
        self.stopped_jobs: set[str] = set()
        self.stopped_batches: set[str] = set()
        self.stopped_tenants: set[str] = set()
        self.batches: list[tuple[str, str]] = []
        self._t0 = time.monotonic()

    def log(self, what: str) -> None:
        left = f" ({self.report.unfinished_at_fault[-1]} jobs unfinished)" if self.report.unfinished_at_fault else ""
        self.report.schedule.append(f"t={time.monotonic() - self._t0:6.1f}s {what}{left}")

    async def _unfinished(self) -> int:
        for _ in range(5):  # the harness's own connections die in a backend storm too
            try:
                return await self.pool.fetchval(
                    "SELECT count(*) FROM bq_jobs WHERE status NOT IN ('done', 'failed', 'cancelled')")
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError):
                await asyncio.sleep(0.2)
        raise RuntimeError("the database did not come back")

    async def run(self) -> ChaosReport:
        self._t0 = time.monotonic()
        self.workers = [self.spawn() for _ in range(self.plan.workers)]
        await self._enqueue()
        faults = (["kill"] * self.plan.kills + ["flush"] * self.plan.flushes
                  + ["storm"] * self.plan.backend_storms + ["stop"] * self.plan.stops)
        self.rng.shuffle(faults)
        for fault in faults:
            await asyncio.sleep(self.plan.fault_gap_s * self.rng.uniform(0.5, 1.5))
            self.report.unfinished_at_fault.append(await self._unfinished())
            await getattr(self, f"_{fault}")()
        await self._drain()
        self.report.wall_s = time.monotonic() - self._t0
        await self.verify()
        return self.report

    async def _enqueue(self) -> None:
        """Skewed sizes: tenant i gets a share proportional to 1/(i+1)."""
        weights = [1 / (i + 1) for i in range(self.plan.tenants)]
        sizes = [max(1, int(self.plan.jobs * w / sum(weights))) for w in weights]
        sizes[0] += self.plan.jobs - sum(sizes)
        offline = self.plan.model.startswith("offline:")
        for t, size in enumerate(sizes):
            tenant = f"chaos-{t}"
            user = "owner" if self.plan.own_key_tenant and t == 1 else None
            if user:
                await self.client.put_ai_settings(tenant, user, {"keys": {"openai": OWN_KEY}})
            if self.settings.credits_enabled:
                app = self.client.app
                most = max(app.credit_cost(k, self.settings) for k in app.kinds)
                await self.client.grant_credits(tenant, size * most)
            for start in range(0, size, 500):
                jobs = []
                for i in range(start, min(size, start + 500)):
                    flaky = offline and self.rng.random() < self.plan.flaky_share
                    jobs.append({"source": {"type": "keyword", "keyword": f"{tenant} topic {i}"},
                                 "model": "offline:flaky-1" if flaky else self.plan.model,
                                 "priority": self.rng.choice((0, 0, 0, 5))})
                out = await self.client.enqueue(tenant, jobs, user_id=user)
                self.batches.append((tenant, out.batch_id))
        self.log(f"enqueued {self.plan.jobs} jobs for {self.plan.tenants} tenants, sizes {sizes}")

    async def _kill(self) -> None:
        alive = [w for w in self.workers if w.alive()]
        if not alive:
            return
        victim = self.rng.choice(alive)
        victim.kill()
        self.workers.append(self.spawn())
        self.log(f"kill -9 worker pid {victim.pid}, started a replacement")

    async def _flush(self) -> None:
        r = aioredis.from_url(self.settings.redis_url)
        try:
            await r.flushall()
        finally:
            await r.aclose()
        self.log("FLUSHALL on the run's Redis")

    async def _storm(self) -> None:
        n = await self.pool.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()) t")
        self.log(f"pg_terminate_backend on {n} backends")

    async def _stop(self) -> None:
        choice = self.rng.choice(("job", "batch", "tenant"))
        if choice == "tenant":
            tenant = f"chaos-{self.rng.randrange(1, self.plan.tenants)}"
            out = await self.client.stop_tenant(tenant)
            self.stopped_tenants.add(tenant)
        elif choice == "batch":
            tenant, batch = self.rng.choice(self.batches)
            out = await self.client.stop_batch(batch, tenant)
            self.stopped_batches.add(batch)
        else:
            row = await self.pool.fetchrow("SELECT id, tenant_id FROM bq_jobs WHERE status IN "
                                           "('running', 'queued', 'dispatched') ORDER BY random() LIMIT 1")
            if row is None:
                return
            out = (await self.client.stop_job(str(row["id"]), row["tenant_id"])).model_copy(update={"job": None})
            self.stopped_jobs.add(str(row["id"]))
        self.log(f"stop {choice}: {out}")

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.plan.timeout_s
        while time.monotonic() < deadline:
            if await self._unfinished() == 0:
                return
            if not any(w.alive() for w in self.workers):
                self.workers.append(self.spawn())
            await asyncio.sleep(0.25)
        self.log("drain timed out")

    async def verify(self) -> None:
        checks = self.report.checks
        rows = await self.pool.fetch("SELECT id, tenant_id, batch_id, status, last_error, lease_until, attempt "
                                     "FROM bq_jobs")
        self.report.counts = dict(Counter(r["status"] for r in rows))
        unexplained = []
        for r in rows:
            jid = str(r["id"])
            if r["status"] == "done" or (r["status"] == "failed" and r["last_error"]):
                continue
            if r["status"] == "cancelled" and (jid in self.stopped_jobs or str(r["batch_id"]) in self.stopped_batches
                                               or r["tenant_id"] in self.stopped_tenants):
                continue
            unexplained.append(f"{jid}:{r['status']}")
        checks["every job accounted for"] = (not unexplained, f"{len(unexplained)} unexplained {unexplained[:5]}")

        done_events = Counter(str(r["job_id"]) for r in await self.pool.fetch(
            "SELECT job_id FROM bq_job_events WHERE event = 'done'"))
        done_ids = {str(r["id"]) for r in rows if r["status"] == "done"}
        twice = [j for j, n in done_events.items() if n > 1]
        stray = [j for j in done_events if j not in done_ids]
        checks["no job finished twice"] = (not twice and not stray and set(done_events) == done_ids,
                                           f"{len(twice)} twice, {len(stray)} done events on unfinished jobs")

        stage_rows = await self.pool.fetch("SELECT s.job_id, s.stage, s.attempt, s.created_at, j.tenant_id, "
                                           "j.spec->'source'->>'keyword' AS keyword "
                                           "FROM bq_job_stages s JOIN bq_jobs j ON j.id = s.job_id")
        saved = {(str(r["job_id"]), r["stage"]): r["attempt"] for r in stage_rows}
        repaid = []
        calls = _read_call_log(self.settings.offline_call_log)
        per_stage: dict[tuple[str, str], list[int]] = defaultdict(list)
        for c in calls:
            per_stage[(c["job"], c["stage"])].append(c["attempt"])
        for key, attempts in per_stage.items():
            if key in saved and any(a > saved[key] for a in attempts):
                repaid.append(key)
        n_calls = len(calls)
        if self.stack.fake_openai is not None:
            self.log(f"the fake OpenAI answered, by status: {self.stack.fake_openai.stats()['by_status']}")
            fake_calls = list(self.stack.fake_openai.calls)
            n_calls += len(fake_calls)
            repaid += _repaid_at_fake(fake_calls, stage_rows)
        checks["no saved stage paid again"] = (not repaid, f"{n_calls} provider calls, {len(repaid)} repaid")

        if self.stack.receiver is not None:
            r = self.stack.receiver
            delivered = set(r.deliveries)
            published = {str(x["job_id"]) for x in stage_rows if x["stage"] == "publish"}
            missing = sorted(published - delivered)
            checks["no publish delivered twice"] = (
                not missing and r.bad_signatures == 0,
                f"{len(delivered)} unique deliveries for {len(published)} saved publish stages, "
                f"{r.redeliveries} redelivered requests deduplicated by Idempotency-Key, "
                f"{r.bad_signatures} bad signatures, {len(missing)} saved without delivery")

        if self.settings.credits_enabled:
            problems = [dict(x) for x in await self.pool.fetch(Q["credit_violations"])]
            checks["ledger balances"] = (not problems, f"{len(problems)} violations {problems[:3]}")

        if self.stack.secrets:
            leaks = [(log.name, i) for log in self.stack.logs if log.exists()
                     for i, secret in enumerate(self.stack.secrets) if secret in log.read_text(errors="replace")]
            events = await self.pool.fetchval("SELECT string_agg(coalesce(detail::text, '') || "
                                              "coalesce(j.last_error, ''), '') FROM bq_job_events e "
                                              "JOIN bq_jobs j ON j.id = e.job_id") or ""
            leaks += [("events", i) for i, secret in enumerate(self.stack.secrets) if secret in events]
            checks["no secret in logs or events"] = (
                not leaks, f"{len(self.stack.logs)} logs and every event grepped for {len(self.stack.secrets)} "
                           f"secrets: {len(leaks)} found")

        dangling = await self.pool.fetchval(
            "SELECT count(*) FROM bq_jobs WHERE lease_until IS NOT NULL OR status IN ('dispatched', 'running')")
        checks["no dangling lease"] = (dangling == 0, f"{dangling} jobs still leased or in flight")


def _repaid_at_fake(calls: list[dict[str, Any]], stage_rows: list[Any]) -> list[tuple[str, str]]:
    """Admitted fake-provider calls for a stage whose output had already been saved."""
    saved_at = {}
    for r in stage_rows:
        if r["keyword"]:
            saved_at[(r["keyword"], r["stage"])] = (r["created_at"].timestamp(), str(r["job_id"]))
    repaid = []
    for c in calls:
        stage = "content" if c["path"].endswith("/chat/completions") else "image"
        hit = saved_at.get((c.get("subject", ""), stage))
        # The fake records a call when it answers; a call answered after the checkpoint was
        # written was started after it too, since the checkpoint needs that answer.
        if hit and c["status"] == 200 and c["at"] > hit[0] + 0.001:
            repaid.append((hit[1], stage))
    return repaid


def _read_call_log(path: str | None) -> list[dict[str, Any]]:
    if not path or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
