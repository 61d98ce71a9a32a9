"""The dispatcher: moves ready work from PostgreSQL into arq, fairly and bounded.

One runs inside every worker process; a session advisory lock on a dedicated
connection makes one of them the leader, and the others wait to take over.
The leader wakes on NOTIFY (`blogqueue_dispatch`: an enqueue, a finished
attempt) or after `DISPATCH_POLL_SECONDS`, and each cycle:

1. promotes scheduled work whose `run_at` has come;
2. returns work whose lease lapsed to the queue (a killed worker, a flushed Redis);
3. tops in-flight work up to the live workers' capacity (their concurrency
   plus `DISPATCH_PREFETCH` each, from their heartbeats), choosing with the
   `fair_candidates` query (weighted round robin between tenants, per-tenant
   cap, work-conserving);
4. marks the chosen jobs dispatched (attempt + 1, a lease) and pushes them to
   arq as `<job>:<attempt>`.

Keeping in-flight work at the workers' capacity, not at the backlog, is what
makes fairness possible: arq's queue is FIFO, so whatever sits in it cannot be
reordered when a small tenant arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms, job_key_prefix
from arq.jobs import serialize_job

from . import db
from .db import Q
from .settings import Settings

log = logging.getLogger("blogqueue.dispatcher")

TASK_NAME = "run_attempt"
PROMOTE_BATCH = 5000
REAP_BATCH = 1000


class Dispatcher:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, redis: ArqRedis) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.is_leader = False
        self.dispatched = 0
        self.cycles = 0
        self.last_cycle_at = 0.0
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    def wake(self, *_: Any) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled: campaigns for leadership, then dispatches while leader."""
        while True:
            try:
                await self._campaign()
                if self.is_leader:
                    await self._lead()
                else:
                    await asyncio.sleep(self.settings.dispatch_poll_seconds * 2)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError) as exc:
                # PostgreSQL or Redis went away: drop leadership, wait, try again.
                log.warning("dispatcher: %s: %s; retrying", type(exc).__name__, exc)
                await self._drop()
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self._drop()

    async def _campaign(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self.is_leader = False
            self._conn = await db.connect(self.settings)
        if not self.is_leader:
            self.is_leader = bool(await self._conn.fetchval(Q["try_leader_lock"], self.settings.queue_name))
            if self.is_leader:
                # Only the leader listens: followers have nothing to do on a wake-up.
                await self._conn.add_listener("blogqueue_dispatch", self.wake)
                log.info("dispatcher: this worker is now the leader")

    async def _lead(self) -> None:
        while True:
            if self._conn is None or self._conn.is_closed():
                raise ConnectionError("dispatcher lost its lock connection")
            self._wake.clear()
            filled = await self.cycle()
            # A cycle that filled every free slot may have left more to do at once.
            if not filled:
                await self._sleep(self.settings.dispatch_poll_seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _drop(self) -> None:
        self.is_leader = False
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def cycle(self) -> bool:
        """One dispatch cycle; returns True when it used the whole free capacity."""
        s = self.settings
        self.cycles += 1
        self.last_cycle_at = time.time()
        async with self.pool.acquire() as conn:
            await conn.execute(Q["promote_scheduled"], PROMOTE_BATCH)
            reaped = await conn.fetch(Q["reap_leases"], s.max_attempts, REAP_BATCH)
            if reaped:
                log.info("dispatcher: %d lapsed lease(s) returned to the queue", len(reaped))
            cap = await conn.fetchrow(Q["live_capacity"], s.queue_name, s.heartbeat_seconds * 3)
            inflight = await conn.fetchval(Q["inflight_total"])
            free = cap["capacity"] - inflight
            if free <= 0:
                return False
            # Only kinds a live worker knows (bq_workers.kinds): others stay queued, never failed.
            picked = await conn.fetch(Q["fair_candidates"], free, s.max_inflight_per_tenant, str(self.cycles),
                                      s.queue_name, s.heartbeat_seconds * 3)
            if not picked:
                return False
        # Shielded: a shutdown that cancels the dispatcher between the committed UPDATE and
        # the push would leave attempts marked dispatched that no queue holds until their
        # lease lapses (and an attempt number spent). The hand-off finishes on its own.
        handed = await asyncio.shield(self._hand_out([r["id"] for r in picked]))
        return handed == free

    async def _hand_out(self, ids: list[Any]) -> int:
        """Marks the picked jobs dispatched and pushes them to arq; returns how many."""
        rows = await self.pool.fetch(Q["dispatch"], ids, self.settings.lease_seconds)
        await self._push(rows)
        self.dispatched += len(rows)
        return len(rows)

    async def _push(self, rows: list[asyncpg.Record]) -> None:
        """Hands attempts to arq in one Redis round trip.

        This writes what arq's `enqueue_job` writes, without its per-job WATCH:
        attempt-scoped ids are new by construction, so there is nothing to guard.
        """
        if not rows:
            return
        now_ms = int(time.time() * 1000)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for r in rows:
                    job_id = f"{r['id']}:{r['attempt']}"
                    payload = serialize_job(TASK_NAME, (str(r["id"]), r["attempt"]), {}, None, now_ms)
                    pipe.psetex(job_key_prefix + job_id, expires_extra_ms, payload)
                    pipe.zadd(self.settings.queue_name, {job_id: now_ms})
                await pipe.execute()
        except BaseException:
            # Not in Redis: give the work back now instead of waiting for the lease.
            with contextlib.suppress(Exception):
                await self.pool.execute(Q["undispatch"], [r["id"] for r in rows])
            raise
