"""`GET /v1/events` (Server-Sent Events of job changes) and `POST /v1/batches/{id}/retry` (DESIGN §12).

The stream is the library's (`Client.event_feed`, blogqueue/events.py): one poller per
process fans events out to every open stream. A tenant token reads its own tenant's events;
`?tenant=` naming another tenant is 403 (not silently ignored, so a console pointed at the
wrong tenant says so). An admin token reads every tenant's, or one with `?tenant=`.
`?batch_id=` narrows to one batch (404 if it is not the caller's). Resume point: the
`Last-Event-ID` header, or `?last_event_id=` for clients that cannot set headers; without
either the stream starts with the next event.

A stream that falls `EVENTS_BUFFER` events behind (its client reads too slowly) is ended by
the server: the client reconnects with the id of the last event it got and misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from blogqueue.errors import InvalidInput
from blogqueue.events import Feed, StreamLagged, sse_comment
from blogqueue.models import Retried, StreamEvent

from .auth import authenticate
from .errors import Forbidden
from .routes_jobs import _answer, _client

log = structlog.get_logger("blogqueue.service")

EVENT_PARAMS = {"batch_id", "tenant", "last_event_id"}
FINISH_TIMEOUT_S = 1.0  # the closing chunk to a client that stopped reading is not waited for longer


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidInput("Last-Event-ID must be an event id (a non-negative integer)",
                           details={"field": "last_event_id"})
    return value


async def events(request: Request) -> Response | EventStream:
    principal = await authenticate(request)
    params = request.query_params
    unknown = sorted(set(params) - EVENT_PARAMS)
    if unknown:
        raise InvalidInput(f"{unknown[0]} is not a known query parameter", details={"field": unknown[0]})
    tenant = params.get("tenant") or None
    if principal.is_admin:
        scope = tenant
    elif tenant is not None and tenant != principal.tenant_id:
        raise Forbidden("a tenant token reads its own tenant's events only")
    else:
        scope = principal.tenant_id
    client = _client(request)
    feed = await client.event_feed(scope, batch_id=params.get("batch_id") or None, after=_last_event_id(request))
    return EventStream(feed, client.settings.events_heartbeat_seconds)


class EventStream:
    """The `text/event-stream` response: events as they come, `: ping` when there are none.

    It ends when the client goes away, or when the feed is cut off for falling behind: then
    at once, even while a write to the client is stuck, so a client that stopped reading
    holds no more than its feed's bounded queue and the socket's buffers.
    """

    def __init__(self, feed: Feed, heartbeat_s: float) -> None:
        self.feed = feed
        self.heartbeat_s = heartbeat_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            left = await self._run(receive, send)
        except asyncio.CancelledError:
            # The server is stopping and its shutdown grace is over: end the stream cleanly (the
            # client reconnects with Last-Event-ID) instead of a traceback per open stream.
            left = False
        if left:
            return  # the client left: nothing more to send
        # Ends the response; a client that stopped reading does not get to hold this up, and
        # the server then closes the connection without it.
        with contextlib.suppress(TimeoutError, OSError, asyncio.CancelledError):
            await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}),
                                   FINISH_TIMEOUT_S)

    async def _run(self, receive: Receive, send: Send) -> bool:
        """Streams until the client leaves (True), or the feed is cut off or fails (False)."""
        tasks: list[asyncio.Task[Any]] = []
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})  # nginx: pass events on as they come
            tasks = [asyncio.create_task(self._pump(send)), asyncio.create_task(self._until_disconnect(receive)),
                     asyncio.create_task(self.feed.cut_off.wait())]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.feed.close()
        if self.feed.lagged:
            log.info("event stream reader fell behind; disconnected", last_event_id=self.feed.last_id)
        return tasks[1] in done

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.body", "body": sse_comment("ping"), "more_body": True})
        with contextlib.suppress(StreamLagged):
            while True:
                item = await self.feed.get_delivered(timeout=self.heartbeat_s)
                body = item.sse if item is not None else sse_comment("ping")
                await send({"type": "http.response.body", "body": body, "more_body": True})

    @staticmethod
    async def _until_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


async def retry_batch(request: Request) -> Response:
    principal = await authenticate(request)
    out = await _client(request).retry_batch(request.path_params["batch_id"], principal.scope)
    return _answer(out, 202)


ROUTES = [
    Route("/v1/events", events, methods=["GET"]),
    Route("/v1/batches/{batch_id}/retry", retry_batch, methods=["POST"]),
]

MODELS: list[type[BaseModel]] = [StreamEvent, Retried]


def openapi_paths(op: Any, json_: Any, err: Any, ref: Any) -> dict[str, Any]:
    """The document's entries, built with service/openapi.py's helpers (`_op`, `_json`, `_err`, `_ref`)."""
    batch_id = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/v1/events": {"get": op(
            "Server-Sent Events of the caller's job changes: `id: <event id>`, `event: job`, `data: StreamEvent` "
            "(JSON); `: ping` comments every EVENTS_HEARTBEAT_SECONDS; resume with Last-Event-ID", {
                "200": {"description": "an endless text/event-stream; each event's data is a StreamEvent",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "403": err("a tenant token asked for another tenant"),
                "404": err("unknown, malformed or another tenant's batch_id"),
                "422": err("unknown query parameter, or a Last-Event-ID that is not an event id"),
            }, params=[
                {"name": "batch_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                {"name": "tenant", "in": "query", "schema": {"type": "string"},
                 "description": "admin: one tenant's events; a tenant token: its own tenant only"},
                {"name": "last_event_id", "in": "query", "schema": {"type": "integer", "minimum": 0},
                 "description": "resume after this event (for clients that cannot send the Last-Event-ID header)"},
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer", "minimum": 0}},
            ])},
        "/v1/batches/{batch_id}/retry": {"post": op(
            "Queue a batch's failed jobs again, each resuming at its first unsaved stage", {
                "202": json_(ref("Retried"), "the jobs queued again (none: retried 0)"),
                "402": err("not enough credits to reserve the retried jobs again"),
                "404": err("unknown or another tenant's batch"),
                "429": {**err("backlog full; see Retry-After"),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
            }, params=[batch_id])},
    }
