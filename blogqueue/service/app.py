"""The Starlette app: route table, lifespan (pool, Redis client), access log, and `serve`.

`create_app(settings)` builds the app; its lifespan opens the PostgreSQL pool
with no connection up front (min_size 0), so the service starts and answers
503 while PostgreSQL is down and recovers by itself when it is back.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
import uvicorn
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


def serve(settings: Settings, *, host: str, port: int, bq_app: App | None = None, workers: int = 1) -> None:
    """Run the service: one process, or `workers` processes sharing the port (SO_REUSEPORT).

    uvloop and httptools: the event loop and HTTP parser in C (docs/benchmarks.md, bench-http).
    With several workers the parent forks them after loading the app, so `--app` needs no
    import string; each has its own pool (BLOGQUEUE_DB_POOL_SIZE each) and token cache, and the
    kernel spreads connections over their sockets. The parent forwards SIGINT/SIGTERM and, if
    one worker dies, stops the others and exits non-zero (a supervisor restarts the set).
    """
    if workers <= 1:
        app = create_app(settings, bq_app)
        _freeze_startup_heap()
        uvicorn.Server(_config(app, settings, host, port)).run()
        return
    # Fail in the parent, before forking, when the address is taken or invalid.
    _reuseport_socket(host, port).close()
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: its own socket, loop, pool and cache
            code = 0
            try:
                server = uvicorn.Server(_config(create_app(settings, bq_app), settings, host, port))
                _freeze_startup_heap()
                server.run(sockets=[_reuseport_socket(host, port)])
            except BaseException:  # any failure: logged, and the parent sees a failure code
                log.exception("service worker failed")
                code = 1
            os._exit(code)
        children.append(pid)
    _supervise(children)


def _freeze_startup_heap() -> None:
    """Moves what startup made (modules, the provider SDKs, pydantic schemas: ~280,000 objects) out
    of the garbage collector's reach. A full collection walked all of them, 140-170 ms with the
    event loop stopped, a pause in the tail of every request in flight (docs/benchmarks.md,
    bench-http). Those objects live as long as the process."""
    gc.collect()
    gc.freeze()


def _config(app: ASGIApp, settings: Settings, host: str, port: int) -> uvicorn.Config:
    # Open event streams (GET /v1/events) never finish by themselves: a stop waits
    # SHUTDOWN_GRACE_SECONDS for them, then ends them (their clients resume with Last-Event-ID).
    return uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools", log_config=None,
                          timeout_graceful_shutdown=settings.shutdown_grace_seconds,
                          access_log=False, proxy_headers=False, server_header=False)


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _supervise(children: list[int]) -> None:
    """Wait for the workers; a signal is passed on to each, and one worker's death stops all."""
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True  # uvicorn re-raises the signal it stopped on: a worker then dies of it
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    failed = False
    live = set(children)
    while live:
        pid, status = os.wait()
        live.discard(pid)
        if os.waitstatus_to_exitcode(status) != 0 and not stopping:
            failed = True
            log.error("service worker exited; stopping the others", pid=pid)
            forward(signal.SIGTERM, None)
    if failed:
        raise SystemExit(1)
