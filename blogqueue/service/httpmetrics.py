"""HTTP request latency histograms by route, for `GET /metrics` (DESIGN §12).

A pure ASGI middleware times each request from its arrival to the start of its
response (status and headers sent): that is what a caller waits for, and it
keeps a Server-Sent Events stream, which stays open for minutes, from reading
as a slow request. Requests are labelled by the route's path template
(`/v1/jobs/{job_id}`), never the raw path, so the label set stays as small as
the route table; a path no route matches is `unmatched`.

The histograms live in a registry of the app's own (not prometheus_client's
global one): every app a test creates starts from zero, and nothing else in the
process can add series to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"


class HttpMetrics:
    """The histogram and the map from a matched endpoint to its path template."""

    def __init__(self, routes: list[BaseRoute]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram("blogqueue_http_request_duration_seconds",
                                 "Time from a request's arrival to the start of its response, by route",
                                 ["method", "route", "status"], registry=self.registry)
        # Several routes may share a path (GET and POST /v1/jobs) but never an endpoint.
        self.templates: dict[Callable[..., Any], str] = {
            r.endpoint: r.path for r in routes if isinstance(r, Route)}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LatencyMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            # The router writes the matched endpoint into this same scope dict.
            route = self.metrics.templates.get(scope.get("endpoint"), UNMATCHED)  # type: ignore[arg-type]
            self.metrics.latency.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - started)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            observe(500)  # no response was started: the server answers 500
