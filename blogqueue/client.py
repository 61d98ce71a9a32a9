"""The library API: enqueue, read and stop jobs.

These are the functions the HTTP service calls, and the ones another Python
service imports:

    async with Client.open(Settings.from_env()) as bq:
        out = await bq.enqueue("store-1", [{"source": {"type": "keyword", "keyword": "tea"}}])
        job = await bq.get_job(out.jobs[0].id, tenant_id="store-1")

Every call that names a tenant sees only that tenant's jobs; `tenant_id=None`
is the operator's (admin) view. A refused call writes nothing. Results are the
typed objects of blogqueue.models.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import time
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator
from typing import Any, get_args

import asyncpg

from . import admission, aisettings, credits, db, jobviews, metrics, tokens, wixinstall
from .app import App
from .db import Q
from .errors import BacklogFull, Conflict, InvalidInput, NotFound
from .events import EventHub, Feed
from .jobs import PUBLIC_STATUSES, JobSpec, parse_job, public_job, waiting_reason
from .models import (
    Batch,
    Enqueued,
    EnqueuedJob,
    Job,
    JobDetail,
    JobEvent,
    JobPage,
    PublicStatus,
    Retried,
    StageRecord,
    Stopped,
    StreamEvent,
)
from .settings import Settings
from .tokens import Principal

THROUGHPUT_WINDOW_S = 300.0
RECENT_TTL_S = 5.0  # how old the throughput behind estimated_wait_s and Retry-After may be
MAX_EVENTS = 200
MAX_PAGE = 200


class Client:
    """The library API. Open one with `async with Client.open(settings) as bq:`; or share a
    pool you own with `Client(settings, pool)` (closing the client then leaves the pool open).
    `app` is the registry jobs are validated against (the built-in `App()` when None)."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, *, owns_pool: bool = False,
                 app: App | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.app = app if app is not None else App()  # kinds, sources and models are validated against it
        self._owns_pool = owns_pool
        # One enqueue per tenant at a time in this process, before taking a connection:
        # waiting on the tenant's advisory lock with a pooled connection in hand would
        # let one busy tenant hold the whole pool while other tenants' reads queue.
        self._tenant_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._recent_at = 0.0
        self._recent_figures: tuple[float | None, int] = (None, 0)
        self._admissions = admission.Batcher(pool, settings, self.app, settings.max_batch_size)
        self._tokens = tokens.TokenCache(settings.token_cache_seconds, settings.token_cache_size)
        self._events: EventHub | None = None  # the event stream's poller, started by the first reader
        self._views: jobviews.JobViewCache | None = None  # encoded job views (get_job_json), made on first use

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, app: App | None = None, **pool_options: Any) -> AsyncIterator[Client]:
        """A client with a pool of its own, closed on leaving the block.

        `pool_options` go to `blogqueue.db.create_pool` (e.g. `min_size=0, timeout=5`).
        """
        client = cls(settings, await db.create_pool(settings, **pool_options), owns_pool=True, app=app)
        try:
            yield client
        finally:
            await client.close()

    @classmethod
    async def connect(cls, settings: Settings, app: App | None = None) -> Client:
        """Deprecated: use `async with Client.open(settings) as bq:`. Removed after 0.2."""
        warnings.warn("Client.connect() is deprecated; use `async with Client.open(settings) as bq:`",
                      DeprecationWarning, stacklevel=2)
        return cls(settings, await db.create_pool(settings), owns_pool=True, app=app)

    async def close(self) -> None:
        if self._events is not None:
            await self._events.close()
        if self._owns_pool:
            await self.pool.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- enqueue ---------------------------------------------------------------

    async def enqueue(self, tenant_id: str, jobs: list[dict[str, Any]] | dict[str, Any],
                      *, user_id: str | None = None) -> Enqueued:
        """Enqueue one job or many, atomically: all are accepted or none is.

        Returns `batch_id`, the jobs (`id`, `status`, `replayed` when an
        `idempotency_key` matched an existing job) and `estimated_wait_s`, the
        time until the last of them should start at recent throughput (None
        while nothing finished in the last five minutes).
        """
        _check_tenant(tenant_id)
        raw = [jobs] if isinstance(jobs, dict) else jobs
        if not isinstance(raw, list) or not raw:
            raise InvalidInput("jobs must be a non-empty list of job objects", details={"field": "jobs"})
        if len(raw) > self.settings.max_batch_size:
            raise InvalidInput(f"at most {self.settings.max_batch_size} jobs per request",
                               details={"field": "jobs", "limit": self.settings.max_batch_size})
        specs = [parse_job(r, self.app, f"jobs[{i}]" if len(raw) > 1 else "job") for i, r in enumerate(raw)]

        if self.settings.credits_enabled or any(s.idempotency_key for s in specs):
            return await self._enqueue_locked(tenant_id, user_id, specs)
        # The common case, no idempotency key and no credits: no transaction block, no lock
        # held across a round trip; concurrent ones share a statement (blogqueue.admission).
        request = admission.Request(tenant_id, user_id, specs, [uuid.uuid4() for _ in specs])
        outcome = await self._admissions.submit(request)
        return await self._enqueued(request, outcome, request.ids, set(range(len(specs))), {})

    async def _enqueue_locked(self, tenant_id: str, user_id: str | None, specs: list[JobSpec]) -> Enqueued:
        """Enqueue with idempotency keys or credits: under the tenant's lock, so a key resolves to
        one job and the balance read is still true at commit; the insert is the same statement."""
        lock = self._tenant_locks.setdefault(tenant_id, asyncio.Lock())
        async with lock, self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["lock_tenant_enqueue"], tenant_id)
            ids, new, status = await self._resolve_idempotency(conn, tenant_id, specs)
            if not new:
                batch_id = await conn.fetchval("SELECT batch_id FROM bq_jobs WHERE id = $1", ids[0])
                return await self._enqueued(None, None, ids, new, status, batch_id)
            picked = sorted(new)
            request = admission.Request(tenant_id, user_id, [specs[n] for n in picked], [ids[n] for n in picked])
            outcome = (await admission.insert(conn, self.settings, self.app, [request]))[0]
            if outcome.admitted:
                # After the insert (the ledger references the jobs); refusing rolls the insert back.
                await credits.reserve(conn, self.settings, tenant_id, [(ids[n], specs[n].kind) for n in picked],
                                      self.app, lanes=[specs[n].lane or self.settings.default_lane for n in picked])
        return await self._enqueued(request, outcome, ids, new, status)

    async def _enqueued(self, request: admission.Request | None, outcome: admission.Outcome | None,
                        ids: list[uuid.UUID], new: set[int], status: dict[uuid.UUID, PublicStatus],
                        batch_id: uuid.UUID | None = None) -> Enqueued:
        """The answer: BacklogFull if the new jobs were refused, else the jobs and the estimated wait."""
        wait = None
        if request is not None and outcome is not None:
            counts = {"tenant": outcome.tenant_live, "total": outcome.total_live}
            rate, tenants = await self._recent()
            if not outcome.admitted:
                raise self._backlog_full(counts, len(new), rate)
            status = {**status, **outcome.statuses}
            batch_id = request.batch_id
            wait = _estimate_wait({**counts, "tenants": tenants}, len(new), rate)
        # Built without validation: every field is ours (ids we made, statuses the statement
        # returned, a wait >= 0). Validating a one-job answer cost more than the rest of the
        # enqueue's Python work after the insert (bench-http, enqueue 1 job).
        return Enqueued.model_construct(
            batch_id=str(batch_id), jobs=[EnqueuedJob(str(i), status[i], n not in new) for n, i in enumerate(ids)],
            estimated_wait_s=wait)

    async def _resolve_idempotency(
            self, conn: asyncpg.Connection, tenant_id: str, specs: list[JobSpec],
    ) -> tuple[list[uuid.UUID], set[int], dict[uuid.UUID, PublicStatus]]:
        """Give each spec a job id; returns the ids, the indexes that are new jobs and the
        public status of the jobs that already existed."""
        keys = [s.idempotency_key for s in specs if s.idempotency_key]
        existing = {r["idempotency_key"]: r for r in
                    await conn.fetch(Q["find_by_idempotency_keys"], tenant_id, keys)} if keys else {}
        seen: dict[str, tuple[uuid.UUID, str]] = {
            k: (r["id"], r["request_hash"]) for k, r in existing.items()}
        ids: list[uuid.UUID] = []
        new: set[int] = set()
        for n, spec in enumerate(specs):
            key = spec.idempotency_key
            if key and key in seen:
                job_id, digest = seen[key]
                if digest != spec.request_hash():
                    raise Conflict(f"idempotency_key {key!r} was already used for a different job",
                                   details={"idempotency_key": key, "job_id": str(job_id)})
                ids.append(job_id)
                continue
            job_id = uuid.uuid4()
            if key:
                seen[key] = (job_id, spec.request_hash())
            ids.append(job_id)
            new.add(n)
        return ids, new, {r["id"]: r["status"] for r in existing.values()}

    def _backlog_full(self, counts: dict[str, int], adding: int, rate: float | None) -> BacklogFull:
        """The refusal of `adding` jobs that bq_backlog_admit did not admit: names the limit passed
        by most (the tenant's on a tie) and a Retry-After from recent throughput."""
        s = self.settings
        over = [(counts["total"] + adding - s.max_backlog, "global", s.max_backlog),
                (counts["tenant"] + adding - s.max_tenant_backlog, "tenant", s.max_tenant_backlog)]
        excess, scope, limit = max(over)
        retry_after = 30 if not rate else max(1, min(3600, math.ceil(excess / rate)))
        return BacklogFull(
            f"the {scope} backlog limit of {limit} jobs would be passed; retry later",
            retry_after=retry_after,
            details={"scope": scope, "limit": limit, "backlog": counts[scope if scope == "tenant" else "total"],
                     "requested": adding, "retry_after_s": retry_after})

    async def _recent(self) -> tuple[float | None, int]:
        """(jobs finished per second over THROUGHPUT_WINDOW_S, tenants with a backlog), for the
        estimated wait and Retry-After only: read at most every RECENT_TTL_S per client, since
        counting the finished jobs of five minutes on every enqueue cost more than the enqueue."""
        now = time.monotonic()
        if now - self._recent_at > RECENT_TTL_S:
            self._recent_at = now  # one refresh at a time; the others use the previous figures
            try:
                async with self.pool.acquire() as conn:
                    n = await conn.fetchval(Q["finished_since"], THROUGHPUT_WINDOW_S)
                    tenants = await conn.fetchval(Q["backlog_tenants"])
            except BaseException:
                self._recent_at = 0.0
                raise
            self._recent_figures = (n / THROUGHPUT_WINDOW_S if n else None, tenants)
        return self._recent_figures

    # -- read ------------------------------------------------------------------

    async def get_job(self, job_id: str, tenant_id: str | None = None) -> JobDetail:
        """One job with its stage outputs and progress events; NotFound if not the tenant's."""
        jid = _uuid(job_id, "job")
        # One statement (events, stages and the wait reason's worker check as subqueries):
        # a job view is the service's most frequent read.
        row = await self.pool.fetchrow(Q["get_job_detail"], jid, tenant_id, MAX_EVENTS,
                                       self.settings.heartbeat_seconds * 3)
        if row is None:
            raise NotFound("no such job", details={"id": job_id})
        job = dict(row)
        return JobDetail.model_validate({
            **public_job(job),
            "wait_reason": waiting_reason(job, job["kind_served"]),
            "events": [JobEvent(at=e["at"], attempt=e["attempt"], event=e["event"], detail=e["detail"] or None)
                       for e in job["events"]],
            "stages": {s["stage"]: StageRecord(attempt=s["attempt"], at=s["at"]) for s in job["stages"]},
        })

    async def get_job_json(self, job_id: str, tenant_id: str | None = None) -> bytes:
        """`get_job` as its JSON body (the model's `model_dump_json()`), for the HTTP service.

        Served from a per-process cache invalidated by the event stream (blogqueue.jobviews): a
        change that writes an event shows within EVENTS_POLL_SECONDS + 1 s (usually one poll),
        one without (a dispatch's attempt count, wait_reason) within JOB_CACHE_SECONDS; this
        client's own stops and retries at once. JOB_CACHE_SECONDS=0 reads every view.
        """
        jid = _uuid(job_id, "job")
        if self.settings.job_cache_seconds <= 0:
            return (await self.get_job(job_id, tenant_id)).model_dump_json().encode()

        async def load() -> tuple[str, bytes]:
            # Unscoped: one entry serves every reader allowed to see the job (checked below).
            view = await self.get_job(job_id)  # as given: a NotFound names the id the caller sent
            return view.tenant_id, view.model_dump_json().encode()

        if self._views is None:
            self._views = jobviews.JobViewCache(self._hub(), self.settings.job_cache_seconds,
                                                self.settings.job_cache_bytes)
        owner, body = await self._views.get(jid, tenant_id, load)
        if tenant_id is not None and owner != tenant_id:
            raise NotFound("no such job", details={"id": job_id})
        return body

    def _changed(self, job_ids: list[uuid.UUID]) -> None:
        """This client wrote these jobs: their cached views go now (read-your-writes in-process)."""
        if self._views is not None:
            self._views.invalidate(job_ids)

    async def list_jobs(self, tenant_id: str | None, *, status: str | None = None,
                        batch_id: str | None = None, limit: int = 50,
                        cursor: str | None = None) -> JobPage:
        """The tenant's jobs, newest first. `next_cursor` is None on the last page.

        Pages follow an insertion sequence, so jobs enqueued while paging never
        push an already listed job onto the next page, nor skip one.
        """
        if status is not None and status not in PUBLIC_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(PUBLIC_STATUSES)}",
                               details={"field": "status"})
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}", details={"field": "limit"})
        bid = _uuid(batch_id, "batch") if batch_id is not None else None
        after = _decode_cursor(cursor, tenant_id) if cursor else None
        rows = await self.pool.fetch(Q["list_jobs"], tenant_id, status, bid, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return JobPage(jobs=[Job.model_validate(public_job(dict(r))) for r in rows],
                       next_cursor=_encode_cursor(rows[-1]["seq"], tenant_id) if more else None)

    async def get_batch(self, batch_id: str, tenant_id: str | None = None) -> Batch:
        bid = _uuid(batch_id, "batch")
        async with self.pool.acquire() as conn:
            batch = await conn.fetchrow(Q["get_batch"], bid, tenant_id)
            if batch is None:
                raise NotFound("no such batch", details={"id": batch_id})
            counts = {r["status"]: r["n"] for r in await conn.fetch(Q["batch_counts"], bid)}
        return Batch(id=str(batch["id"]), tenant_id=batch["tenant_id"], created_at=batch["created_at"],
                     total=batch["job_count"], counts={s: counts.get(s, 0) for s in get_args(PublicStatus)},
                     finished=sum(counts.get(s, 0) for s in ("done", "failed", "cancelled"))
                     == batch["job_count"])

    # -- credits ---------------------------------------------------------------

    async def credit_balance(self, tenant_id: str) -> dict[str, Any]:
        """`balance` (spendable), `reserved` (held by unfinished jobs), `granted`, `charged`."""
        _check_tenant(tenant_id)
        return await credits.balance(self.pool, tenant_id)

    async def grant_credits(self, tenant_id: str, amount: int, note: str | None = None) -> dict[str, Any]:
        _check_tenant(tenant_id)
        await credits.grant(self.pool, tenant_id, amount, note)
        return await credits.balance(self.pool, tenant_id)

    # -- stop ------------------------------------------------------------------

    async def stop_job(self, job_id: str, tenant_id: str | None = None) -> Stopped:
        """Stop one job. Stopping a finished job changes nothing and is not an error."""
        jid = _uuid(job_id, "job")
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT 1 FROM bq_jobs WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
                                   jid, tenant_id) is None:
                raise NotFound("no such job", details={"id": job_id})
        out = await self._stop(Q["stoppable_job"], jid, tenant_id)
        return out.model_copy(update={"job": await self.get_job(job_id, tenant_id)})

    async def stop_batch(self, batch_id: str, tenant_id: str | None = None) -> Stopped:
        bid = _uuid(batch_id, "batch")
        if await self.pool.fetchrow(Q["get_batch"], bid, tenant_id) is None:
            raise NotFound("no such batch", details={"id": batch_id})
        return await self._stop(Q["stoppable_batch"], bid, tenant_id)

    async def stop_tenant(self, tenant_id: str) -> Stopped:
        _check_tenant(tenant_id)
        return await self._stop(Q["stoppable_tenant"], tenant_id)

    async def _stop(self, select: str, *args: Any) -> Stopped:
        """Cancels waiting work now; running work is flagged and its worker told to abort it."""
        async with self.pool.acquire() as conn, conn.transaction():
            ids = [r["id"] for r in await conn.fetch(select, *args)]
            rows = await conn.fetch(Q["stop_jobs"], ids) if ids else []
            stopping = sum(1 for r in rows if r["status"] == "running")
            if stopping:
                await conn.execute(Q["notify_cancel"], "check")
        self._changed(ids)  # after the commit (blogqueue.jobviews: a read begun before it is not kept)
        return Stopped(cancelled=len(rows) - stopping, stopping=stopping)

    # -- retry -----------------------------------------------------------------

    async def retry_batch(self, batch_id: str, tenant_id: str | None = None) -> Retried:
        """Queues the batch's failed jobs again; NotFound if the batch is not the tenant's.

        Each job resumes at its first unsaved stage (saved outputs are kept, a paid call whose
        result was saved is not made again). Its failures start from 0, so the retry schedule
        applies afresh; its attempt number keeps counting up (attempts are fenced by it). Like an
        enqueue it passes the backlog limits (BacklogFull) and, where credits are on, reserves the
        job's cost again (InsufficientCredits): all the failed jobs are queued again, or none is.
        """
        bid = _uuid(batch_id, "batch")
        batch = await self.pool.fetchrow(Q["get_batch"], bid, tenant_id)
        if batch is None:
            raise NotFound("no such batch", details={"id": batch_id})
        owner = batch["tenant_id"]
        lock = self._tenant_locks.setdefault(owner, asyncio.Lock())
        ids: list[uuid.UUID] = []
        async with lock, self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["lock_tenant_enqueue"], owner)
            failed = await conn.fetch(Q["retry_candidates"], bid)
            if failed:
                # The same admission as an enqueue's (migration 013): exact under concurrent enqueues.
                admit = await conn.fetchrow(Q["backlog_admit"], owner, len(failed),
                                            self.settings.max_tenant_backlog, self.settings.max_backlog)
                if not admit["admitted"]:
                    counts = {"tenant": admit["tenant_live"], "total": admit["total_live"]}
                    raise self._backlog_full(counts, len(failed), (await self._recent())[0])
                await credits.reserve_again(conn, self.settings, owner, [
                    (r["id"], r["reserved"], r["retries"] + 1) for r in failed
                    if r["reserved"] is not None and r["released"]])
                ids = [r["id"] for r in await conn.fetch(Q["retry_jobs"], [r["id"] for r in failed])]
                await conn.execute(Q["notify_dispatcher"], "retry")
        self._changed(ids)
        return Retried(batch_id=str(bid), retried=len(ids), job_ids=[str(i) for i in ids])

    # -- the event stream ------------------------------------------------------

    async def event_feed(self, tenant_id: str | None, *, batch_id: str | None = None,
                         after: int | None = None) -> Feed:
        """A reader of the event stream (see `events`); NotFound for a batch not the tenant's.

        Close it with `feed.close()` (or `async with`). The HTTP stream reads one of these.
        """
        if tenant_id is not None:
            _check_tenant(tenant_id)
        if batch_id is not None:
            bid = _uuid(batch_id, "batch")
            if await self.pool.fetchrow(Q["get_batch"], bid, tenant_id) is None:
                raise NotFound("no such batch", details={"id": batch_id})
            batch_id = str(bid)
        if after is not None and (not isinstance(after, int) or after < 0):
            raise InvalidInput("after must be an event id (a non-negative integer)", details={"field": "after"})
        return await self._hub().feed(tenant_id, batch_id=batch_id, after=after)

    def _hub(self) -> EventHub:
        if self._events is None:
            self._events = EventHub(self.settings, self.pool)
        return self._events

    async def events(self, tenant_id: str | None, *, batch_id: str | None = None,
                     after: int | None = None) -> AsyncIterator[StreamEvent]:
        """Every change of the tenant's jobs (None: every tenant's), in order, as it happens.

        Starts with the next event, or right after event id `after` (resume: nothing is missed,
        nothing repeated). One poller per client serves all its readers (blogqueue/events.py).
        A reader that falls `EVENTS_BUFFER` events behind gets StreamLagged, whose
        `last_event_id` is where to resume.
        """
        feed = await self.event_feed(tenant_id, batch_id=batch_id, after=after)
        try:
            while True:
                ev = await feed.get()
                assert ev is not None  # no timeout: get waits for the next event
                yield ev
        finally:
            feed.close()

    # -- AI settings -----------------------------------------------------------

    async def get_ai_settings(self, tenant_id: str, user_id: str | None = None) -> dict[str, Any]:
        """The user's preferred model and stored provider keys, masked (`sk-…abcd`)."""
        _check_tenant(tenant_id)
        _check_user(user_id)
        return await aisettings.get(self.pool, tenant_id, user_id)

    async def put_ai_settings(self, tenant_id: str, user_id: str | None, body: Any) -> dict[str, Any]:
        """Sets the preferred model and/or stores (encrypted) or deletes keys; see blogqueue.aisettings."""
        _check_tenant(tenant_id)
        _check_user(user_id)
        return await aisettings.put(self.pool, self.settings, tenant_id, user_id, body, self.app)

    # -- Wix installation (app mode: which Wix app instance this tenant is; blogqueue.wixinstall) ---

    async def get_wix_installation(self, tenant_id: str) -> dict[str, Any]:
        _check_tenant(tenant_id)
        return await wixinstall.get(self.pool, tenant_id)

    async def put_wix_installation(self, tenant_id: str, body: Any) -> dict[str, Any]:
        """`{"instance_id": ...}` links the tenant; 409 `wix_instance_taken` if another tenant has it."""
        _check_tenant(tenant_id)
        return await wixinstall.put(self.pool, tenant_id, body)

    async def delete_wix_installation(self, tenant_id: str) -> dict[str, Any]:
        _check_tenant(tenant_id)
        return await wixinstall.delete(self.pool, tenant_id)


    # -- for the service: tokens, readiness, metrics --------------------------

    async def verify_token(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked API token; None otherwise.

        Verified tokens are cached for BLOGQUEUE_TOKEN_CACHE_SECONDS (blogqueue.tokens.TokenCache):
        a revoked token is refused at most that long after the revocation commits.
        """
        return await self._tokens.verify(self.pool, token)

    async def ping(self) -> None:
        """One round trip to PostgreSQL; raises what the driver raises when it cannot."""
        await self.pool.fetchval("SELECT 1")

    async def metrics(self) -> dict[str, Any]:
        """The figures behind `/v1/metrics` read from PostgreSQL (see blogqueue.metrics.collect)."""
        return await metrics.collect(self.pool, self.settings)


def _check_user(user_id: str | None) -> None:
    if user_id is not None and (not isinstance(user_id, str) or not 0 < len(user_id) <= 200):
        raise InvalidInput("user_id must be a string of 1 to 200 characters", details={"field": "user_id"})


def _check_tenant(tenant_id: str) -> None:
    if not isinstance(tenant_id, str) or not 0 < len(tenant_id) <= 200:
        raise InvalidInput("tenant_id must be a string of 1 to 200 characters", details={"field": "tenant_id"})


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"no such {what}", details={"id": str(value)}) from None


def _tenant_tag(tenant_id: str | None) -> str:
    return hashlib.sha256((tenant_id or "*").encode()).hexdigest()[:12]


def _encode_cursor(seq: int, tenant_id: str | None) -> str:
    raw = json.dumps({"s": seq, "t": _tenant_tag(tenant_id)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, tenant_id: str | None) -> int:
    """A cursor is bound to the tenant that got it; any other answers NotFound."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        seq, tag = int(data["s"]), data["t"]
    except (ValueError, KeyError, TypeError):
        raise NotFound("no such cursor", details={"field": "cursor"}) from None
    if tag != _tenant_tag(tenant_id):
        raise NotFound("no such cursor", details={"field": "cursor"})
    return seq


def _estimate_wait(counts: dict[str, int], adding: int, rate: float | None) -> float | None:
    """Seconds until the last new job should start at recent throughput.

    The fair dispatcher shares throughput between tenants with work, so a small
    tenant waits for about its own backlog times the number of active tenants,
    never more than for the whole backlog.
    """
    if not rate:
        return None
    tenants = counts["tenants"] + (0 if counts["tenant"] else 1)
    ahead = min(counts["total"] + adding, (counts["tenant"] + adding) * max(1, tenants))
    return round(ahead / rate, 1)
