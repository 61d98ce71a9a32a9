"""Operational figures for `GET /v1/metrics` and `GET /metrics`, read from PostgreSQL.

`collect()` returns one plain dict; the service renders it as JSON or as
Prometheus text. `buckets` is filled by the service from Redis. `console()`
adds what the operator console shows (DESIGN §12): per-tenant figures, recent
failures and batches, the dispatcher leader, jobs finished by kind and outcome.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from .db import Q
from .jobs import PUBLIC_STATUSES
from .settings import Settings


def pool_stats(pool: asyncpg.Pool) -> dict[str, Any]:
    """Size, idle and waiting of an asyncpg pool.

    asyncpg has no public count of callers waiting in `acquire()`; `waiting` is
    read from the pool's internal queue of getters and is None when that
    private detail is not there (another asyncpg version).
    """
    queue = getattr(pool, "_queue", None)
    getters = getattr(queue, "_getters", None)
    waiting = sum(1 for f in getters if not f.done()) if getters is not None else None
    return {"size": pool.get_size(), "idle": pool.get_idle_size(), "max": pool.get_max_size(),
            "waiting": waiting}


async def collect(pool: asyncpg.Pool, settings: Settings, *, top_n: int | None = None) -> dict[str, Any]:
    top = top_n if top_n is not None else settings.metrics_top_tenants
    async with pool.acquire() as conn:
        counts = {r["status"]: r["n"] for r in await conn.fetch(Q["metrics_status_counts"])}
        backlog = await conn.fetch(Q["metrics_backlog_by_tenant"], top)
        tp = await conn.fetchrow(Q["metrics_throughput"])
        lag = await conn.fetchrow(Q["metrics_dispatcher_lag"])
        workers = await conn.fetch(Q["metrics_workers"], settings.queue_name)
        operator = await console(conn, settings, top)
        lane = await conn.fetchrow(Q["batch_lane_stats"])
    return {
        **operator,
        "counts": {s: counts.get(s, 0) for s in PUBLIC_STATUSES},
        "backlog_by_tenant": [{"tenant_id": r["tenant_id"], "backlog": r["backlog"],
                               "in_flight": r["in_flight"]} for r in backlog],
        "throughput": {
            "finished_1m": tp["finished_1m"], "finished_5m": tp["finished_5m"],
            "per_second_1m": round(tp["finished_1m"] / 60, 3),
            "per_second_5m": round(tp["finished_5m"] / 300, 3),
            "done_5m": tp["done_5m"], "failed_5m": tp["failed_5m"],
        },
        "dispatcher": {"lag_s": round(lag["lag_s"], 3), "ready": lag["ready"]},
        "workers": [{
            "id": w["id"], "hostname": w["hostname"], "pid": w["pid"], "concurrency": w["concurrency"],
            "in_flight": w["in_flight"], "jobs_done": w["jobs_done"], "jobs_failed": w["jobs_failed"],
            "is_leader": w["is_leader"], "heartbeat_age_s": round(max(0.0, w["heartbeat_age_s"]), 3),
        } for w in workers],
        "database_pool": pool_stats(pool),
        # The batch lane (docs/batch-lane.md). Now-lane calls are counted by the limiter's buckets.
        "batch_lane": {
            "parked_jobs": lane["parked_jobs"], "open_batches": lane["open_batches"],
            "requests": lane["batch_requests_done"], "tokens": lane["batch_tokens"],
            "fallbacks_to_now_lane": lane["batch_fallbacks"],
            # Tokens that would have cost the synchronous price, times the discount: a token-equivalent.
            "estimated_saving_tokens": round(lane["batch_tokens"] * (1 - settings.batch_price_ratio)),
        },
        # The service fills this from Redis (ratelimit.bucket_stats); PostgreSQL has no bucket figures.
        "buckets": [],
    }


# How many recent failures and batches the console lists: a screenful, not a history.
RECENT_FAILURES = 20
RECENT_BATCHES = 10


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def console(conn: asyncpg.Connection, settings: Settings, top: int) -> dict[str, Any]:
    """The operator console's figures (`tenants`, `recent_failures`, `recent_batches`, `leader`,
    `finished_5m`), each read through an index (see the console_* queries)."""
    tenants = await conn.fetch(Q["console_tenants"], top)
    failures = await conn.fetch(Q["console_recent_failures"], RECENT_FAILURES)
    batches = await conn.fetch(Q["console_recent_batches"], RECENT_BATCHES)
    leader = await conn.fetchrow(Q["console_leader"], settings.queue_name)
    finished = await conn.fetch(Q["metrics_finished_by_outcome"])
    return {
        "tenants": [{
            "tenant_id": r["tenant_id"], "backlog": r["backlog"], "in_flight": r["in_flight"],
            "done_5m": r["done_5m"], "failed_5m": r["failed_5m"], "cancelled_5m": r["cancelled_5m"],
            "first_start_wait_s": None if r["first_start_wait_s"] is None else round(r["first_start_wait_s"], 3),
            "oldest_waiting_s": round(max(0.0, r["oldest_waiting_s"]), 3),
        } for r in tenants],
        "recent_failures": [{
            "job_id": str(r["id"]), "tenant_id": r["tenant_id"], "batch_id": str(r["batch_id"]),
            "kind": r["kind"], "stage": r["stage"], "attempt": r["attempt"], "error_code": r["error_code"],
            "last_error": r["last_error"], "finished_at": _iso(r["finished_at"]),
        } for r in failures],
        "recent_batches": [{
            "batch_id": str(r["id"]), "tenant_id": r["tenant_id"], "job_count": r["job_count"],
            "created_at": _iso(r["created_at"]), "counts": _counts(r["counts"]),
        } for r in batches],
        "leader": None if leader is None else {
            "worker_id": leader["holder"], "epoch": leader["epoch"],
            "lease_left_s": round(leader["lease_left_s"], 3)},
        "finished_5m": [{"kind": r["kind"], "outcome": r["outcome"], "n": r["n"]} for r in finished],
    }


def _counts(raw: Any) -> dict[str, int]:
    data = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return {s: int(data.get(s, 0)) for s in PUBLIC_STATUSES}
