"""`GET /v1/metrics` (JSON, admin) and `GET /metrics` (Prometheus text, admin or metrics-only token).

Prometheus output is built per scrape: a fresh registry with one collector
that turns the library's metrics dict into metric families, so every scrape
shows PostgreSQL's current figures and nothing is kept between scrapes.
Rate-limit buckets come from Redis (`ratelimit.bucket_stats`); without Redis
they are left out and `redis_reachable` / `blogqueue_redis_up` say so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from blogqueue import ratelimit
from blogqueue.settings import Settings

from .auth import authenticate_admin, authenticate_scraper

log = structlog.get_logger("blogqueue.service")


async def _collect(request: Request) -> dict[str, Any]:
    client = request.app.state.client
    data = await client.metrics()
    data["buckets"], data["redis_reachable"] = await _buckets(request.app.state.redis, client.settings)
    return data


async def _buckets(redis: aioredis.Redis, settings: Settings) -> tuple[list[dict[str, Any]], bool]:
    """The rate-limit buckets from Redis; an empty list and False while Redis does not answer.

    The metrics are most wanted while something is broken, so a lost Redis must
    not take PostgreSQL's figures down with it. The client's socket timeouts
    bound each command; the overall bound covers a queue with many buckets.
    """
    try:
        return await asyncio.wait_for(ratelimit.bucket_stats(redis, settings),
                                      timeout=4 * settings.ready_timeout_seconds), True
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("redis unavailable for metrics", error=type(exc).__name__)
        return [], False


async def metrics_json(request: Request) -> JSONResponse:
    await authenticate_admin(request)
    return JSONResponse(await _collect(request))


async def metrics_prometheus(request: Request) -> Response:
    await authenticate_scraper(request)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(await _collect(request)))
    body = generate_latest(registry) + request.app.state.http_metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class SnapshotCollector(Collector):
    """One scrape's figures as Prometheus metric families."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def collect(self) -> Iterator[Metric]:
        d = self.data
        jobs = GaugeMetricFamily("blogqueue_jobs", "Jobs by public status", labels=["status"])
        for status, n in d["counts"].items():
            jobs.add_metric([status], n)
        yield jobs

        backlog = GaugeMetricFamily("blogqueue_tenant_backlog_jobs",
                                    "Unfinished jobs of the tenants with the largest backlog", labels=["tenant"])
        inflight = GaugeMetricFamily("blogqueue_tenant_in_flight_jobs",
                                     "Dispatched or running jobs of those tenants", labels=["tenant"])
        for row in d["backlog_by_tenant"]:
            backlog.add_metric([row["tenant_id"]], row["backlog"])
            inflight.add_metric([row["tenant_id"]], row["in_flight"])
        yield backlog
        yield inflight

        tp = d["throughput"]
        finished = GaugeMetricFamily("blogqueue_finished_jobs", "Jobs finished within the window",
                                     labels=["window"])
        rate = GaugeMetricFamily("blogqueue_throughput_jobs_per_second",
                                 "Finished jobs per second over the window", labels=["window"])
        for window, seconds in (("1m", 60), ("5m", 300)):
            finished.add_metric([window], tp[f"finished_{window}"])
            rate.add_metric([window], tp[f"finished_{window}"] / seconds)
        yield finished
        yield rate
        by_outcome = GaugeMetricFamily(
            "blogqueue_jobs_finished_5m", "Jobs finished in the last 5 minutes by kind and outcome "
            "(done, failed, cancelled)", labels=["kind", "outcome"])
        # Every outcome of every kind seen, zeros included: a ratio of two series needs both.
        seen = {(r["kind"], r["outcome"]): r["n"] for r in d["finished_5m"]}
        for kind in sorted({k for k, _ in seen}):
            for outcome in ("done", "failed", "cancelled"):
                by_outcome.add_metric([kind, outcome], seen.get((kind, outcome), 0))
        yield by_outcome

        yield GaugeMetricFamily("blogqueue_dispatcher_lag_seconds",
                                "Age of the oldest ready job not yet dispatched", value=d["dispatcher"]["lag_s"])
        yield GaugeMetricFamily("blogqueue_ready_jobs", "Jobs ready to dispatch", value=d["dispatcher"]["ready"])

        labels = ["worker", "hostname"]
        fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "heartbeat": GaugeMetricFamily("blogqueue_worker_heartbeat_age_seconds",
                                           "Seconds since the worker's last heartbeat", labels=labels),
            "in_flight": GaugeMetricFamily("blogqueue_worker_in_flight_jobs", "Jobs running in the worker",
                                           labels=labels),
            "leader": GaugeMetricFamily("blogqueue_worker_is_leader", "1 for the dispatcher leader",
                                        labels=labels),
            "done": CounterMetricFamily("blogqueue_worker_jobs_done", "Jobs the worker finished", labels=labels),
            "failed": CounterMetricFamily("blogqueue_worker_jobs_failed", "Jobs the worker failed",
                                          labels=labels),
        }
        for w in d["workers"]:
            key = [w["id"], w["hostname"]]
            fams["heartbeat"].add_metric(key, w["heartbeat_age_s"])
            fams["in_flight"].add_metric(key, w["in_flight"])
            fams["leader"].add_metric(key, 1 if w["is_leader"] else 0)
            fams["done"].add_metric(key, w["jobs_done"])
            fams["failed"].add_metric(key, w["jobs_failed"])
        yield from fams.values()
        yield GaugeMetricFamily("blogqueue_workers", "Live workers", value=len(d["workers"]))

        db = d["database_pool"]
        pool = GaugeMetricFamily("blogqueue_db_pool_connections", "Service database pool", labels=["state"])
        for state in ("size", "idle", "max"):
            pool.add_metric([state], db[state])
        yield pool
        if db["waiting"] is not None:
            yield GaugeMetricFamily("blogqueue_db_pool_waiting", "Requests waiting for a pool connection",
                                    value=db["waiting"])
        lane = d["batch_lane"]
        yield GaugeMetricFamily("blogqueue_batch_parked_jobs", "Batch-lane jobs waiting for a provider batch",
                                value=lane["parked_jobs"])
        yield GaugeMetricFamily("blogqueue_batch_open_batches", "Provider batches not yet ended",
                                value=lane["open_batches"])
        yield CounterMetricFamily("blogqueue_batch_requests", "Batch-lane requests answered", value=lane["requests"])
        yield CounterMetricFamily("blogqueue_batch_tokens", "Tokens of batch-lane answers", value=lane["tokens"])
        yield CounterMetricFamily("blogqueue_batch_fallbacks", "Batch requests sent back to the now-lane",
                                  value=lane["fallbacks_to_now_lane"])
        yield CounterMetricFamily("blogqueue_batch_estimated_saving_tokens",
                                  "Batch-lane tokens x (1 - BATCH_PRICE_RATIO)", value=lane["estimated_saving_tokens"])
        yield from bucket_families(d["buckets"], d["redis_reachable"])


def bucket_families(buckets: list[dict[str, Any]], reachable: bool) -> Iterator[Metric]:
    """Rate-limit buckets (DESIGN §7), labelled by provider and key hash prefix (never the key)."""
    yield GaugeMetricFamily("blogqueue_redis_up", "1 if Redis answered this scrape's bucket query",
                            value=1 if reachable else 0)
    labels = ["provider", "key_hash"]

    def g(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"blogqueue_ratelimit_{name}", doc, labels=labels)

    def c(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(f"blogqueue_ratelimit_{name}", doc, labels=labels)

    fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "rpm": g("limit_requests_per_minute", "Configured requests per minute (absent: no limit)"),
        "tpm": g("limit_tokens_per_minute", "Configured tokens per minute (absent: no limit)"),
        "itpm": g("limit_input_tokens_per_minute", "Configured input tokens per minute (Anthropic)"),
        "otpm": g("limit_output_tokens_per_minute", "Configured output tokens per minute (Anthropic)"),
        "requests": g("used_requests", "Requests in the last 60 s"),
        "tokens": g("used_tokens", "Tokens in the last 60 s (reservations of calls in flight included)"),
        "utilisation": g("utilisation", "The largest used/limit over the limited dimensions, last 60 s"),
        "waiting": g("waiting_calls", "Calls waiting in the bucket's line now"),
        "paused": g("paused", "1 while a 429 pause lasts"),
        "waits": c("waits", "Calls that had to wait for room"),
        "granted": c("granted", "Calls admitted"),
        "n429": c("rate_limited", "429 answers from the provider"),
        "used_total": c("tokens_used", "Tokens the provider reported as used"),
    }
    for b in buckets:
        key = [b["provider"], b["key_hash"]]
        if b["limit"]["rpm"] is not None:
            fams["rpm"].add_metric(key, b["limit"]["rpm"])
        for d in ("tpm", "itpm", "otpm"):
            if b["limit"].get(d) is not None:
                fams[d].add_metric(key, b["limit"][d])
        if b["utilisation"] is not None:
            fams["utilisation"].add_metric(key, b["utilisation"])
        fams["requests"].add_metric(key, b["used"]["requests"])
        fams["tokens"].add_metric(key, b["used"]["tokens"])
        fams["waiting"].add_metric(key, b["waiting"])
        fams["paused"].add_metric(key, 1 if b["paused_until"] is not None else 0)
        fams["waits"].add_metric(key, b["waits"])
        fams["granted"].add_metric(key, b["granted"])
        fams["n429"].add_metric(key, b["rate_limited_429"])
        fams["used_total"].add_metric(key, b["tokens_used_total"])
    yield from fams.values()
