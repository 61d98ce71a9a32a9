"""The dispatcher: moves ready work from PostgreSQL into arq, fairly and bounded.

One runs inside every worker process; a lease in PostgreSQL (`bq_leader`, one row
per queue) makes one of them the leader, and the others watch it to take over.
The leader wakes on NOTIFY (`blogqueue_dispatch`: an enqueue) or after
`DISPATCH_POLL_SECONDS`; while queued work waits for free slots it looks again
every 10 ms, backing off to 250 ms while nothing frees up (a finished attempt
sends no NOTIFY: each costs a transaction in every listening backend). Cycles
run at most every 10 ms, so one hands out what freed up meanwhile. A cycle:

1. promotes scheduled work whose `run_at` has come and returns work whose lease
   lapsed to the queue (a killed worker, a flushed Redis): one transaction, at
   most every HOUSEKEEPING_INTERVAL (100 ms), not in every cycle;
2. in one statement (`dispatch_cycle`, one round trip): tops in-flight work up
   to the live workers' capacity (their concurrency plus `DISPATCH_PREFETCH`
   each, from their heartbeats), choosing fairly (weighted round robin between
   tenants, per-tenant cap, work-conserving: the query's comment says how), and
   marks the chosen jobs dispatched (attempt + 1, a lease);
3. pushes them to arq as `<job>:<attempt>`.

Keeping in-flight work at the workers' capacity, not at the backlog, is what
makes fairness possible: arq's queue is FIFO, so whatever sits in it cannot be
reordered when a small tenant arrives.

Leadership is a lease, not a session lock, because a session outlives the process
that froze or the host that was cut off (PostgreSQL keeps it until TCP gives up,
hours with the defaults), and a SIGSTOPped process's kernel still answers TCP
keepalives, so no socket option can tell it from a healthy one. So:

- the leader renews its lease every HEARTBEAT_SECONDS, and stops dispatching on
  its own once LEASE_SECONDS have passed since the last renewal that succeeded;
- a follower looks every HEARTBEAT_SECONDS and takes a lapsed lease over, which
  raises the lease's `epoch` and ends the old holder's leadership connection;
- every dispatch statement (promote, reap, dispatch_cycle) names the epoch it runs
  under and locks the lease row, so a stale leader that wakes up changes
  nothing; it finds its renewal refused (or its connection ended) and follows.

A frozen leader is therefore replaced at most LEASE_SECONDS + HEARTBEAT_SECONDS
after its last renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from typing import Any

import asyncpg
import structlog
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms, job_key_prefix
from arq.jobs import serialize_job
from redis.exceptions import RedisError

from . import db
from .db import Q
from .settings import Settings

log = structlog.get_logger("blogqueue.dispatcher")

TASK_NAME = "run_attempt"
PROMOTE_BATCH = 5000
REAP_BATCH = 1000
MIN_CYCLE_INTERVAL = 0.01  # seconds between dispatch cycles at most; see Dispatcher._lead
BACKLOG_POLL_MAX = 0.25  # seconds: the longest look-again while queued work waits for a slot
HOUSEKEEPING_INTERVAL = 0.1  # seconds: promotion of due work and the lease reaper, at most this often

# What ends a leadership term without being a bug: PostgreSQL or Redis unreachable, a
# statement that timed out on a dead peer, the connection ended by a takeover.
# InternalClientError: a connection the server ended mid-operation (a fast shutdown) can be
# left in a broken protocol state, and asyncpg says so with this (it is no PostgresError).
LOST = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, ConnectionError,
        RedisError)


def leader_application_name(holder: str) -> str:
    """The application_name of a dispatcher's own connection: a takeover ends exactly that one."""
    return f"blogqueue dispatcher {holder}"[:63]


class Dispatcher:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, holder: str | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.epoch: int | None = None  # the leadership term this dispatcher holds, if any
        self.dispatched = 0
        self.cycles = 0
        self.terms = 0
        self.last_cycle_at = 0.0
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._listening = False
        self._renewed_at = 0.0  # monotonic time of the last renewal that was sent and succeeded
        self._lease_deadline = 0.0  # monotonic: past this, this process cannot be sure it leads
        self._cycle_mono = 0.0  # monotonic start of the last cycle
        self.backlog = False  # the last cycle left queued work for lack of free slots
        self._backlog_wait = MIN_CYCLE_INTERVAL
        self._housekeeping_due = 0.0  # monotonic: the next cycle at or after this promotes and reaps

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None

    def wake(self, *_: Any) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled: campaigns for leadership, then dispatches while leader."""
        while True:
            try:
                await self._campaign()
                if self.is_leader:
                    await self._lead()
                    await self._unlisten()  # stepped down: followers have nothing to do on a wake-up
                else:
                    await asyncio.sleep(self.settings.heartbeat_seconds)
            except asyncio.CancelledError:
                raise
            except LOST as exc:
                # PostgreSQL or Redis went away: drop leadership, wait, try again.
                log.warning("dispatcher: connection failed; retrying", error=type(exc).__name__,
                            detail=str(exc)[:200], epoch=self.epoch)
                await self._drop()
                await asyncio.sleep(1.0)
            except Exception:
                # Never die: a dead dispatcher task would leave this worker believing it leads
                # (nobody else could take over before its lease lapsed, and it renews nothing).
                log.exception("dispatcher: unexpected error; starting over", epoch=self.epoch)
                await self._drop()
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Gives the lease up (a follower takes over at its next look) and closes the connection."""
        conn, epoch = self._conn, self.epoch
        if conn is not None and not conn.is_closed() and epoch is not None:
            with contextlib.suppress(Exception):
                await conn.execute(Q["leader_release"], self.settings.queue_name, epoch, timeout=2)
        await self._drop()

    # -- leadership ------------------------------------------------------------------

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._step_down(None)
            self._listening = False
            # The statement timeout bounds a renewal on a dead peer; the lease decides anyway.
            self._conn = await db.connect(self.settings, leader_application_name(self.holder),
                                          command_timeout=max(1.0, self.settings.lease_seconds))
        return self._conn

    async def _campaign(self) -> None:
        if self.is_leader:
            return
        s = self.settings
        conn = await self._connection()
        current = await conn.fetchrow(Q["leader_current"], s.queue_name)
        if current is not None and current["live"] and current["holder"] != self.holder:
            return
        sent = time.monotonic()
        row = await conn.fetchrow(Q["leader_acquire"], s.queue_name, self.holder, s.lease_seconds)
        if row is None:
            return  # another follower was quicker
        self.epoch, self._renewed_at, self._lease_deadline = row["epoch"], sent, sent + s.lease_seconds
        self.terms += 1
        self._housekeeping_due = 0.0  # a new term promotes and reaps in its first cycle
        # Only the leader listens: followers have nothing to do on a wake-up.
        await self._listen()
        ended = False
        if row["previous_pid"] is not None:
            # The replaced leader's connection: its writes are fenced already; ending it frees
            # its backend now and tells it at once, should it wake, that it no longer leads.
            try:
                ended = bool(await conn.fetchval(Q["leader_end_stale_backend"], row["previous_pid"],
                                                 leader_application_name(row["previous_holder"])))
            except asyncpg.PostgresError as exc:  # e.g. no permission to signal it: fencing suffices
                log.warning("dispatcher: could not end the previous leader's connection",
                            error=type(exc).__name__)
        log.info("dispatcher: this worker is now the leader", epoch=self.epoch,
                 previous=row["previous_holder"], previous_backend_ended=ended)
        self.wake()

    def _step_down(self, reason: str | None) -> None:
        if self.epoch is None:
            return
        if reason:
            log.warning("dispatcher: no longer the leader; following", reason=reason, epoch=self.epoch)
        self.epoch = None

    async def _listen(self) -> None:
        if not self._listening and self._conn is not None:
            await self._conn.add_listener("blogqueue_dispatch", self.wake)
            self._listening = True

    async def _unlisten(self) -> None:
        if self._listening and self._conn is not None and not self._conn.is_closed():
            await self._conn.remove_listener("blogqueue_dispatch", self.wake)
        self._listening = False

    async def _renew_if_due(self) -> None:
        """Proves this leader alive in PostgreSQL every HEARTBEAT_SECONDS, or steps down."""
        s = self.settings
        now = time.monotonic()
        if now >= self._lease_deadline:
            # Frozen, or starved: a follower may have taken over meanwhile. Whatever this
            # process still sends under the old epoch is fenced; stop sending it.
            self._step_down(f"lease not renewed for {now - self._renewed_at:.1f} s")
            return
        if now - self._renewed_at < s.heartbeat_seconds:
            return
        assert self._conn is not None and self.epoch is not None
        try:
            remaining = await self._conn.fetchval(Q["leader_renew"], s.queue_name, self.epoch, s.lease_seconds,
                                                  timeout=max(0.1, self._lease_deadline - now))
        except TimeoutError:
            # No answer before the lease runs out: a dead peer. A fresh connection will tell.
            self._step_down("lease renewal timed out")
            raise
        if remaining is None:
            self._step_down("another worker took the lease over")
            return
        self._renewed_at, self._lease_deadline = now, now + s.lease_seconds

    async def _lead(self) -> None:
        s = self.settings
        while True:
            if self._conn is None or self._conn.is_closed():
                raise ConnectionError("dispatcher lost its leadership connection")
            await self._renew_if_due()
            if not self.is_leader:
                return
            # Every finished attempt wakes the leader (NOTIFY). Under load, a cycle per wake-up
            # would hand out one or two attempts per transaction; cycles at most every
            # MIN_CYCLE_INTERVAL hand out what freed up meanwhile in one (issue #14). The
            # workers' prefetch keeps them busy in between; an idle leader starts at once.
            pause = self._cycle_mono + MIN_CYCLE_INTERVAL - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            self._cycle_mono = time.monotonic()
            dispatched_before = self.dispatched
            filled = await self.cycle()
            # A cycle that filled every free slot may have left more to do at once.
            if not filled:
                until_renewal = self._renewed_at + s.heartbeat_seconds - time.monotonic()
                wait = min(s.dispatch_poll_seconds, until_renewal)
                if self.backlog:
                    # Finished attempts send no NOTIFY (it cost a transaction in every listening
                    # backend per job): while work waits for slots, look again soon, backing off
                    # to BACKLOG_POLL_MAX while nothing frees up (the workers' prefetch covers it).
                    wait = min(wait, self._backlog_wait)
                    self._backlog_wait = min(BACKLOG_POLL_MAX, self._backlog_wait * 2)
                await self._sleep(max(0.0, wait))
            if self.dispatched != dispatched_before:
                self._backlog_wait = MIN_CYCLE_INTERVAL

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _drop(self) -> None:
        self._step_down(None)
        self._listening = False
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()  # a dead peer: do not wait for a goodbye

    # -- dispatching -------------------------------------------------------------------

    async def cycle(self) -> bool:
        """One dispatch cycle under the current epoch; returns True when it used the whole free capacity.

        Every write is fenced by the epoch: a dispatcher that is not (or no longer) the
        leader changes nothing and hands nothing out.
        """
        epoch = self.epoch
        if epoch is None:
            return False
        self.cycles += 1
        self.last_cycle_at = time.time()
        # Shielded: a shutdown that cancels the dispatcher between the committed UPDATE and
        # the push would leave attempts marked dispatched that no queue holds until their
        # lease lapses (and an attempt number spent). The hand-off finishes on its own.
        return await asyncio.shield(self._cycle(epoch))

    async def _cycle(self, epoch: int) -> bool:
        s = self.settings
        # Bounded: a leader stuck waiting for a pooled connection would hold a lease it cannot use.
        async with self.pool.acquire(timeout=max(5.0, s.lease_seconds)) as conn:
            now = time.monotonic()
            if now >= self._housekeeping_due:
                self._housekeeping_due = now + HOUSEKEEPING_INTERVAL
                await self._housekeeping(conn, epoch)
            # Capacity, fair choice and hand-out: one statement, one round trip (issue #14).
            # Only kinds a live worker knows (bq_workers.kinds): others stay queued, never failed.
            row = await conn.fetchrow(Q["dispatch_cycle"], s.max_inflight_per_tenant, str(self.cycles),
                                      s.queue_name, s.heartbeat_seconds * 3, s.lease_seconds, epoch)
        free = row["free"]
        if free <= 0:
            # Full with work waiting: finishes free slots without telling anyone; look soon.
            self.backlog = bool(row["waiting"])
            return False
        handed = list(zip(row["ids"], row["attempts"], strict=True))
        # Pushed once committed: a worker that claims an attempt must find it dispatched.
        await self._push(handed)
        self.dispatched += len(handed)
        self.backlog = len(handed) == free  # there may be more to hand out as slots free up
        return len(handed) == free

    async def _housekeeping(self, conn: asyncpg.Connection, epoch: int) -> None:
        """Scheduled work whose time has come back to the queue, and work whose lease lapsed.

        At most every HOUSEKEEPING_INTERVAL rather than every cycle: neither is urgent to the
        10 ms (a retry waits seconds, a lease lapses in LEASE_SECONDS), and under load the
        two statements and their transaction were half of a cycle's round trips.
        One transaction, one commit; both statements fenced by the epoch.
        """
        s = self.settings
        async with conn.transaction():
            await conn.execute(Q["promote_scheduled"], PROMOTE_BATCH, s.queue_name, epoch)
            reaped = await conn.fetch(Q["reap_leases"], s.max_attempts, REAP_BATCH, s.queue_name, epoch)
        if reaped:
            log.info("dispatcher: lapsed leases returned to the queue", reaped=len(reaped),
                     failed=sum(r["status"] == "failed" for r in reaped), epoch=epoch)

    async def _push(self, rows: list[tuple[Any, int]]) -> None:
        """Hands attempts to arq in one Redis round trip.

        This writes what arq's `enqueue_job` writes, without its per-job WATCH:
        attempt-scoped ids are new by construction, so there is nothing to guard.
        """
        if not rows:
            return
        now_ms = int(time.time() * 1000)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job, attempt in rows:
                    job_id = f"{job}:{attempt}"
                    payload = serialize_job(TASK_NAME, (str(job), attempt), {}, None, now_ms)
                    pipe.psetex(job_key_prefix + job_id, expires_extra_ms, payload)
                    pipe.zadd(self.settings.queue_name, {job_id: now_ms})
                await pipe.execute()
        except BaseException:
            # Not in Redis: give the work back now instead of waiting for the lease.
            with contextlib.suppress(Exception):
                await self.pool.execute(Q["undispatch"], [r[0] for r in rows], [r[1] for r in rows])
            raise
