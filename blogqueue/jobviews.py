"""A per-process cache of encoded job views (`GET /v1/jobs/{id}`), invalidated by the event stream.

Why: a job view is the service's most frequent read, and one PostgreSQL round trip plus
building and encoding the view cost the service process about twice what it spends on a
request that touches no database (`make bench-http`, docs/benchmarks.md). Clients poll the
same jobs again and again, so a process keeps the JSON body of the views it served and
answers from it while nothing changed.

How it stays fresh:

- **Every change that writes an event invalidates.** Each state change of a job writes a
  `bq_job_events` row in the same statement (queries.sql), and the process's `EventHub`
  (blogqueue/events.py) reads every new event row every `EVENTS_POLL_SECONDS` (0.1 s). Each
  poll drops the views of the jobs it saw events of, including rows past an id gap the stream
  itself still holds back: invalidation needs no order.
- **No stale view is stored after its invalidation.** A miss puts a placeholder under the job id
  *before* its query; an invalidation removes it; the view is stored only if the placeholder it
  put is still there. A read whose snapshot missed a change has its placeholder in place when
  that change's event is seen (the event is seen after the commit, the commit after the
  snapshot), so either the store fails or the entry it stored is dropped.
- **Only while the poller keeps up.** An entry is served only while the later of its own query
  and the start of the hub's last poll that read everything (not a full page) is less than
  `EVENTS_POLL_SECONDS + LIVE_SLACK_S` ago, and only once the transactions open when the hub
  started are over (`EventHub.ready`). A failing or starved poller leaves only fresh reads
  servable, so **a change that writes an event is served from the cache at most
  `EVENTS_POLL_SECONDS + LIVE_SLACK_S` (1.1 s by default) after it commits**; usually within
  one poll (~0.1 s).
- **Changes without an event are bounded by age.** A view is never older than
  `JOB_CACHE_SECONDS` (default 5). That bounds the fields that change without an event: the
  dispatch of a queued job (`attempts`, `updated_at`; the public status stays `queued`), the
  promotion of a scheduled job (`run_at`, `updated_at`), an undispatch, and `wait_reason`
  (whether a live worker knows the kind: worker heartbeats, not job changes).
- **This process's own writes invalidate at once** (stop, retry): read-your-writes within a
  process. Another service process sees them with the event-stream bound above.

Memory is bounded by `JOB_CACHE_BYTES` of encoded views (least recently used leave first; a view
larger than `MAX_VIEW_BYTES` is not cached). Keys are job ids; each entry keeps its tenant, and a
read for another tenant is refused exactly as the database read refuses it (NotFound).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from .events import EventHub

# How far behind its period the poller may fall before the cache stops serving (a slow poll
# query, a busy event loop, PostgreSQL unreachable): the bound on an evented change's delay.
LIVE_SLACK_S = 1.0
# A view with many large events is not cached: one entry may not take a large share of the budget.
MAX_VIEW_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class View:
    tenant_id: str
    body: bytes
    loaded: float  # time.monotonic() before its query: every change committed earlier is in it
    expires: float


class _Pending:
    """A miss in flight. Its store succeeds only if no invalidation removed this very object, and
    readers of the same job that arrive meanwhile wait for its answer instead of querying too."""

    __slots__ = ("answer",)

    def __init__(self) -> None:
        # (tenant, body), or None when the load failed: then each waiter loads for itself.
        self.answer: asyncio.Future[tuple[str, bytes] | None] = asyncio.get_running_loop().create_future()


class JobViewCache:
    def __init__(self, hub: EventHub, ttl: float, max_bytes: int) -> None:
        self.hub = hub
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[uuid.UUID, View | _Pending] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.joined = 0  # reads that waited for another read's query of the same job
        hub.on_events.append(self.invalidate)

    def __len__(self) -> int:
        return sum(1 for v in self._entries.values() if isinstance(v, View))

    async def get(self, job_id: uuid.UUID, tenant_id: str | None,
                  load: Callable[[], Awaitable[tuple[str, bytes]]]) -> tuple[str, bytes]:
        """(tenant, body) of the view: from the cache, else `load()` (which raises NotFound itself)
        and kept. The caller checks the tenant: an entry is shared by every reader of the job."""
        hub = self.hub
        if self.ttl <= 0 or not hub.ready:
            hub.start()
            return await load()
        now = time.monotonic()
        hit = self._entries.get(job_id)
        if isinstance(hit, View):
            # Every change committed before the last complete poll started has dropped its view,
            # and every change committed before this view's query is in it: the view can miss
            # only changes younger than the later of the two. A lagging poller (a slow or failing
            # query, a busy pool) thus stops only the views older than the bound, not the whole
            # cache at once.
            fresh = now - max(hub.caught_up_at, hit.loaded) <= hub.settings.events_poll_seconds + LIVE_SLACK_S
            if hit.expires > now and fresh:
                self._entries.move_to_end(job_id)
                self.hits += 1
                return hit.tenant_id, hit.body
            self._drop(job_id)
        elif isinstance(hit, _Pending):
            # Single flight: a hot job read by many clients costs one query per expiry, not one
            # per request in flight. The load began before this read arrived and after the last
            # invalidation this process saw (an invalidation removes the placeholder), so its
            # answer is as fresh as the bound promises.
            self.joined += 1
            answer = await asyncio.shield(hit.answer)
            return answer if answer is not None else await load()
        self.misses += 1
        mark = _Pending()
        self._put(job_id, mark)
        try:
            tenant, body = await load()
        except BaseException:
            if self._entries.get(job_id) is mark:
                del self._entries[job_id]
            mark.answer.set_result(None)
            raise
        mark.answer.set_result((tenant, body))
        if self._entries.get(job_id) is mark:
            if len(body) <= MAX_VIEW_BYTES:
                # Aged from before the query: the bound on changes without an event counts from there.
                # A lifetime drawn from [ttl/2, ttl]: views loaded together (a client polling a
                # batch, a restart) would otherwise expire together, and their misses queue for
                # the pool at once (bench-http's status p99).
                life = self.ttl * (0.5 + 0.5 * random.random())
                self._put(job_id, View(tenant, body, now, now + life))
            else:
                del self._entries[job_id]
        return tenant, body

    def invalidate(self, job_ids: Iterable[uuid.UUID]) -> None:
        for job_id in job_ids:
            self._drop(job_id)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, job_id: uuid.UUID) -> None:
        old = self._entries.pop(job_id, None)
        if isinstance(old, View):
            self.bytes -= len(old.body)

    def _put(self, job_id: uuid.UUID, value: View | _Pending) -> None:
        self._drop(job_id)
        self._entries[job_id] = value
        if isinstance(value, View):
            self.bytes += len(value.body)
            while self.bytes > self.max_bytes and self._entries:
                oldest, _ = next(iter(self._entries.items()))
                self._drop(oldest)
