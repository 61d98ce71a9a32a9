"""The event stream: every job change, in order, to any number of readers (DESIGN §12).

Every change of a job's public status writes a row to `bq_job_events` in the statement that
makes it, with the status after it (queries.sql). One `EventHub` per `Client` (so one per service
process) reads that table and fans the rows out:

- **One poller per process**, not one query per reader: the hub reads the events after its
  cursor every `EVENTS_POLL_SECONDS` (0.1 s) and hands each to the readers it concerns (indexed
  by tenant), so 1,000 open streams cost one query per tick, not a thousand.
- **No event is skipped when ids commit out of order.** Ids come from a sequence and are taken
  before commit: id 11 may be visible while id 10's transaction is still open, and a reader
  that moved past 11 would never see 10. The hub emits ids in order and stops at the first
  missing one. A missing id below a visible one is held by a transaction that was open when
  the poll's snapshot was taken, or one that rolled back; the poll also reads which
  transactions of the database are open (`pg_stat_activity.backend_xid`, after the snapshot).
  Once none of those is open in a later poll's snapshot, every id up to that poll's highest is
  final (committed and visible, or never coming) and the hub emits past the gap. The proof
  needs one fact the schema guarantees (sql/010): a transaction has its xid before it takes
  an event id. A gap that stays open for `GAP_HOLD_MAX_S` (a transaction of this database
  open that long) is passed with a warning rather than stalling every stream.
- **Resume.** `Last-Event-ID` (`after`) reads the events after it up to the hub's cursor from
  PostgreSQL (every id up to the cursor is final), then continues live: no gap, no duplicate.
  Without it, a stream starts at "now".
- **Bounded memory per reader.** A reader's queue holds at most `EVENTS_BUFFER` events
  (references to events shared by every reader). A reader that falls that far behind is cut
  off (`StreamLagged`; the HTTP stream is closed) and resumes with its last id.

Readers must use a database role that sees the other sessions of the database in
`pg_stat_activity` (the same role as the workers, or one with `pg_read_all_stats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import cached_property

import asyncpg
import structlog

from .db import Q
from .errors import BlogqueueError
from .models import StreamEvent
from .settings import Settings

log = structlog.get_logger("blogqueue.events")

# Events per poll, at most: a longer backlog is read by polling again at once. Never more than
# half a reader's buffer: between two polls (an await) readers that keep up empty their queues,
# so a burst (a bulk enqueue of 10,000 jobs) reaches them in pieces instead of overflowing them.
POLL_LIMIT = 2000
BACKFILL_PAGE = 500  # events per query while a resuming reader catches up
# A gap is held at most this long: longer than any statement of ours runs (the pools' command
# timeout is 60 s), so only a transaction left open by hand stalls streams, and not forever.
GAP_HOLD_MAX_S = 60.0
RETRY_DELAY_S = 1.0  # after the poller's query failed (PostgreSQL restarting)
START_TIMEOUT_S = 10.0  # a new reader waits this long for the poller's first reads


class StreamLagged(BlogqueueError):
    """The reader fell `EVENTS_BUFFER` events behind and was cut off; resume after `last_event_id`."""

    code = "stream_lagged"

    def __init__(self, last_event_id: int | None) -> None:
        super().__init__("the reader fell too far behind the event stream; resume after its last event id",
                         details={"last_event_id": last_event_id})
        self.last_event_id = last_event_id


@dataclass(frozen=True, eq=False)
class Delivered:
    """An event as the hub hands it out: the model, and its SSE frame encoded once for every reader."""

    event: StreamEvent

    @cached_property
    def sse(self) -> bytes:
        return f"id: {self.event.event_id}\nevent: job\ndata: {self.event.model_dump_json()}\n\n".encode()


def _event(row: asyncpg.Record) -> StreamEvent:
    detail = row["detail"]
    if detail is not None and not isinstance(detail, dict):
        detail = {"value": detail}
    return StreamEvent(event_id=row["id"], job_id=str(row["job_id"]), tenant_id=row["tenant_id"],
                       batch_id=str(row["batch_id"]) if row["batch_id"] is not None else None,
                       kind=row["kind"], event=row["event"], status=row["status"], stage=row["stage"],
                       attempt=row["attempt"], at=row["at"], detail=detail)


@dataclass(eq=False)
class Feed:
    """One reader's view of the stream: `await feed.get()` returns its next event.

    Made by `EventHub.feed`; close it (or use it as an async context manager) when done.
    """

    hub: EventHub
    tenant_id: str | None
    batch_id: str | None
    after: int | None
    queue: asyncio.Queue[Delivered]
    lagged: bool = False
    last_id: int | None = None
    _backlog: list[Delivered] = field(default_factory=list)
    _backfill_upto: int = 0  # events up to this id come from PostgreSQL, later ones from the hub
    cut_off: asyncio.Event = field(default_factory=asyncio.Event)  # set when the hub drops this reader

    def wants(self, ev: StreamEvent) -> bool:
        return ((self.tenant_id is None or ev.tenant_id == self.tenant_id)
                and (self.batch_id is None or ev.batch_id == self.batch_id))

    def offer(self, item: Delivered) -> None:
        """Called by the hub for every event this reader wants; never blocks, never grows past the bound."""
        if self.lagged:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # Cut off now: its queue is dropped with it, so a stuck reader holds no more than this.
            self.lagged = True
            self.hub._remove(self)
            self.cut_off.set()

    async def get_delivered(self, timeout: float | None = None) -> Delivered | None:
        """The next event (model and SSE frame); None after `timeout` s without one.

        Raises StreamLagged once the reader has fallen too far behind and has read what its
        queue held: it resumes after `last_id` (e.g. a new feed with `after=last_id`).
        """
        if self._backlog or (self.after is not None and self.after < self._backfill_upto):
            item = await self._next_backfilled()
            if item is not None:
                return self._mark(item)
        while True:
            if self.queue.empty():
                if self.lagged:
                    raise StreamLagged(self.last_id)
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    return None
            else:
                item = self.queue.get_nowait()
            if self.after is not None and item.event.event_id <= self.after:
                continue  # a resume id from a hub that was ahead of this one
            return self._mark(item)

    async def get(self, timeout: float | None = None) -> StreamEvent | None:
        item = await self.get_delivered(timeout)
        return item.event if item is not None else None

    def _mark(self, item: Delivered) -> Delivered:
        self.last_id = item.event.event_id
        return item

    async def _next_backfilled(self) -> Delivered | None:
        if not self._backlog:
            assert self.after is not None
            bid = uuid.UUID(self.batch_id) if self.batch_id is not None else None
            rows = await self.hub.pool.fetch(Q["events_since"], self.after, self._backfill_upto, self.tenant_id,
                                             bid, BACKFILL_PAGE)
            self._backlog = [Delivered(_event(r)) for r in reversed(rows)]
            if len(rows) < BACKFILL_PAGE:
                self.after = self._backfill_upto  # caught up with the point the live queue starts from
            if not self._backlog:
                return None
        item = self._backlog.pop()
        self.after = max(self.after or 0, item.event.event_id)
        return item

    def close(self) -> None:
        self.hub._remove(self)

    async def __aenter__(self) -> Feed:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        while True:
            ev = await self.get()
            assert ev is not None
            yield ev


class EventHub:
    """One process's reader of `bq_job_events`, fanning out to its feeds. Started on first use."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.cursor = 0  # every event up to this id is emitted (or final and before the hub started)
        self._by_tenant: dict[str | None, set[Feed]] = {}
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._ready = asyncio.Event()  # ids up to the cursor are final (not before the first gap settles)
        # Gaps waiting to be final, oldest first: (highest id seen, the xids open then, since when).
        # One per poll that saw ids past a gap, so under steady writes each waits one poll, not more.
        self._pending: list[tuple[int, list[int], float]] = []
        self._final = -1  # every id up to this one is visible or never coming
        self._start = 0  # the last event id when the hub started
        self._wake = asyncio.Event()
        self.page = max(1, min(POLL_LIMIT, settings.events_buffer // 2))
        self.polls = 0
        self.emitted = 0
        self.dropped = 0  # readers cut off for falling behind
        # Called with the job ids of every event row a poll reads, past a held gap too (the job
        # view cache, blogqueue.jobviews: invalidation needs no order, only that it is seen).
        self.on_events: list[Callable[[list[uuid.UUID]], None]] = []
        # When the last poll that read every visible event (not a full page) started: every event
        # committed before then has been handed to `on_events`.
        self.caught_up_at = float("-inf")

    # -- readers ------------------------------------------------------------------------

    async def feed(self, tenant_id: str | None, *, batch_id: str | None = None,
                   after: int | None = None) -> Feed:
        """A reader of the events of `tenant_id` (None: every tenant) and `batch_id`; with `after`,
        starting right after that event id, else with the next event."""
        await self._ensure_started()
        if after is not None:
            # Events up to the cursor must be final before a reader reads them from PostgreSQL.
            await asyncio.wait_for(self._ready.wait(), START_TIMEOUT_S)
        feed = Feed(self, tenant_id, batch_id, after, asyncio.Queue(maxsize=self.settings.events_buffer))
        # Registered and given its bound in one step of the event loop: the hub emits events
        # after the cursor to it from now on, and the cursor's events come from PostgreSQL.
        feed._backfill_upto = self.cursor
        self._by_tenant.setdefault(tenant_id, set()).add(feed)
        return feed

    @property
    def readers(self) -> int:
        return sum(len(s) for s in self._by_tenant.values())

    def _remove(self, feed: Feed) -> None:
        subs = self._by_tenant.get(feed.tenant_id)
        if subs is not None and feed in subs:
            subs.discard(feed)
            if feed.lagged:
                self.dropped += 1
            if not subs:
                del self._by_tenant[feed.tenant_id]

    def _fan_out(self, item: Delivered) -> None:
        for key in (None, item.event.tenant_id):
            for feed in list(self._by_tenant.get(key, ())):
                if feed.wants(item.event):
                    feed.offer(item)
        self.emitted += 1

    # -- the poller ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Started, and the transactions open when it started are over: every event id up to the
        cursor is final, so every later change's event is read by some poll."""
        return self._ready.is_set()

    def start(self) -> None:
        """Starts the poller if it is not running; does not wait for it."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="blogqueue-events")

    async def _ensure_started(self) -> None:
        self.start()
        # TimeoutError while PostgreSQL cannot be reached (the service answers it with a 503).
        await asyncio.wait_for(self._started.wait(), START_TIMEOUT_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                if not self._started.is_set():
                    head = await self.pool.fetchrow(Q["events_head"])
                    # Events up to the head are the past: the stream starts after them. Those of
                    # them still uncommitted are final once the transactions open now are over.
                    self.cursor = self._start = head["last"]
                    self._pending = [(head["last"], list(head["open_xids"]), time.monotonic())]
                    self._started.set()
                full = await self.poll()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("event stream poll failed; retrying", error=type(exc).__name__)
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            except Exception:  # a bug must not end the stream of every reader for good
                log.exception("event stream poll failed unexpectedly; retrying")
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            if not full:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.events_poll_seconds)

    async def poll(self) -> bool:
        """One read of new events; returns True when it read a full page (more may be waiting)."""
        limit = self.page
        asked = sorted({x for _, xids, _ in self._pending for x in xids})
        started = time.monotonic()  # before the query, so before its snapshot
        rows = await self.pool.fetch(Q["events_poll"], self.cursor, limit, asked)
        self.polls += 1
        head = rows[0]
        found = [r for r in rows if r["id"] is not None]
        full = len(found) >= limit
        if found:
            for observe in self.on_events:
                observe([r["job_id"] for r in found])
        if not full:
            self.caught_up_at = started
        still = set(head["still_open"])
        while self._pending:  # in order: a later gap is final only once the earlier ones are
            bound, xids, since = self._pending[0]
            if still.intersection(xids):
                if time.monotonic() - since <= GAP_HOLD_MAX_S:
                    break
                log.warning("event id gap held too long; passing it", after=self.cursor, upto=bound)
            # Every id up to `bound` is visible in this snapshot or never will be.
            self._final = max(self._final, bound)
            self._pending.pop(0)
        for r in found:  # in id order; past a missing id only where it is final
            if r["id"] != self.cursor + 1 and r["id"] > self._final:
                break
            if self._by_tenant:
                self._fan_out(Delivered(_event(r)))
            else:
                # No reader: the poll runs for the job view cache (blogqueue.jobviews) alone, which
                # needs only the job ids. A model per event would be built for nobody, once per
                # job enqueued (bench-http's enqueue scenarios run with the poller started).
                self.emitted += 1
            self.cursor = r["id"]
        if not full:  # every visible id up to the final bound was read: the rest are never coming
            self.cursor = max(self.cursor, self._final)
        if self._final >= self._start:
            self._ready.set()  # the transactions open at start are over: ids up to the cursor are final
        if found and found[-1]["id"] > max([self.cursor, *(b for b, _, _ in self._pending)]):
            self._pending.append((found[-1]["id"], list(head["open_xids"]), time.monotonic()))
        return full


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()
