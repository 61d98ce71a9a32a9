"""Admission and insert of new jobs: the backlog limits, checked and kept in one statement.

`insert` runs queries.sql `enqueue_jobs` for a group of enqueue requests: each is
admitted or refused in order against MAX_TENANT_BACKLOG and MAX_BACKLOG (counters of
migration 013, under one admission lock), and the admitted ones' jobs are inserted.

`Batcher` groups the concurrent enqueues of one process. Admissions are serial (that is
what makes the limits exact), and each one's commit waits for a WAL flush; one request
per statement left every request waiting for all the flushes before it (about 3 ms each
on a busy disk: ~300 enqueues/s whatever the CPU). Grouped, the requests that arrived
while a statement ran share the next one and its flush. A request alone goes at once:
grouping adds no wait, it only uses the wait there already is.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .app import App
from .db import Q
from .jobs import JobSpec
from .settings import Settings


@dataclass
class Request:
    """One enqueue's new jobs (all admitted or none)."""

    tenant_id: str
    user_id: str | None
    specs: list[JobSpec]
    ids: list[uuid.UUID]
    batch_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class Outcome:
    """`admitted`, else nothing was written; the backlog it was checked against; new jobs' statuses."""

    admitted: bool
    tenant_live: int
    total_live: int
    statuses: dict[uuid.UUID, Any]


async def insert(conn: asyncpg.Connection | asyncpg.Pool, settings: Settings, app: App,
                 requests: list[Request]) -> list[Outcome]:
    """Admit and insert a group of requests in one statement (queries.sql enqueue_jobs).

    A job without an idempotency key stores an empty request_hash: the hash is only ever
    compared when a later request names the same key (Client._resolve_idempotency), and
    computing it (JSON with sorted keys, SHA-256) took ~10 us of the ~200 us of Python a one-job
    enqueue costs the service (bench-http, this 2-core VM).
    """
    specs = [(n, s, i) for n, r in enumerate(requests, start=1) for s, i in zip(r.specs, r.ids, strict=True)]
    raw = await conn.fetchval(
        Q["enqueue_jobs"],
        [i for _, _, i in specs], [s.kind for _, s, _ in specs], [s.stored(settings.default_lane) for _, s, _ in specs],
        [s.model for _, s, _ in specs], [s.priority for _, s, _ in specs],
        [s.idempotency_key for _, s, _ in specs],
        [s.request_hash() if s.idempotency_key else "" for _, s, _ in specs],
        [s.run_at for _, s, _ in specs], [app.kinds[s.kind].stage_names[0] for _, s, _ in specs],
        [n for n, _, _ in specs],
        [r.batch_id for r in requests], [r.tenant_id for r in requests], [r.user_id for r in requests],
        [len(r.specs) for r in requests], settings.max_tenant_backlog, settings.max_backlog)
    statuses = {uuid.UUID(k): v for k, v in (raw["statuses"] or {}).items()}
    return [Outcome(a["admitted"], a["tenant_live"], a["total_live"],
                    {i: statuses[i] for i in r.ids if i in statuses})
            for a, r in zip(raw["admit"], requests, strict=True)]


class Batcher:
    """Groups concurrent `submit`s into `insert` calls, one at a time, at most `max_jobs` jobs each."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, app: App, max_jobs: int) -> None:
        self.pool = pool
        self.settings = settings
        self.app = app
        self.max_jobs = max_jobs
        self._pending: deque[tuple[Request, asyncio.Future[Outcome]]] = deque()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, request: Request) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await future

    def _send(self) -> tuple[list[tuple[Request, asyncio.Future[Outcome]]], asyncio.Task[list[Outcome]]] | None:
        """Takes the next group and starts its statement; None when nothing is waiting."""
        group: list[tuple[Request, asyncio.Future[Outcome]]] = []
        jobs = 0
        while self._pending and (not group or jobs + len(self._pending[0][0].specs) <= self.max_jobs):
            request, future = self._pending.popleft()
            if future.done():  # its caller gave up before it was sent: not inserted
                continue
            group.append((request, future))
            jobs += len(request.specs)
        if not group:
            return None
        return group, asyncio.create_task(insert(self.pool, self.settings, self.app, [r for r, _ in group]))

    async def _drain(self) -> None:
        flight = self._send()
        while flight is not None:
            group, statement = flight
            try:
                outcomes = await statement
            except asyncio.CancelledError:
                for _, future in group:
                    future.cancel()
                raise
            except Exception as exc:  # every request of the group failed with the statement
                flight = self._send()
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            # The next statement is started before this group's callers are woken: its task runs
            # first, so PostgreSQL works on the next group while this process writes the answers
            # of the last one (woken first, a group of callers writing their answers ran before
            # the next statement was sent). Measured: bench-http enqueue 1 job, 6 alternating
            # runs against the previous order, +9% on average; within this machine's noise.
            flight = self._send()
            for (_, future), outcome in zip(group, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
