"""A webhook receiver that behaves like a careful real one.

It verifies `X-Blogqueue-Signature` against its secret (401 when wrong),
dedupes by `Idempotency-Key` (a redelivery is answered 200 and not counted
again), and can hold its answer: `hold_next(seconds)` records the next
delivery at once and answers only after `seconds`, so a test can kill the
worker after the side effect happened and before it learned so.

It answers every path (`url` itself or `url + "/hooks/blog"`), so the base's
`/_stats`-style control routes are not served here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .fakeserver import CallLog, FakeServer

METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]


class FakeWebhookReceiver(FakeServer):
    name = "fake-webhook"

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.calls = CallLog()  # also counts by route: `calls[("POST", "/hooks/blog")]`
        self.secret = secret
        self.deliveries: dict[str, Any] = {}  # Idempotency-Key -> first payload
        self.redeliveries = 0
        self.bad_signatures = 0
        self.received = threading.Event()
        self._hold: list[float] = []
        self._fail: list[int] = []

    def hold_next(self, seconds: float) -> None:
        with self.lock:
            self._hold.append(seconds)

    def fail_next(self, *statuses: int) -> None:
        """Answer the next deliveries with these statuses (without recording them)."""
        with self.lock:
            self._fail.extend(statuses)

    def routes(self) -> list[Route]:
        return [Route("/{rest:path}", self._deliver, methods=METHODS)]

    async def _deliver(self, request: Request) -> Response:
        req = await self.capture(request)
        status, body, delay = self._receive(req.body, req.headers)
        self.record(req.path, status, method=req.method)
        return await self.answer(status, body, delay=delay)

    def _receive(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], float]:
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get("x-blogqueue-signature", "")):
            with self.lock:
                self.bad_signatures += 1
            return 401, {"error": "bad signature"}, 0.0
        key = headers.get("idempotency-key")
        if not key:
            return 400, {"error": "Idempotency-Key is required"}, 0.0
        with self.lock:
            if self._fail:
                return self._fail.pop(0), {"error": "simulated"}, 0.0
            duplicate = key in self.deliveries
            if duplicate:
                self.redeliveries += 1
            else:
                self.deliveries[key] = json.loads(body) if body else None
            delay = self._hold.pop(0) if self._hold else 0.0
        self.received.set()
        return 200, {"received": key, "duplicate": duplicate}, delay
