"""The arq worker: claims attempts, runs pipelines, heartbeats, hosts a dispatcher.

Run it with `blogqueue worker [--app MODULE:ATTR]` or `arq blogqueue.worker.WorkerSettings`
(which reads `BLOGQUEUE_APP`). A worker runs the kinds of its app (blogqueue.App) and
records them in `bq_workers.kinds`, so the dispatcher hands out only kinds a live
worker knows.

arq settings chosen on purpose (DESIGN §9):
- `max_jobs` = WORKER_CONCURRENCY; the dispatcher never puts more in arq's
  queue than the live workers' concurrency plus a small prefetch.
- `poll_delay` 0.01 s: arq's default 0.5 s would add up to half a second to
  every hand-off and cap a worker near 20 short jobs/s; at 0.05 s a slot freed
  between polls still idled 25 ms on average, so two workers on short jobs left
  a fifth of the CPU unused (issue #14, docs/benchmarks.md). An idle worker's
  100 polls a second cost one cheap Redis command each.
- `max_tries` 1, `retry_jobs` False, `keep_result` 0: retries, results and
  lapsed work are PostgreSQL's business. A late arq re-run of an attempt
  finds it no longer `dispatched` and does nothing.
- `job_completion_wait` = SHUTDOWN_GRACE_SECONDS: SIGTERM lets running work
  finish that long; what is still running then is released to the queue
  without using up an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import time
import uuid
from typing import Any

import asyncpg
import structlog
import uvloop
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import RedisError

from . import db
from .app import App, load
from .db import Q
from .dispatcher import TASK_NAME, Dispatcher
from .errors import FatalError, JobError, RateLimited
from .groupcommit import GroupCommit, by_id
from .pipeline import Parked, Run, StaleAttempt, StopRequested, run_pipeline
from .settings import Settings, SettingsError

log = structlog.get_logger("blogqueue.worker")
_arq_log = logging.getLogger("arq.worker")  # ArqWorker's lines under arq's own logger, like the code it replaces

_SECRETISH = re.compile(r"\b(sk|pk|rk|key|tok|token|r8)[-_][A-Za-z0-9_\-]{8,}\b", re.IGNORECASE)


def redact(text: str) -> str:
    """Masks anything shaped like an API key in an error text before it is stored."""
    return _SECRETISH.sub(lambda m: m.group(0)[:3] + "…", text)


class WorkerRuntime:
    """Everything one worker process holds: the pool, its running attempts, counters."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, dispatcher: Dispatcher, app: App) -> None:
        self.settings = settings
        self.app = app
        self.pool = pool
        self.dispatcher = dispatcher
        self.worker_id = dispatcher.holder  # the dispatcher's lease names this worker
        self.running: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self.stop_requested: set[str] = set()
        self.lost: set[str] = set()  # running attempts whose lease another worker's leader reaped
        self.attempts: set[asyncio.Task[Any]] = set()  # the tasks running `run_attempt`, for wind_down
        self.done = 0
        self.failed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._listen_conn: asyncpg.Connection | None = None
        self._status_mark = (time.monotonic(), 0, 0)
        self.claims = Claims(pool, self.worker_id, settings.lease_seconds)
        self.writes = Writes(pool)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await self.pool.execute(Q["register_worker"], self.worker_id, s.queue_name, socket.gethostname(),
                                os.getpid(), s.worker_concurrency, s.dispatch_prefetch, list(self.app.kinds))
        await self._listen()
        self._tasks = [asyncio.create_task(self._heartbeats(), name="blogqueue-heartbeat"),
                       asyncio.create_task(self.dispatcher.run(), name="blogqueue-dispatcher")]
        # Batch lane (blogqueue/batchlane.py): collectors and poller, acting while this worker leads.
        from .batchlane import BatchLane

        self._tasks.append(asyncio.create_task(BatchLane(s, self.pool, self.app, self.dispatcher).run(),
                                               name="blogqueue-batch-lane"))
        log.info("worker started", worker=self.worker_id, concurrency=s.worker_concurrency, queue=s.queue_name)

    async def wind_down(self, timeout: float) -> None:
        """Lets the attempts still running end on their own, then cancels what is left after `timeout`.

        arq's own shutdown waits for its jobs, but not when its loop died of a lost Redis: its
        close gives up at the first job whose Redis bookkeeping fails, and the loop would be
        closed under the others mid-stage. Their work only needs PostgreSQL, so each ends as it
        would have: its checkpoint saved or refused (a lapsed lease), its finish written. One
        still running after `timeout` is cancelled: it gives its attempt back unpaid.
        """
        pending = {t for t in self.attempts if not t.done()}
        if not pending:
            return
        log.info("winding down the attempts still running", attempts=len(pending), timeout_s=timeout)
        _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.dispatcher.close()
        await self._close_listen()
        with contextlib.suppress(Exception):
            # Bounded: a worker shutting down because PostgreSQL vanished must not wait on it.
            await self.pool.execute(Q["stop_worker"], self.worker_id, timeout=2)
        log.info("worker stopped", worker=self.worker_id, done=self.done, failed=self.failed,
                 dispatcher_cycles=self.dispatcher.cycles, dispatched=self.dispatcher.dispatched,
                 claim_statements=self.claims.statements, checkpoint_statements=self.writes.checkpoints.statements,
                 checkpoint_rows=self.writes.checkpoints.rows, finish_statements=self.writes.finishes.statements,
                 finish_rows=self.writes.finishes.rows)

    async def _listen(self) -> None:
        """Stop requests arrive by NOTIFY; heartbeats catch any that were missed.

        A LISTEN connection only receives, so a peer that vanished is invisible on it:
        nothing is ever sent that could fail. Each heartbeat therefore asks it a question
        with a deadline; no answer in time (a partition, a restarted PostgreSQL that
        kept no session) means it is replaced. Its socket's keepalive bounds (db.py)
        do the same while the process waits on it.
        """
        conn = self._listen_conn
        if conn is not None and not conn.is_closed():
            try:
                await conn.fetchval("SELECT 1", timeout=self._db_timeout())
                return
            except DB_DOWN as exc:
                log.warning("LISTEN connection lost; reconnecting", error=type(exc).__name__)
                await self._close_listen()
        conn = await db.connect(self.settings, "blogqueue listen")
        self._listen_conn = conn
        await conn.add_listener("blogqueue_cancel", lambda *_: asyncio.ensure_future(self._renew_and_check()))

    async def _close_listen(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()  # a dead peer: do not wait for a goodbye

    def _db_timeout(self) -> float:
        """A bound for the heartbeat's statements: a heartbeat stuck on a dead peer must not
        outlive the leases it is meant to renew."""
        return max(1.0, self.settings.lease_seconds / 2)

    async def _heartbeats(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.heartbeat_seconds)
            # Each step on its own: a lease renewal that timed out must not cost the heartbeat
            # that keeps this worker's capacity counted, nor the LISTEN check.
            for step in (self._renew_and_check, self._beat, self._listen):
                try:
                    await step()
                except DB_DOWN as exc:
                    log.warning("heartbeat failed", step=step.__name__.strip("_"), error=type(exc).__name__,
                                detail=str(exc)[:200])
                except Exception:
                    # The heartbeat must outlive anything: without it this worker's attempts lapse.
                    log.exception("heartbeat failed unexpectedly", step=step.__name__.strip("_"))
            self._status_line()

    async def _beat(self) -> None:
        await self.pool.execute(Q["heartbeat"], self.worker_id, len(self.running), self.done, self.failed,
                                self.dispatcher.is_leader, timeout=self._db_timeout())

    def _status_line(self) -> None:
        """The operators' heartbeat line: in flight, done, failed, rate since the last one."""
        now = time.monotonic()
        last, done, failed = self._status_mark
        if now - last < self.settings.status_log_seconds:
            return
        rate = (self.done + self.failed - done - failed) / (now - last)
        log.info("heartbeat", in_flight=len(self.running), done=self.done, failed=self.failed,
                 jobs_per_s=round(rate, 1), leader=self.dispatcher.is_leader)
        self._status_mark = (now, self.done, self.failed)

    async def _renew_and_check(self) -> None:
        asked = list(self.running)
        if not asked:
            return
        rows = await self.pool.fetch(Q["renew_leases"], self.worker_id, [uuid.UUID(j) for j in asked],
                                     self.settings.lease_seconds, timeout=self._db_timeout())
        owned = {str(r["id"]) for r in rows}
        for r in rows:
            if r["cancel_requested"]:
                self.request_stop(str(r["id"]))
        for job_id in asked:
            task = self.running.get(job_id)
            if job_id not in owned and task is not None and not task.done():
                # Not renewed: this worker was frozen or cut off past the lease and the
                # attempt went back to the queue. Its writes are refused anyway, so it stops at
                # the next stage boundary instead of paying for more calls. Not at once: a call
                # cut off mid-request (a publish half sent) helps nobody.
                self.lost.add(job_id)
                self.stop_requested.add(job_id)

    def request_stop(self, job_id: str) -> None:
        """Aborts the attempt's in-flight call now; its stage outputs so far stay saved."""
        self.stop_requested.add(job_id)
        task = self.running.get(job_id)
        if task is not None and not task.done():
            task.cancel()

    # -- one attempt -----------------------------------------------------------

    async def run_attempt(self, job_id: str, attempt: int) -> str:
        row = await self.claims.claim(uuid.UUID(job_id), attempt)
        if row is None:
            return "stale"  # lapsed, duplicate, stopped or already run: invariant 2
        job = dict(row)
        if job["kind"] not in self.app.kinds:
            # Another worker's app knows this kind (the dispatcher saw it live): hand the attempt
            # back unpaid, without a failure, for a worker that knows it. The second's delay keeps
            # a busy knowing worker from turning this into a dispatch/release loop.
            return await self._finish(job, "scheduled", delay=1.0, event="released",
                                      detail={"reason": f"this worker does not know the kind {job['kind']!r}"})
        # Bound to this attempt's task (and the pipeline task created below, which copies the
        # context): every line logged while it runs, here or in a stage, carries them.
        with structlog.contextvars.bound_contextvars(job_id=job_id, tenant=job["tenant_id"], attempt=attempt):
            return await self._run(job_id, job)

    async def _run(self, job_id: str, job: dict[str, Any]) -> str:
        stored = (job.pop("ai_preferred_model"), dict(job.pop("ai_keys")))  # read by the claim: see resolve()
        run = Run(job, app=self.app, settings=self.settings, pool=self.pool, outputs=dict(job.pop("stages")),
                  stored=stored, save_stages=self.writes.save_stages)
        task = asyncio.create_task(run_pipeline(run, lambda: job_id in self.stop_requested))
        self.running[job_id] = task
        try:
            result = await task
        except (asyncio.CancelledError, StopRequested):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The worker is shutting down: give the attempt back, unpaid.
                await asyncio.shield(self._finish(job, "queued", event="released", run=run))
                raise
            if job_id in self.lost:
                log.warning("attempt lost its lease; abandoned", stage=run.stage)
                return "stale"
            return await self._finish(job, "cancelled", error="stopped by request", code="cancelled",
                                      event="cancelled", detail={"stage": run.stage}, run=run)
        except Parked:
            return "parked"  # batch lane: the job waits for a provider batch, holding no slot
        except StaleAttempt:
            log.info("attempt no longer owns the job; its checkpoint was refused", stage=run.stage)
            return "stale"
        except DB_ERRORS as exc:
            # Our own database hiccuped (restart, terminated backend): not the job's fault.
            log.warning("database error; releasing the attempt", stage=run.stage, error=type(exc).__name__)
            return await self._finish(job, "scheduled", delay=1.0, event="released",
                                      detail={"stage": run.stage, "reason": "database error"}, run=run)
        except Exception as exc:
            return await self._failed(job, run, exc)
        finally:
            self.running.pop(job_id, None)
            self.stop_requested.discard(job_id)
            self.lost.discard(job_id)
        # The last stage's output (and any unsaved before it) is written by the finish itself.
        return await self._finish(job, "done", result=result, event="done", run=run)

    async def _failed(self, job: dict[str, Any], run: Run, exc: Exception) -> str:
        s, stage = self.settings, run.stage
        if isinstance(exc, RateLimited):
            return await self._finish(job, "scheduled", delay=exc.retry_after, error=exc.message,
                                      code=exc.code, event="rate_limited",
                                      detail={"stage": stage, "retry_after_s": exc.retry_after}, run=run)
        if isinstance(exc, JobError):
            message, code = exc.message, exc.code
        else:
            log.exception("unexpected error in a stage", stage=stage)
            message, code = f"internal error in stage {stage}: {type(exc).__name__}: {exc}", "internal_error"
        message = redact(message)[:1000]
        failures = job["failures"] + 1
        if isinstance(exc, FatalError) or failures >= s.max_attempts:
            return await self._finish(job, "failed", failures=1, error=message, code=code, event="failed",
                                      detail={"stage": stage, "error": message}, run=run)
        base = s.retry_schedule[failures - 1]
        delay = base * (1 + random.uniform(-s.retry_jitter, s.retry_jitter))
        return await self._finish(job, "scheduled", failures=1, delay=delay, error=message, code=code,
                                  event="retry_scheduled",
                                  detail={"stage": stage, "error": message, "delay_s": round(delay, 3)}, run=run)

    async def _finish(self, job: dict[str, Any], status: str, *, failures: int = 0, delay: float = 0.0,
                      error: str | None = None, code: str | None = None, result: dict[str, Any] | None = None,
                      event: str, detail: dict[str, Any] | None = None, run: Run | None = None) -> str:
        # Stage outputs not written yet (the last stage's; earlier ones without a paid call)
        # are saved by this same fenced statement: one round trip fewer per job, and a stale
        # attempt's finish saves nothing. `following`: the stage a retry resumes at.
        names, outputs = run.unsaved() if run is not None else ([], [])
        following = run.stage if names and run is not None and run.stage != names[-1] else None
        row = await self.writes.finish(job["id"], job["attempt"], status, failures, delay, error, code, result,
                                       event, detail, names, outputs, following)
        if row is None:
            log.info("attempt no longer owns the job; its finish was refused", stage=(detail or {}).get("stage"),
                     wanted=status)
            return "stale"
        if row["status"] == "done":
            self.done += 1
        elif row["status"] == "failed":
            self.failed += 1
        return row["status"]


class Claims:
    """Claims the attempts arq starts, several in one statement (`claim_attempts`).

    Group commit (blogqueue.groupcommit): at most one claim statement per worker is in
    flight; attempts that arrive meanwhile (arq starts the jobs of one poll one after
    another, a Redis round trip apart) wait for it and are claimed together by the next
    one. An idle worker claims at once; a busy one pays one round trip and one
    transaction for many attempts instead of one each (issue #14). Each row is fenced on
    its own: a stale attempt in a batch gets None and changes nothing.
    """

    def __init__(self, pool: asyncpg.Pool, worker_id: str, lease_seconds: float) -> None:
        self.pool, self.worker_id, self.lease_seconds = pool, worker_id, lease_seconds
        self._group: GroupCommit[tuple[uuid.UUID, int], asyncpg.Record | None] = GroupCommit(
            "claims", self._write, orphan=self._release)

    @property
    def statements(self) -> int:
        """Claim statements run (a batch each), for the engine benchmark."""
        return self._group.statements

    async def claim(self, job_id: uuid.UUID, attempt: int) -> asyncpg.Record | None:
        return await self._group.submit((job_id, attempt))

    async def _write(self, batch: list[tuple[uuid.UUID, int]]) -> list[asyncpg.Record | None]:
        rows = await _retrying_db(self.pool.fetch, Q["claim_attempts"], [b[0] for b in batch],
                                  [b[1] for b in batch], self.worker_id, self.lease_seconds)
        by_id = {r["id"]: r for r in rows}
        out: list[asyncpg.Record | None] = []
        for job_id, attempt in batch:
            # pop: a duplicate run of the same attempt in the same batch gets None (invariant 2).
            row = by_id.pop(job_id, None)
            out.append(row if row is not None and row["attempt"] == attempt else None)
        return out

    async def _release(self, item: tuple[uuid.UUID, int], row: asyncpg.Record | None) -> None:
        # Its arq run was cancelled (shutdown) while the batch was in flight: give the
        # attempt back unpaid now rather than when its lease lapses.
        if row is not None:
            with contextlib.suppress(*DB_DOWN):
                await self.pool.fetchrow(Q["finish_attempt"], item[0], item[1], "queued", 0, 0.0, None,
                                         None, None, "released", None, [], [], None)


FinishArgs = tuple[Any, ...]  # finish_attempt's parameters, $1 (job id) first
CheckpointArgs = tuple[Any, ...]  # save_stages' parameters, $1 (job id) first


class Writes:
    """The per-attempt writes of this worker's concurrent attempts, group-committed
    (blogqueue.groupcommit): checkpoints (`save_stages`) and finishes (`finish_attempt`).

    Each flush runs the named statement once per row, pipelined in one round trip and
    one implicit transaction (asyncpg `fetchmany`): per row exactly the fenced statement
    a single write runs, so a stale attempt's row is refused and changes nothing, and the
    statements of one transaction lock their jobs in id order, like every multi-row
    writer (no deadlock). Each caller awaits its own row, so a paid stage's output is
    still committed before that job's next paid call starts (invariant 3).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        key = _first
        self.checkpoints: GroupCommit[CheckpointArgs, bool] = GroupCommit("checkpoints", self._save, key=key)
        self.finishes: GroupCommit[FinishArgs, asyncpg.Record | None] = GroupCommit("finishes", self._finish,
                                                                                      key=key)

    async def save_stages(self, *args: Any) -> bool:
        return await self.checkpoints.submit(args)

    async def finish(self, *args: Any) -> asyncpg.Record | None:
        return await self.finishes.submit(args)

    async def _save(self, items: list[CheckpointArgs]) -> list[bool]:
        # Not retried here (as before grouping): a checkpoint whose connection died is the
        # attempt's database error, and the worker releases the attempt.
        if len(items) == 1:
            return [bool(await self.pool.fetchval(Q["save_stages"], *items[0]))]
        ordered = sorted(items, key=_first)
        rows = await self.pool.fetchmany(Q["save_stages"], ordered)
        owned = {a[0]: bool(r["owned"]) for a, r in zip(ordered, rows, strict=True)}  # one row per statement
        return [owned[a[0]] for a in items]

    async def _finish(self, items: list[FinishArgs]) -> list[asyncpg.Record | None]:
        if len(items) == 1:
            return [await _retrying_db(self.pool.fetchrow, Q["finish_attempt"], *items[0])]
        rows = await _retrying_db(self.pool.fetchmany, Q["finish_attempt"], sorted(items, key=_first))
        return by_id(rows, [a[0] for a in items])  # a refused finish returns no row


def _first(args: tuple[Any, ...]) -> Any:
    return args[0]


# Our own database being unreachable for a moment: restarts, terminated backends, a full
# connection table. Never the job's fault.
DB_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.exceptions.AdminShutdownError,
             asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.TooManyConnectionsError,
             # A pooled connection the server ended mid-operation (fast shutdown) can be handed
             # out once more in a broken protocol state; a fresh connection is the cure.
             asyncpg.InternalClientError,
             ConnectionError, TimeoutError)


# Whatever a statement raises while PostgreSQL is out of reach: the above, plus the OSError
# of a connect that found no route (EHOSTUNREACH while partitioned), plus server errors.
DB_DOWN = (*DB_ERRORS, OSError, asyncpg.PostgresError)


async def _retrying_db(call: Any, *args: Any, tries: int = 6) -> Any:
    """Runs one statement, retrying on a fresh pooled connection when the connection died.

    Safe because every statement retried here is conditional on the attempt's state:
    running it twice cannot apply it twice.
    """
    for n in range(tries):
        try:
            return await call(*args)
        except (*DB_ERRORS, OSError):
            if n == tries - 1:
                raise
            await asyncio.sleep(0.2 * (n + 1))
    raise AssertionError("unreachable")


# -- arq glue --------------------------------------------------------------------

class ArqWorker(Worker):
    """arq's Worker, taking the jobs of a poll in one Redis round trip instead of four per
    job (issue #14).

    arq 0.28 takes each job with WATCH on its in-progress key, EXISTS, ZSCORE, then
    MULTI/PSETEX/EXEC: four round trips per job, three of them paid again by every worker
    that loses the race for it (with prefetch-sized queues, the workers' polls see the
    same few jobs, so most polls race). Here one MULTI/EXEC does `SET in-progress NX PX`
    and `ZSCORE` for as many of the polled jobs as there are free slots: the key is the
    same lock arq's check-then-set guards, now taken atomically, so one worker runs a job
    and the others learn it in the same round trip. A job already finished and removed
    (no score) or not due yet gives its key back. Nothing depends on the key for
    correctness anyway: PostgreSQL's fenced claim decides which run of an attempt may
    work (invariant 2). `arq blogqueue.worker.WorkerSettings` runs arq's own Worker.
    """

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        pending = [j.decode() for j in job_ids]
        while pending:
            free = self.max_jobs - self.job_counter
            if free <= 0:
                return None
            batch, pending = pending[:free], pending[free:]
            ttl_ms = int(self.in_progress_timeout_s * 1000)
            async with self.pool.pipeline(transaction=True) as pipe:
                for job_id in batch:
                    pipe.set(in_progress_key_prefix + job_id, b"1", px=ttl_ms, nx=True)
                    pipe.zscore(self.queue_name, job_id)
                answers = await pipe.execute()
            now, give_back = timestamp_ms(), []
            for i, job_id in enumerate(batch):
                took, score = answers[2 * i], answers[2 * i + 1]
                if not took:
                    _arq_log.debug("job %s already running elsewhere", job_id)  # as arq's own start says
                    continue
                if not score or score > now:
                    give_back.append(in_progress_key_prefix + job_id)  # ours, but nothing to run now
                    continue
                # Never waits: only this loop adds jobs, and it takes at most the free slots.
                await self.sem.acquire()
                self.job_counter = self.job_counter + 1
                t = self.loop.create_task(self.run_job(job_id, int(score)))
                t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = t
            if give_back:
                await self.pool.delete(*give_back)
        return None


async def run_attempt(ctx: dict[str, Any], job_id: str, attempt: int) -> str:
    runtime: WorkerRuntime = ctx["blogqueue"]
    task = asyncio.current_task()
    if task is not None:
        runtime.attempts.add(task)
    try:
        return await runtime.run_attempt(job_id, attempt)
    finally:
        if task is not None:
            runtime.attempts.discard(task)


async def _startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    if ctx.get("configure_logging"):
        from .logconfig import configure

        configure(settings)
    app: App = ctx.get("app") or load(settings.app)
    app.check(settings)
    # The dispatcher's cycle is one transaction (several statements): a leader frozen inside it
    # (SIGSTOP, a partition) would hold the lease row and job rows locked, so no follower could
    # take over. PostgreSQL ends such a session after a quarter lease idle in its transaction.
    idle_ms = max(500, int(settings.lease_seconds * 250))
    pool = await db.create_pool(settings, max_size=max(settings.db_pool_size, settings.worker_concurrency // 2 + 4),
                                server_settings={**db.server_settings(settings),
                                                 "idle_in_transaction_session_timeout": str(idle_ms)})
    runtime = WorkerRuntime(settings, pool, Dispatcher(settings, pool, ctx["redis"], holder=new_worker_id()), app)
    ctx["blogqueue"] = runtime
    await runtime.start()


async def _shutdown(ctx: dict[str, Any]) -> None:
    runtime: WorkerRuntime | None = ctx.pop("blogqueue", None)  # once, whoever calls first
    if runtime is not None:
        # Nothing to wait for after arq's own shutdown (it waited); after a lost Redis, see wind_down.
        await runtime.wind_down(runtime.settings.shutdown_grace_seconds)
        await runtime.stop()
        try:
            # Bounded: closing politely waits on every connection, and a dead peer never answers.
            await asyncio.wait_for(runtime.pool.close(), timeout=5)
        except (TimeoutError, *DB_ERRORS):
            runtime.pool.terminate()


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def worker_settings(settings: Settings, **ctx: Any) -> dict[str, Any]:
    """The keyword arguments of arq's Worker for these settings (`app=` in ctx: the App it runs)."""
    from .redisconn import arq_redis

    return {
        "functions": [func(run_attempt, name=TASK_NAME, max_tries=1, keep_result=0,
                           timeout=settings.job_timeout_seconds)],
        "queue_name": settings.queue_name,
        # A pool of our own instead of `redis_settings`: arq's settings have no socket timeout,
        # and without one a Redis host that vanished hangs the poll loop for hours.
        "redis_pool": arq_redis(settings),
        "on_startup": _startup,
        "on_shutdown": _shutdown,
        "max_jobs": settings.worker_concurrency,
        "job_timeout": settings.job_timeout_seconds,
        "poll_delay": 0.01,
        "max_tries": 1,
        "retry_jobs": False,
        "keep_result": 0,
        "job_completion_wait": settings.shutdown_grace_seconds,
        "health_check_interval": 60,
        "log_results": False,
        "ctx": {"settings": settings, **ctx},
    }


def run(settings: Settings, app: App | None = None) -> None:
    """Runs a worker in the foreground until SIGINT or SIGTERM, through Redis outages.

    arq's poll loop ends the worker when Redis goes away. Work is safe in
    PostgreSQL either way, but a worker that exits needs a supervisor to come
    back; this one winds down what it ran (its attempts finish, its pool
    closes), waits with backoff and starts a fresh arq worker in the same
    process. (`arq blogqueue.worker.WorkerSettings` has no such loop.)
    """
    app = app or load(settings.app)
    backoff = 1.0
    while True:
        # uvloop (a dependency, for `serve` too): the worker's time is mostly round trips to Redis
        # and PostgreSQL, and its C event loop and transports cost far less per send and wake-up
        # than asyncio's (issue #14, docs/benchmarks.md).
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        kwargs = worker_settings(settings, app=app)
        started = time.monotonic()
        try:
            ArqWorker(**kwargs).run()
            return
        except (RedisError, OSError, *DB_ERRORS) as exc:
            # Unreachable peers only (OSError covers refused, unroutable and timed-out connects);
            # anything else, a missing migration say, still ends the process with its traceback.
            what = "Redis" if isinstance(exc, RedisError) else "PostgreSQL or Redis"
            log.warning(f"worker: {what} unreachable; restarting the arq loop", error=type(exc).__name__,
                        detail=str(exc)[:200], backoff_s=backoff)
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(_shutdown(kwargs["ctx"]))
            loop.close()
        if time.monotonic() - started > 60:
            backoff = 1.0
        time.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


def __getattr__(name: str) -> Any:
    # `arq blogqueue.worker.WorkerSettings` reads this: settings come from the
    # environment only when arq asks, never at import.
    if name == "WorkerSettings":
        settings = Settings.from_env()
        try:
            app = load(settings.app)
            app.check(settings)
        except SettingsError as exc:
            raise SystemExit(f"blogqueue worker: {exc}") from None
        return worker_settings(settings, configure_logging=True, app=app)
    raise AttributeError(name)
