"""`GET /v1/metrics` (JSON) and `GET /metrics` (Prometheus text), both admin-only.

Prometheus output is built per scrape: a fresh registry with one collector
that turns the library's metrics dict into metric families, so every scrape
shows PostgreSQL's current figures and nothing is kept between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from blogqueue import metrics

from .auth import authenticate_admin


async def _collect(request: Request) -> dict[str, Any]:
    client = request.app.state.client
    return await metrics.collect(client.pool, client.settings)


async def metrics_json(request: Request) -> JSONResponse:
    await authenticate_admin(request)
    return JSONResponse(await _collect(request))


async def metrics_prometheus(request: Request) -> Response:
    await authenticate_admin(request)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(await _collect(request)))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


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

        yield GaugeMetricFamily("blogqueue_dispatcher_lag_seconds",
                                "Age of the oldest ready job not yet dispatched", value=d["dispatcher"]["lag_s"])
        yield GaugeMetricFamily("blogqueue_ready_jobs", "Jobs ready to dispatch", value=d["dispatcher"]["ready"])

        labels = ["worker", "hostname"]
        fams = {
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
        # Rate-limit buckets (DESIGN §7) render here once the limiter fills d["buckets"].
