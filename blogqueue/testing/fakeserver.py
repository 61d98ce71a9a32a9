"""What every fake provider server shares: a real HTTP server on 127.0.0.1 in a thread,
fault injection (latency, 5xx, 429, timeouts, scripted answers) and call counting.

A fake is a Starlette app served by uvicorn on an ephemeral port, so the real
SDKs talk to it over real HTTP exactly as they talk to the provider:

    with FakeOpenAI(rpm=600, tpm=60_000) as fake:
        client = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test")

Everything is thread-safe: the server runs its own event loop in a thread while
the test reads `fake.stats()` from another.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, SupportsIndex, overload

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Faults:
    """Injected misbehaviour; every rate is a probability per call (0..1)."""

    latency_ms: float = 0.0
    latency_spread_ms: float = 0.0      # latency is uniform in [latency_ms, latency_ms + latency_spread_ms]
    error_5xx_rate: float = 0.0
    error_429_rate: float = 0.0
    retry_after_s: float = 1.0          # what an injected 429 asks for
    timeout_rate: float = 0.0           # the call hangs for `hang_s` (clients time out)
    hang_s: float = 30.0
    api_keys: set[str] | None = None    # None: any non-empty key is accepted
    scripted: deque[str] = field(default_factory=deque)  # next answers: "429", "500", "401", "403", "400",
    #                                                       "refuse", "timeout" (consumed first)


@dataclass
class Recorded:
    """One request as it reached the fake (header names lower-cased), kept by `capture()`."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class CallLog(list[dict[str, Any]]):
    """`record()`'s list of calls that also answers `log[(method, path)]`: how many calls that route got."""

    @overload
    def __getitem__(self, key: SupportsIndex) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, key: slice) -> list[dict[str, Any]]: ...
    @overload
    def __getitem__(self, key: tuple[str, str]) -> int: ...

    def __getitem__(self, key: SupportsIndex | slice | tuple[str, str]) -> Any:
        if isinstance(key, tuple):
            return sum(1 for c in self if (c.get("method"), c["path"]) == key)
        return super().__getitem__(key)


class FakeServer:
    """Base class: subclasses add their protocol's routes in `routes()`."""

    name = "fake"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: int | None = None, **faults: Any) -> None:
        self.host = host
        self.port = port
        self.faults = Faults(**faults)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.calls: list[dict[str, Any]] = []   # one entry per call: at, path, status, tokens
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[Recorded] = []     # every request a subclass `capture()`d, in arrival order
        self.app = Starlette(routes=[*self.routes(),
                                     Route("/_stats", self._stats_endpoint, methods=["GET"]),
                                     Route("/_reset", self._reset_endpoint, methods=["POST"]),
                                     Route("/_faults", self._faults_endpoint, methods=["POST"])])

    def routes(self) -> list[Route]:
        return []

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="critical", access_log=False, lifespan="off",
                                timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"{self.name}-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{self.name} fake server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- counting ----------------------------------------------------------------

    def record(self, path: str, status: int, tokens: int = 0, **extra: Any) -> None:
        with self.lock:
            self.counts["calls"] += 1
            self.counts[f"status_{status}"] += 1
            if status == 429:
                self.counts["rate_limited"] += 1
            self.calls.append({"at": time.time(), "path": path, "status": status, "tokens": tokens, **extra})

    async def capture(self, request: Request) -> Recorded:
        """Reads the whole request and keeps it in `requests`, so a test sees exactly what arrived."""
        req = Recorded(request.method, request.url.path, dict(request.query_params),
                       {k.lower(): v for k, v in request.headers.items()}, await request.body())
        with self.lock:
            self.requests.append(req)
        return req

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        """Calls `record()`ed with this method (`method=` extra) under this path prefix."""
        with self.lock:
            return sum(1 for c in self.calls if (method is None or c.get("method") == method)
                       and c["path"].startswith(path_prefix))

    async def answer(self, status: int, body: Any, *, delay: float = 0.0,
                     headers: dict[str, str] | None = None) -> Response:
        """A JSON answer sent `delay` seconds late (the side effect already happened; a client
        that gave up or was killed meanwhile just misses the answer)."""
        if delay:
            await asyncio.sleep(delay)
        return JSONResponse(body, status_code=status, headers=headers)

    def stats(self) -> dict[str, Any]:
        """Counts of every call received, by outcome (`status_429` is the number of 429s)."""
        with self.lock:
            return {"calls": self.counts["calls"], "rate_limited": self.counts["rate_limited"],
                    "by_status": {k.removeprefix("status_"): v for k, v in self.counts.items()
                                  if k.startswith("status_")},
                    "tokens": sum(c["tokens"] for c in self.calls)}

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.calls.clear()

    def script(self, *answers: str) -> None:
        """The next calls get these answers, in order, before any other rule applies."""
        with self.lock:
            self.faults.scripted.extend(answers)

    async def _stats_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    async def _reset_endpoint(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def _faults_endpoint(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            for k, v in body.items():
                if k in ("scripted", "api_keys") or not hasattr(self.faults, k):
                    return JSONResponse({"error": f"unknown fault {k!r}"}, status_code=400)
                setattr(self.faults, k, type(getattr(self.faults, k))(v))
        return JSONResponse({"ok": True})

    # -- fault injection ---------------------------------------------------------

    def latency_s(self) -> float:
        """One call's latency: `latency_ms`, plus a uniform draw from `latency_spread_ms`."""
        f = self.faults
        with self.lock:
            spread = self.rng.uniform(0, f.latency_spread_ms) if f.latency_spread_ms else 0.0
        return (f.latency_ms + spread) / 1000

    async def misbehave(self, key: str | None, sleep: bool = True) -> str | None:
        """Sleeps the injected latency (unless `sleep` is False: the caller sleeps it after admitting the
        call, as a provider counts a request when it arrives), then returns the fault this call gets."""
        f = self.faults
        with self.lock:
            scripted = f.scripted.popleft() if f.scripted else None
        if sleep and (f.latency_ms or f.latency_spread_ms):
            await asyncio.sleep(self.latency_s())
        if scripted is not None:
            if scripted == "timeout":
                await asyncio.sleep(f.hang_s)
            return scripted
        if not key:
            return "401"
        if f.api_keys is not None and key not in f.api_keys:
            return "401"
        roll = self.rng.random()
        if roll < f.timeout_rate:
            await asyncio.sleep(f.hang_s)
            return "timeout"
        roll -= f.timeout_rate
        if roll < f.error_5xx_rate:
            return "500"
        roll -= f.error_5xx_rate
        if roll < f.error_429_rate:
            return "429"
        return None


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def estimate_tokens(text: str) -> int:
    """OpenAI's documented rule of thumb, ~4 characters a token; never below 1 for non-empty text."""
    return (len(text) + 3) // 4
