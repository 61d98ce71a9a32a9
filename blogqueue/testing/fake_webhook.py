"""A webhook receiver that behaves like a careful real one.

It verifies `X-Blogqueue-Signature` against its secret (401 when wrong),
dedupes by `Idempotency-Key` (a redelivery is answered 200 and not counted
again), and can hold its answer: `hold_next(seconds)` records the next
delivery at once and answers only after `seconds`, so a test can kill the
worker after the side effect happened and before it learned so.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from typing import Any

from .fakehttp import FakeServer, Reply, Request


class FakeWebhookReceiver(FakeServer):
    def __init__(self, secret: str) -> None:
        super().__init__()
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

    def route(self, request: Request) -> Reply:
        expected = "sha256=" + hmac.new(self.secret.encode(), request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("x-blogqueue-signature", "")):
            with self.lock:
                self.bad_signatures += 1
            return Reply(401, {"error": "bad signature"})
        key = request.headers.get("idempotency-key")
        if not key:
            return Reply(400, {"error": "Idempotency-Key is required"})
        with self.lock:
            if self._fail:
                return Reply(self._fail.pop(0), {"error": "simulated"})
            duplicate = key in self.deliveries
            if duplicate:
                self.redeliveries += 1
            else:
                self.deliveries[key] = request.json()
            delay = self._hold.pop(0) if self._hold else 0.0
        self.received.set()
        return Reply(200, {"received": key, "duplicate": duplicate}, delay=delay)
