"""HTTP client loads on the service: the open loop of `benchmarks/load.py`, the closed loop of its test.

Open loop (`open_loop`, the benchmark): requests arrive at a fixed rate whatever the
latency, paced by aiolimiter and sent with aiohttp (`aiohttp_sender`: why not httpx),
each a mix of enqueue (mostly one job, sometimes a bulk), read back (`GET /v1/jobs/{id}`),
list and stop. Latency counts from the *scheduled* arrival time, so a slow answer cannot
delay the next arrivals and hide itself (a closed loop of N clients only sends when an
answer came back: coordinated omission).

Closed loop (`run_clients`, tests/test_http_load.py): each simulated client loops until
a deadline: enqueue, read its jobs back, now and then list a page and stop one of its
jobs; for correctness under concurrency, not for timing.

Every request is recorded (endpoint, start time, latency, status or transport error) so
callers can compute percentiles, count 5xx, and look at a time window (a dependency
outage) separately.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx

ENDPOINTS = ("enqueue", "poll", "list", "stop")


@dataclass(frozen=True)
class Mix:
    """How often each kind of request happens, per client iteration."""

    bulk_share: float = 0.1  # of enqueues that post a bulk instead of one job
    bulk_size: int = 20
    polls_per_bulk: int = 3  # a bulk's jobs read back (a client samples, it does not read all 20)
    list_share: float = 0.2
    stop_share: float = 0.05


@dataclass
class Sample:
    endpoint: str
    started: float  # time.monotonic() at send
    latency_s: float
    status: int | None  # None: transport error or timeout, no HTTP answer
    error: str | None = None  # the transport error's class name


@dataclass
class Recorder:
    samples: list[Sample] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> tenant that enqueued it
    stopped: set[str] = field(default_factory=set)

    def add(self, endpoint: str, scheduled: float, status: int | None, error: BaseException | None = None) -> None:
        """One answered (status) or failed (error) request; its latency counts from `scheduled` (monotonic)."""
        rec_error = type(error).__name__ if error is not None else None
        self.samples.append(Sample(endpoint, scheduled, time.monotonic() - scheduled, status, rec_error))

    def by_endpoint(self, since: float = float("-inf"), until: float = float("inf")) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {e: [] for e in ENDPOINTS}
        for s in self.samples:
            if since <= s.started < until:
                out.setdefault(s.endpoint, []).append(s)
        return out

    def count_5xx(self, since: float = float("-inf"), until: float = float("inf"),
                  endpoints: tuple[str, ...] = ENDPOINTS) -> int:
        return sum(1 for s in self.samples if s.endpoint in endpoints and s.status is not None
                   and s.status >= 500 and since <= s.started < until)


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Requests, latency percentiles (ms), error rate and status counts of one endpoint's samples."""
    lat = sorted(s.latency_s * 1000 for s in samples)
    statuses = Counter(str(s.status or s.error) for s in samples)
    # 4xx the client asked for are answers, not errors; 5xx and transport failures are.
    errors = sum(1 for s in samples if s.status is None or s.status >= 500)
    return {
        "requests": len(samples),
        "p50_ms": _pct(lat, 0.50), "p95_ms": _pct(lat, 0.95), "p99_ms": _pct(lat, 0.99),
        "max_ms": round(lat[-1], 1) if lat else None,
        "error_rate": round(errors / len(samples), 5) if samples else 0.0,
        "status_counts": dict(sorted(statuses.items())),
    }


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return round(sorted_values[idx], 1)


async def _call(http: httpx.AsyncClient, rec: Recorder, endpoint: str, method: str, url: str,
                token: str, body: Any = None) -> httpx.Response | None:
    return await _timed(http, rec, endpoint, method, url, token, time.monotonic(), body)


async def client_loop(http: httpx.AsyncClient, token: str, tenant: str, deadline: float, rec: Recorder,
                      rng: random.Random, mix: Mix = Mix()) -> None:
    """One simulated client: loops until `deadline` (monotonic); no request starts after it."""
    mine: list[str] = []
    n = 0
    while time.monotonic() < deadline:
        n += 1
        bulk = rng.random() < mix.bulk_share
        size = mix.bulk_size if bulk else 1
        jobs = [{"source": {"type": "keyword", "keyword": f"{tenant} topic {n}.{i}"}} for i in range(size)]
        resp = await _call(http, rec, "enqueue", "POST", "/v1/jobs", token, {"jobs": jobs} if bulk else jobs[0])
        ids: list[str] = []
        if resp is not None and resp.status_code == 202:
            ids = [j["id"] for j in resp.json()["jobs"]]
            for jid in ids:
                rec.jobs[jid] = tenant
            mine.extend(ids)
            del mine[:-50]  # a client remembers its recent jobs only
        for jid in (rng.sample(ids, min(mix.polls_per_bulk, len(ids))) if bulk else ids):
            if time.monotonic() >= deadline:
                return
            await _call(http, rec, "poll", "GET", f"/v1/jobs/{jid}", token)
        if rng.random() < mix.list_share and time.monotonic() < deadline:
            await _call(http, rec, "list", "GET", "/v1/jobs?limit=20", token)
        if mine and rng.random() < mix.stop_share and time.monotonic() < deadline:
            jid = rng.choice(mine)
            resp = await _call(http, rec, "stop", "POST", f"/v1/jobs/{jid}/stop", token)
            if resp is not None and resp.status_code == 200:
                rec.stopped.add(jid)


async def run_clients(http: httpx.AsyncClient, tokens: dict[str, str], clients: int, seconds: float,
                      rec: Recorder, *, seed: int = 8, mix: Mix = Mix()) -> float:
    """`clients` loops spread round-robin over the tenants of `tokens`; returns the wall time."""
    tenants = sorted(tokens)
    deadline = time.monotonic() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(
        client_loop(http, tokens[tenants[i % len(tenants)]], tenants[i % len(tenants)], deadline, rec,
                    random.Random(seed * 100_003 + i), mix)
        for i in range(clients)))
    return time.perf_counter() - started


@dataclass(frozen=True)
class OpenMix:
    """The share of each kind of arrival in the open loop (the rest: one-job enqueues)."""

    poll: float = 0.35
    list: float = 0.10
    bulk: float = 0.04
    stop: float = 0.01
    bulk_size: int = 20


@dataclass
class OpenLoopResult:
    rate: float  # arrivals per second asked for
    seconds: float
    scheduled: int  # arrivals scheduled in the window
    dropped: int  # not sent: `max_in_flight` requests were already waiting for answers
    lag_s: float  # how late the pacer sent the last arrival (the generator's own lag)


# One request of the open loop: (method, url, token, json body or None) -> (status, json answer
# or None), raising OSError/TimeoutError (or a client library's transport error) when there is none.
Send = Callable[[str, str, str, Any], Awaitable[tuple[int, Any]]]


def aiohttp_sender(session: aiohttp.ClientSession) -> Send:
    """The open loop's client: aiohttp, whose keep-alive pool hands out a connection in constant time.

    Why not httpx here: with hundreds of connections open, httpcore scans every one of them
    for every request (`_assign_requests_to_connections`, `is_idle`, `has_expired`), so the
    generator's own event loop saturates first. py-spy on the load generator at 135 arrivals/s
    (2026-11-25): 100 % busy, ~60 % of it in that scan; the pacer fell 6.5 s behind, and that lag
    showed up as seconds of "latency" of a service whose /healthz answered in milliseconds.
    A load generator that cannot keep up measures itself.
    """
    async def send(method: str, url: str, token: str, body: Any) -> tuple[int, Any]:
        async with session.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
            data = await resp.json(content_type=None) if resp.status < 300 else await resp.read()
            return resp.status, data
    return send


def aiohttp_session(base_url: str, max_in_flight: int, timeout: float) -> aiohttp.ClientSession:
    """A session as wide as the open loop's in-flight bound; idle connections dropped after 4 s (see `limits`)."""
    connector = aiohttp.TCPConnector(limit=max_in_flight, keepalive_timeout=4.0)
    return aiohttp.ClientSession(base_url=base_url, connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def open_loop(send: Send, tokens: dict[str, str], rate: float, seconds: float, rec: Recorder,
                    *, seed: int = 8, mix: OpenMix = OpenMix(), max_in_flight: int = 2000) -> OpenLoopResult:
    """Arrivals at `rate` per second for `seconds`, each one request, whatever the answers' latency.

    aiolimiter paces the sends: a bucket of 0.1 s of arrivals, so a pacer delayed by a busy
    event loop catches up with a short burst instead of sending fewer (a bucket of one
    arrival kept every delay: 40/s asked, about 30/s sent on a loaded machine). The
    latency recorded for arrival k runs from its scheduled time `start + k / rate`, so a
    pacer that fell behind (a busy event loop) shows as latency too, never as a lower load.
    `send` is `aiohttp_sender(...)`: see there why not httpx.
    Waits for every sent request to be answered (or to time out) before returning.
    """
    from aiolimiter import AsyncLimiter

    rng = random.Random(seed)
    tenants = sorted(tokens)
    recent: dict[str, list[str]] = {t: [] for t in tenants}
    limiter = AsyncLimiter(max(1.0, rate * 0.1), 0.1)
    total = int(rate * seconds)
    in_flight: set[asyncio.Task[None]] = set()
    dropped = 0
    start = time.monotonic()

    async def timed(endpoint: str, method: str, url: str, token: str, scheduled: float,
                    body: Any = None) -> tuple[int, Any] | None:
        try:
            status, data = await send(method, url, token, body)
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            rec.add(endpoint, scheduled, None, exc)
            return None
        rec.add(endpoint, scheduled, status)
        return status, data

    async def arrival(k: int, tenant: str, scheduled: float) -> None:
        early = scheduled - time.monotonic()
        if early > 0:  # a burst of the bucket went out ahead of the schedule: keep to it
            await asyncio.sleep(early)
        token = tokens[tenant]
        r = rng.random()
        mine = recent[tenant]
        if r < mix.poll and mine:
            await timed("poll", "GET", f"/v1/jobs/{rng.choice(mine)}", token, scheduled)
        elif r < mix.poll + mix.list:
            await timed("list", "GET", "/v1/jobs?limit=20", token, scheduled)
        elif r < mix.poll + mix.list + mix.stop and mine:
            jid = rng.choice(mine)
            answer = await timed("stop", "POST", f"/v1/jobs/{jid}/stop", token, scheduled)
            if answer is not None and answer[0] == 200:
                rec.stopped.add(jid)
        else:
            size = mix.bulk_size if r > 1 - mix.bulk else 1
            jobs = [{"source": {"type": "keyword", "keyword": f"{tenant} topic {k}.{i}"}} for i in range(size)]
            body = {"jobs": jobs} if size > 1 else jobs[0]
            answer = await timed("enqueue", "POST", "/v1/jobs", token, scheduled, body)
            if answer is not None and answer[0] == 202:
                for j in answer[1]["jobs"]:
                    rec.jobs[j["id"]] = tenant
                    mine.append(j["id"])
                del mine[:-50]

    for k in range(total):
        await limiter.acquire()
        if len(in_flight) >= max_in_flight:
            dropped += 1
            continue
        task = asyncio.create_task(arrival(k, tenants[k % len(tenants)], start + k / rate))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    lag = time.monotonic() - (start + (total - 1) / rate) if total else 0.0
    if in_flight:
        await asyncio.gather(*in_flight)
    return OpenLoopResult(rate, seconds, total, dropped, round(max(0.0, lag), 3))


async def _timed(http: httpx.AsyncClient, rec: Recorder, endpoint: str, method: str, url: str, token: str,
                 scheduled: float, body: Any = None) -> httpx.Response | None:
    """One request; its latency counts from `scheduled` (monotonic), not from when it was sent."""
    try:
        resp = await http.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"})
    except httpx.TransportError as exc:
        rec.add(endpoint, scheduled, None, exc)
        return None
    rec.add(endpoint, scheduled, resp.status_code)
    return resp


def limits(clients: int) -> httpx.Limits:
    """A connection pool as wide as the clients, so no client waits for another's connection.

    Idle connections are dropped after 4 s, before uvicorn's 5 s keep-alive
    timeout closes them: with equal timeouts a request can be written into a
    connection the server is closing, a ReadError that is no server failure.
    """
    return httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=4.0)
