"""The arq worker: claims attempts, runs pipelines, heartbeats, hosts a dispatcher.

Run it with `blogqueue worker [--app MODULE:ATTR]` or `arq blogqueue.worker.WorkerSettings`
(which reads `BLOGQUEUE_APP`). A worker runs the kinds of its app (blogqueue.App) and
records them in `bq_workers.kinds`, so the dispatcher hands out only kinds a live
worker knows.

arq settings chosen on purpose (DESIGN §9):
- `max_jobs` = WORKER_CONCURRENCY; the dispatcher never puts more in arq's
  queue than the live workers' concurrency plus a small prefetch.
- `poll_delay` 0.05 s: arq's default 0.5 s would add up to half a second to
  every hand-off and cap a worker near 20 short jobs/s.
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
import secrets
import socket
import time
import uuid
from typing import Any

import asyncpg
from arq.worker import func

from . import db
from .app import App, load
from .db import Q
from .dispatcher import TASK_NAME, Dispatcher
from .errors import FatalError, JobError, RateLimited
from .pipeline import Run, StaleAttempt, StopRequested, run_pipeline
from .settings import Settings, SettingsError

log = logging.getLogger("blogqueue.worker")

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
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.running: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self.stop_requested: set[str] = set()
        self.done = 0
        self.failed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._listen_conn: asyncpg.Connection | None = None
        self._status_mark = (time.monotonic(), 0, 0)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await self.pool.execute(Q["register_worker"], self.worker_id, s.queue_name, socket.gethostname(),
                                os.getpid(), s.worker_concurrency, s.dispatch_prefetch, list(self.app.kinds))
        await self._listen()
        self._tasks = [asyncio.create_task(self._heartbeats(), name="blogqueue-heartbeat"),
                       asyncio.create_task(self.dispatcher.run(), name="blogqueue-dispatcher")]
        log.info("worker %s started: concurrency %d, queue %s", self.worker_id, s.worker_concurrency,
                 s.queue_name)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.dispatcher.close()
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._listen_conn.close(timeout=2)
        with contextlib.suppress(Exception):
            await self.pool.execute(Q["stop_worker"], self.worker_id)
        log.info("worker %s stopped: %d done, %d failed; its dispatcher ran %d cycles, dispatched %d",
                 self.worker_id, self.done, self.failed, self.dispatcher.cycles, self.dispatcher.dispatched)

    async def _listen(self) -> None:
        """Stop requests arrive by NOTIFY; heartbeats catch any that were missed."""
        if self._listen_conn is not None and not self._listen_conn.is_closed():
            return
        self._listen_conn = await db.connect(self.settings)
        await self._listen_conn.add_listener(
            "blogqueue_cancel", lambda *_: asyncio.ensure_future(self._renew_and_check()))

    async def _heartbeats(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.heartbeat_seconds)
            try:
                await self._renew_and_check()
                await self.pool.execute(Q["heartbeat"], self.worker_id, len(self.running), self.done,
                                        self.failed, self.dispatcher.is_leader)
                await self._listen()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
            self._status_line()

    def _status_line(self) -> None:
        """The operators' heartbeat line: in flight, done, failed, rate since the last one."""
        now = time.monotonic()
        last, done, failed = self._status_mark
        if now - last < self.settings.status_log_seconds:
            return
        rate = (self.done + self.failed - done - failed) / (now - last)
        log.info("heartbeat: %d in flight, %d done, %d failed, %.1f jobs/s%s", len(self.running),
                 self.done, self.failed, rate, " (dispatcher leader)" if self.dispatcher.is_leader else "")
        self._status_mark = (now, self.done, self.failed)

    async def _renew_and_check(self) -> None:
        ids = [uuid.UUID(j) for j in self.running]
        if not ids:
            return
        rows = await self.pool.fetch(Q["renew_leases"], self.worker_id, ids, self.settings.lease_seconds)
        for r in rows:
            if r["cancel_requested"]:
                self.request_stop(str(r["id"]))

    def request_stop(self, job_id: str) -> None:
        """Aborts the attempt's in-flight call now; its stage outputs so far stay saved."""
        self.stop_requested.add(job_id)
        task = self.running.get(job_id)
        if task is not None and not task.done():
            task.cancel()

    # -- one attempt -----------------------------------------------------------

    async def run_attempt(self, job_id: str, attempt: int) -> str:
        s = self.settings
        row = await _retrying_db(self.pool.fetchrow, Q["claim_attempt"], uuid.UUID(job_id), attempt,
                                 self.worker_id, s.lease_seconds)
        if row is None:
            return "stale"  # lapsed, duplicate, stopped or already run: invariant 2
        job = dict(row)
        if job["kind"] not in self.app.kinds:
            # Another worker's app knows this kind (the dispatcher saw it live): hand the attempt
            # back unpaid, without a failure, for a worker that knows it.
            return await self._finish(job, "queued", event="released",
                                      detail={"reason": f"this worker does not know the kind {job['kind']!r}"})
        run = Run(job, app=self.app, settings=s, pool=self.pool, outputs=dict(job.pop("stages")))
        task = asyncio.create_task(run_pipeline(run, lambda: job_id in self.stop_requested))
        self.running[job_id] = task
        try:
            result = await task
        except (asyncio.CancelledError, StopRequested):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The worker is shutting down: give the attempt back, unpaid.
                await asyncio.shield(self._finish(job, "queued", event="released"))
                raise
            return await self._finish(job, "cancelled", error="stopped by request", code="cancelled",
                                      event="cancelled", detail={"stage": run.stage})
        except StaleAttempt:
            return "stale"
        except DB_ERRORS as exc:
            # Our own database hiccuped (restart, terminated backend): not the job's fault.
            log.warning("job %s: database error in stage %s (%s); releasing the attempt", job_id, run.stage,
                        type(exc).__name__)
            return await self._finish(job, "scheduled", delay=1.0, event="released",
                                      detail={"stage": run.stage, "reason": "database error"})
        except Exception as exc:
            return await self._failed(job, run.stage, exc)
        finally:
            self.running.pop(job_id, None)
            self.stop_requested.discard(job_id)
        return await self._finish(job, "done", result=result, event="done")

    async def _failed(self, job: dict[str, Any], stage: str, exc: Exception) -> str:
        s = self.settings
        if isinstance(exc, RateLimited):
            return await self._finish(job, "scheduled", delay=exc.retry_after, error=exc.message,
                                      code=exc.code, event="rate_limited",
                                      detail={"stage": stage, "retry_after_s": exc.retry_after})
        if isinstance(exc, JobError):
            message, code = exc.message, exc.code
        else:
            log.exception("job %s: unexpected error in stage %s", job["id"], stage)
            message, code = f"internal error in stage {stage}: {type(exc).__name__}: {exc}", "internal_error"
        message = redact(message)[:1000]
        failures = job["failures"] + 1
        if isinstance(exc, FatalError) or failures >= s.max_attempts:
            return await self._finish(job, "failed", failures=1, error=message, code=code, event="failed",
                                      detail={"stage": stage, "error": message})
        base = s.retry_schedule[failures - 1]
        delay = base * (1 + random.uniform(-s.retry_jitter, s.retry_jitter))
        return await self._finish(job, "scheduled", failures=1, delay=delay, error=message, code=code,
                                  event="retry_scheduled",
                                  detail={"stage": stage, "error": message, "delay_s": round(delay, 3)})

    async def _finish(self, job: dict[str, Any], status: str, *, failures: int = 0, delay: float = 0.0,
                      error: str | None = None, code: str | None = None, result: dict[str, Any] | None = None,
                      event: str, detail: dict[str, Any] | None = None) -> str:
        row = await _retrying_db(self.pool.fetchrow, Q["finish_attempt"], job["id"], job["attempt"], status,
                                 failures, delay, error, code, result, event, detail)
        if row is None:
            return "stale"
        if row["status"] == "done":
            self.done += 1
        elif row["status"] == "failed":
            self.failed += 1
        return row["status"]


# Our own database being unreachable for a moment: restarts, terminated backends, a full
# connection table. Never the job's fault.
DB_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.exceptions.AdminShutdownError,
             asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.TooManyConnectionsError,
             ConnectionError, TimeoutError)


async def _retrying_db(call: Any, *args: Any, tries: int = 6) -> Any:
    """Runs one statement, retrying on a fresh pooled connection when the connection died.

    Safe because every statement retried here is conditional on the attempt's state:
    running it twice cannot apply it twice.
    """
    for n in range(tries):
        try:
            return await call(*args)
        except DB_ERRORS:
            if n == tries - 1:
                raise
            await asyncio.sleep(0.2 * (n + 1))
    raise AssertionError("unreachable")


# -- arq glue --------------------------------------------------------------------

async def run_attempt(ctx: dict[str, Any], job_id: str, attempt: int) -> str:
    runtime: WorkerRuntime = ctx["blogqueue"]
    return await runtime.run_attempt(job_id, attempt)


async def _startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    if ctx.get("configure_logging"):
        from .logconfig import configure

        configure(settings)
    app: App = ctx.get("app") or load(settings.app)
    app.check(settings)
    pool = await db.create_pool(settings, max_size=max(settings.db_pool_size, settings.worker_concurrency // 2 + 4))
    runtime = WorkerRuntime(settings, pool, Dispatcher(settings, pool, ctx["redis"]), app)
    ctx["blogqueue"] = runtime
    await runtime.start()


async def _shutdown(ctx: dict[str, Any]) -> None:
    runtime: WorkerRuntime | None = ctx.pop("blogqueue", None)  # once, whoever calls first
    if runtime is not None:
        await runtime.stop()
        await runtime.pool.close()


def worker_settings(settings: Settings, **ctx: Any) -> dict[str, Any]:
    """The keyword arguments of arq's Worker for these settings (`app=` in ctx: the App it runs)."""
    from arq.connections import RedisSettings

    return {
        "functions": [func(run_attempt, name=TASK_NAME, max_tries=1, keep_result=0,
                           timeout=settings.job_timeout_seconds)],
        "queue_name": settings.queue_name,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "on_startup": _startup,
        "on_shutdown": _shutdown,
        "max_jobs": settings.worker_concurrency,
        "job_timeout": settings.job_timeout_seconds,
        "poll_delay": 0.05,
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
    from arq.worker import run_worker
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    app = app or load(settings.app)
    backoff = 1.0
    while True:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        kwargs = worker_settings(settings, app=app)
        started = time.monotonic()
        try:
            run_worker(kwargs)  # type: ignore[arg-type]
            return
        except (RedisConnectionError, RedisTimeoutError, ConnectionError) as exc:
            log.warning("worker: Redis unreachable (%s); restarting in %.0f s", type(exc).__name__, backoff)
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
