"""Operational figures for `GET /v1/metrics` and `GET /metrics`, read from PostgreSQL.

`collect()` returns one plain dict; the service renders it as JSON or as
Prometheus text. `buckets` stays an empty list until the rate limiter exists:
its figures (limit, used, utilisation, 429s per bucket) will be appended there.
"""

from __future__ import annotations

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
        lane = await conn.fetchrow(Q["batch_lane_stats"])
    return {
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
