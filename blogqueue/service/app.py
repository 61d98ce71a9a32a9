"""The Starlette app: route table, lifespan (pool, Redis client), access log, and `serve`.

`create_app(settings)` builds the app; its lifespan opens the PostgreSQL pool
with no connection up front (min_size 0), so the service starts and answers
503 while PostgreSQL is down and recovers by itself when it is back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import structlog
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blogqueue.app import App, load
from blogqueue.client import Client
from blogqueue.settings import Settings

from . import console, health, metrics, openapi, routes_ai_settings, routes_events, routes_jobs, routes_wix
from .errors import HANDLERS
from .httpmetrics import HttpMetrics, LatencyMiddleware

log = structlog.get_logger("blogqueue.service")

ROUTES = [
    Route("/v1/jobs", routes_jobs.create_jobs, methods=["POST"]),
    Route("/v1/jobs", routes_jobs.list_jobs, methods=["GET"]),
    Route("/v1/jobs/{job_id}", routes_jobs.get_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}/stop", routes_jobs.stop_job, methods=["POST"]),
    Route("/v1/batches/{batch_id}", routes_jobs.get_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/stop", routes_jobs.stop_batch, methods=["POST"]),
    Route("/v1/stop", routes_jobs.stop_tenant, methods=["POST"]),
    Route("/v1/credits", routes_jobs.credits, methods=["GET"]),
    Route("/v1/ai-settings", routes_ai_settings.get_ai_settings, methods=["GET"]),
    Route("/v1/ai-settings", routes_ai_settings.put_ai_settings, methods=["PUT"]),
    Route("/v1/metrics", metrics.metrics_json, methods=["GET"]),
    Route("/metrics", metrics.metrics_prometheus, methods=["GET"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
    *routes_wix.ROUTES,
    *routes_events.ROUTES,
    *console.ROUTES,
]


class AccessLog:
    """One log line per request: method, path, status, duration, tenant.

    Headers are never logged, so neither a token nor a provider key can reach
    the log; the tenant comes from the verified token (request state).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            log.info("request", method=scope["method"], path=scope["path"], status=status,
                     duration_ms=round((time.perf_counter() - started) * 1000, 2),
                     tenant=state.get("tenant"))


def create_app(settings: Settings, bq_app: App | None = None) -> Starlette:
    """`bq_app`: the blogqueue App jobs are validated against (default: BLOGQUEUE_APP's, else App())."""
    bq_app = bq_app if bq_app is not None else load(settings.app)
    bq_app.check(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # timeout: a connection attempt to a dead PostgreSQL fails fast into a 503.
        async with Client.open(settings, bq_app, min_size=0, timeout=5) as client:
            app.state.client = client
            # For the metrics' rate-limit buckets. Connections are made lazily, so the
            # service starts while Redis is down; the timeouts keep a dead Redis from
            # holding a metrics request.
            app.state.redis = aioredis.Redis.from_url(
                settings.redis_url, socket_timeout=settings.ready_timeout_seconds,
                socket_connect_timeout=settings.ready_timeout_seconds)
            try:
                yield
            finally:
                await app.state.redis.aclose()

    app = Starlette(routes=ROUTES, exception_handlers=HANDLERS, lifespan=lifespan)
    app.state.bq_app = bq_app
    app.state.http_metrics = HttpMetrics(app.routes)
    app.add_middleware(LatencyMiddleware, metrics=app.state.http_metrics)
    app.add_middleware(AccessLog)
    return app


def serve(settings: Settings, *, host: str, port: int, bq_app: App | None = None) -> None:
    import uvicorn

    # Open event streams (GET /v1/events) never finish by themselves: a stop waits this long
    # for them, then ends them (their clients resume with Last-Event-ID).
    config: dict[str, Any] = {"host": host, "port": port, "log_config": None, "access_log": False,
                              "proxy_headers": False, "server_header": False,
                              "timeout_graceful_shutdown": settings.shutdown_grace_seconds}
    uvicorn.run(create_app(settings, bq_app), **config)
