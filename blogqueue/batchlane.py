"""The batch lane (DESIGN §11, docs/batch-lane.md): batch-lane text calls through the
providers' Batch APIs, at about half the price, without holding a worker.

Worker side (`text_call`, from `Run.text`): a batch-lane job's text call records its
request in `bq_batch_requests` and parks the job in the same statement (`parked`: no
worker slot, no lease, no attempt used; users see it `running` at its stage with a
`parked` event saying it waits for a provider batch). The attempt ends there. When the
answer is stored the job is queued again; its stage runs again and the call returns the
stored answer through per-call replay (blogqueue/replay.py).

Leader side (`BatchLane`, a task of every worker that acts while its dispatcher leads):
- collectors, one per (provider, key hash, model): flushed at BATCH_MAX_REQUESTS or
  BATCH_WINDOW_SECONDS after their oldest request, cut to the adapter's per-batch limits
  (requests, bytes) and to BATCH_QUEUE_TOKENS of enqueued tokens;
- submission exactly once: the intent (`bq_provider_batches`, state `intent`, with its
  requests) is committed before anything is uploaded, under the leader's epoch; the
  provider's id is recorded after. An intent older than LEASE_SECONDS that this process
  is not working on belongs to a leader that died: the provider's batch list is searched
  for the intent id (OpenAI `metadata`) and only a batch that is not there is submitted;
- a poller with backoff (BATCH_POLL_SECONDS, x1.5, at most BATCH_POLL_MAX_SECONDS);
  answers are stored, per-request errors kept as the DESIGN §4 class the stage raises,
  and whatever an expired, failed or cancelled batch did not answer falls back to the
  now-lane (counted in `bq_provider_batches.fell_back`);
- a batch none of whose requests is still wanted (their jobs were stopped) is cancelled
  at the provider.

The residual risk: a leader *frozen* (not dead) in the middle of an upload for longer
than LEASE_SECONDS, whose intent a new leader reconciled meanwhile without finding it,
may still finish its upload: two batches. Dead leaders (crash, kill -9) cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from . import ratelimit, replay
from .db import Q
from .errors import FatalError, JobError, RateLimited, RetryableError
from .providers.base import ProviderConfig, TextRequest, TextResult
from .providers.batch import BatchItem, BatchProvider, Intent
from .resolve import Resolved, resolve
from .settings import Settings

if TYPE_CHECKING:
    from .app import App
    from .dispatcher import Dispatcher
    from .pipeline import Run

log = structlog.get_logger("blogqueue.batchlane")

POLL_BATCH = 50
STORE_CHUNK = 200  # answers stored per transaction (see BatchLane._ended)


# -- adapters ------------------------------------------------------------------------

def _openai(settings: Settings) -> BatchProvider:
    from .providers.openai_batch import OpenAIBatch

    return OpenAIBatch(ProviderConfig(settings.openai_base_url, settings.provider_timeout_seconds))


def _offline(settings: Settings) -> BatchProvider:
    from .providers.offline_batch import OfflineBatch

    return OfflineBatch(settings.offline_batch_seconds)


def _anthropic(settings: Settings) -> BatchProvider:
    from .providers.anthropic_batch import AnthropicBatch

    return AnthropicBatch(ProviderConfig(settings.anthropic_base_url, settings.provider_timeout_seconds))


FACTORIES = {"openai": _openai, "anthropic": _anthropic, "offline": _offline}
_built: dict[tuple[int, str], BatchProvider] = {}


def adapter(app: App, provider: str, settings: Settings) -> BatchProvider | None:
    """The provider's Batch API adapter; None when it has none (its calls stay in the now-lane)."""
    factory = FACTORIES.get(provider)
    entry = app.providers.get(provider)
    if factory is None or entry is None or not _builtin(app, provider):
        return None
    key = (id(settings), provider)
    if key not in _built:
        _built[key] = factory(settings)
    return _built[key]


def _builtin(app: App, provider: str) -> bool:
    """Only the built-in adapter of that name speaks its Batch API (an app may replace it)."""
    from .providers import anthropic, offline, openai

    factory = app.providers[provider].factory
    return factory in (offline.OfflineProvider, openai.OpenAIProvider, anthropic.AnthropicProvider)


# -- worker side -----------------------------------------------------------------------

def error_to_json(exc: JobError) -> dict[str, Any]:
    kind = ("rate_limited" if isinstance(exc, RateLimited) else "retryable" if isinstance(exc, RetryableError)
            else "fatal")
    out: dict[str, Any] = {"class": kind, "code": exc.code, "message": exc.message}
    if isinstance(exc, RateLimited):
        out["retry_after"] = exc.retry_after
    return out


def error_from_json(data: dict[str, Any]) -> JobError:
    message, code = str(data.get("message", "the batch request failed")), data.get("code")
    if data.get("class") == "rate_limited":
        return RateLimited(message, retry_after=float(data.get("retry_after", 1.0)), code=code)
    if data.get("class") == "retryable":
        return RetryableError(message, code=code)
    return FatalError(message, code=code)


def estimate_tokens(request: TextRequest) -> int:
    """What OpenAI counts against the batch queue: prompt characters / 4 plus max_tokens."""
    return (len(request.prompt) + len(request.system or "") + 3) // 4 + request.max_tokens


async def text_call(run: Run, r: Resolved, request: TextRequest, call_no: int, digest: str) -> TextResult | None:
    """A batch-lane text call: the stored answer, or None for the now-lane; else parks the job."""
    from .pipeline import Parked, StaleAttempt, StopRequested

    settings, pool = run._settings, run._pool
    if adapter(run.app, r.provider, settings) is None:
        return None
    # A first attempt has no request yet: requests are recorded only by parking, which ends the attempt.
    row = None if run.attempt <= 1 else await pool.fetchrow(Q["batch_request_for_call"], run.job["id"], run.stage,
                                                            call_no)
    if row is not None:
        if row["state"] in ("pending", "submitted") and row["request_hash"] == digest:
            pass  # still out (a stray re-run): park again, the answer will wake the job
        elif row["state"] == "done" and row["request_hash"] == digest and (
                kept := await run._calls.stored(call_no, digest, look=True)) is not None:
            return replay.text_from_json(kept)
        else:
            await pool.execute(Q["batch_request_consume"], row["id"])
            if row["request_hash"] == digest and row["state"] == "error":
                raise error_from_json(row["error"])
            if row["request_hash"] == digest and row["state"] == "fallback":
                return None  # its batch expired, failed or was cancelled: the now-lane
    await run._calls.write_held()
    detail = {"stage": run.stage, "waiting_for": "provider batch", "provider": r.provider, "model": r.model,
              "call": call_no}
    parked = await pool.fetchrow(
        Q["batch_park"], run.job["id"], run.attempt, run.stage, call_no, r.provider, ratelimit.key_hash(r.api_key),
        r.model, digest, asdict(request), estimate_tokens(request), detail)
    if parked is None:
        raise StaleAttempt(run.stage)
    if parked["cancel_requested"]:
        raise StopRequested
    raise Parked(run.stage)


# -- leader side ------------------------------------------------------------------------

class BatchLane:
    """Collectors, submissions and the poller; acts only while `dispatcher` leads."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, app: App, dispatcher: Dispatcher,
                 tick_seconds: float = 0.5) -> None:
        self.settings = settings
        self.pool = pool
        self.app = app
        self.dispatcher = dispatcher
        self.tick_seconds = tick_seconds
        self._working: set[uuid.UUID] = set()  # intents this process is submitting now
        self.submitted = 0
        self.polled = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            epoch = self.dispatcher.epoch
            if epoch is None:
                continue
            try:
                await self.tick(epoch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Never die: the lane's work is all in PostgreSQL, the next tick takes it up again.
                log.exception("batch lane: tick failed")

    async def tick(self, epoch: int) -> None:
        await self.recover()
        await self.collect(epoch)
        await self.poll()

    async def _key(self, job_id: Any) -> str | None:
        """The API key of a collector: resolved from one of its jobs, as that job's own call would."""
        job = await self.pool.fetchrow(Q["batch_job_for_key"], job_id)
        if job is None:
            return None
        return (await resolve(dict(job), self.settings, self.pool, self.app)).api_key

    # collectors ------------------------------------------------------------------------

    async def collect(self, epoch: int) -> None:
        s = self.settings
        for g in await self.pool.fetch(Q["batch_pending_groups"]):
            if g["n"] < s.batch_max_requests and g["age_s"] < s.batch_window_seconds:
                continue
            batch = adapter(self.app, g["provider"], s)
            if batch is None:
                continue
            while await self._flush(batch, g["provider"], g["key_hash"], g["model"], epoch):
                pass

    async def _flush(self, batch: BatchProvider, provider: str, key_hash: str, model: str, epoch: int) -> bool:
        """Submits one batch of this collector's pending requests; True if more may be waiting."""
        s = self.settings
        limit = min(s.batch_max_requests, batch.max_requests)
        rows = await self.pool.fetch(Q["batch_pending_take"], provider, key_hash, model, limit)
        unwanted = [r["id"] for r in rows if r["job_status"] != "parked"]
        if unwanted:
            await self.pool.execute(Q["batch_drop_unwanted"], unwanted)
        rows = [r for r in rows if r["job_status"] == "parked"]
        room = None
        if s.batch_queue_tokens:
            room = s.batch_queue_tokens - int(await self.pool.fetchval(Q["batch_open_tokens"], provider, key_hash,
                                                                     model))
        picked, size, tokens = [], 0, 0
        for r in rows:
            line = len(json.dumps(r["body"])) + 200  # the JSONL line's envelope
            if size + line > batch.max_bytes or (room is not None and tokens + r["est_tokens"] > room):
                break
            picked.append(r)
            size, tokens = size + line, tokens + r["est_tokens"]
        if not picked:
            return False
        intent = uuid.uuid4()
        claimed = await self.pool.fetch(Q["batch_intent"], intent, provider, key_hash, model, len(picked), tokens,
                                        [r["id"] for r in picked], s.queue_name, epoch)
        if not claimed:
            return False  # no longer the leader, or another took them
        self._working.add(intent)
        try:
            bodies = {r["id"]: r["body"] for r in picked}
            items = [BatchItem(c["custom_id"], TextRequest(**bodies[c["id"]])) for c in claimed]
            await self._submit(batch, intent, items, picked[0]["job_id"])
        finally:
            self._working.discard(intent)
        return len(rows) == limit and len(picked) == len(rows)

    async def _submit(self, batch: BatchProvider, intent: uuid.UUID, items: list[BatchItem], any_job: Any) -> None:
        """Uploads an intent's requests and records the provider's id.

        A retryable failure leaves the intent as it is: the next leader tick past LEASE_SECONDS
        reconciles it (finds it at the provider, or submits it). A fatal one (a bad key, a
        refused model) ends the intent `failed`: its calls go to the now-lane, where the stage
        meets the same error and fails as a now-lane job would.
        """
        try:
            key = await self._key(any_job)
            provider_id = await batch.submit(items, key, items[0].request.model, str(intent))
        except FatalError as exc:
            await self._fail_intent(intent, batch.name, exc)
            return
        await self.pool.execute(Q["batch_submitted"], intent, provider_id, self.settings.batch_poll_seconds)
        self.submitted += 1
        log.info("batch lane: batch submitted", provider=batch.name, batch=provider_id, requests=len(items))

    async def _fail_intent(self, intent: uuid.UUID, provider: str, exc: JobError) -> None:
        log.warning("batch lane: the provider refused the batch; its calls go to the now-lane",
                    provider=provider, error=exc.message)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.fetchrow(Q["batch_end"], intent, "failed", 0, 0)
            await conn.execute(Q["notify_dispatcher"], "batch")

    async def recover(self) -> None:
        """Intents of a leader that died: found at the provider by their intent id, else submitted."""
        rows = await self.pool.fetch(Q["batch_orphan_intents"], self.settings.lease_seconds, list(self._working))
        for b in rows:
            batch = adapter(self.app, b["provider"], self.settings)
            if batch is None or b["any_job"] is None:
                continue
            reqs = await self.pool.fetch(Q["batch_requests_of"], b["id"])
            known = await self.pool.fetch(Q["batch_known_ids"], b["provider"], b["key_hash"])
            intent = Intent(str(b["id"]), frozenset(r["custom_id"] for r in reqs), b["created_at"],
                            frozenset(r["provider_batch_id"] for r in known))
            try:
                key = await self._key(b["any_job"])
                found = await batch.find(key, intent)
            except FatalError as exc:
                await self._fail_intent(b["id"], batch.name, exc)
                continue
            except JobError as exc:
                log.warning("batch lane: could not list the provider's batches; later", error=exc.message)
                continue
            if found is not None:
                await self.pool.execute(Q["batch_submitted"], b["id"], found, self.settings.batch_poll_seconds)
                log.info("batch lane: recovered a submitted batch", provider=b["provider"], batch=found)
                continue
            items = [BatchItem(r["custom_id"], TextRequest(**r["body"])) for r in reqs]
            if items:
                log.info("batch lane: an intent was never submitted; submitting it", provider=b["provider"])
                self._working.add(b["id"])
                try:
                    await self._submit(batch, b["id"], items, b["any_job"])
                finally:
                    self._working.discard(b["id"])

    # poller ---------------------------------------------------------------------------------

    async def poll(self) -> None:
        s = self.settings
        for b in await self.pool.fetch(Q["batch_due_polls"], POLL_BATCH):
            batch = adapter(self.app, b["provider"], s)
            if batch is None or b["any_job"] is None:
                continue
            self.polled += 1
            try:
                key = await self._key(b["any_job"])
                status = await batch.status(b["provider_batch_id"], key)
            except FatalError as exc:
                # The provider no longer knows the batch, or the key was revoked: its calls go to
                # the now-lane, where each job meets the provider as a now-lane job would.
                log.warning("batch lane: the provider refuses to report the batch; falling back",
                            batch=b["provider_batch_id"], error=exc.message)
                await self._fail_intent(b["id"], batch.name, exc)
                continue
            except JobError as exc:
                log.warning("batch lane: poll failed", batch=b["provider_batch_id"], error=exc.message)
                await self.pool.execute(Q["batch_poll_later"], b["id"], self._backoff(b["polls"]), False)
                continue
            if status.state == "in_progress":
                cancel = not b["wanted"] and not b["cancel_sent"]
                if cancel:
                    with contextlib.suppress(JobError):
                        await batch.cancel(b["provider_batch_id"], key)
                    log.info("batch lane: no request of the batch is wanted; cancelled", batch=b["provider_batch_id"])
                await self.pool.execute(Q["batch_poll_later"], b["id"], self._backoff(b["polls"]), cancel)
                continue
            try:
                await self._ended(batch, b, key, status.state, status.detail)
            except JobError as exc:
                log.warning("batch lane: could not read the batch's results; later", batch=b["provider_batch_id"],
                            error=exc.message)
                await self.pool.execute(Q["batch_poll_later"], b["id"], self._backoff(b["polls"]), False)

    def _backoff(self, polls: int) -> float:
        s = self.settings
        return min(s.batch_poll_max_seconds, s.batch_poll_seconds * 1.5 ** polls)

    async def _ended(self, batch: BatchProvider, b: asyncpg.Record, key: str | None, state: str, detail: str) -> None:
        answers = await batch.results(b["provider_batch_id"], key)
        ok = [(a.custom_id, a.result) for a in answers if a.result is not None]
        bad = [(a.custom_id, a.error) for a in answers if a.error is not None]
        # In chunks, each its own transaction, yielding in between: this runs in the leader's event
        # loop next to the dispatcher, and one statement over thousands of answers would hold it
        # (and their jobs' rows) for the whole batch. Safe to cut: each chunk only touches requests
        # still `submitted`, so a leader that dies midway leaves the rest for the next poll.
        for i in range(0, len(ok), STORE_CHUNK):
            part = ok[i:i + STORE_CHUNK]
            await self.pool.execute(Q["batch_store_answers"], [c for c, _ in part],
                                    [replay.text_to_json(r) for _, r in part], [r.prompt_tokens for _, r in part],
                                    [r.completion_tokens for _, r in part], b["id"])
            await self.pool.execute(Q["notify_dispatcher"], "batch")
        for i in range(0, len(bad), STORE_CHUNK):
            part_bad = bad[i:i + STORE_CHUNK]
            await self.pool.execute(Q["batch_store_errors"], [c for c, _ in part_bad],
                                    [error_to_json(e) for _, e in part_bad], b["id"])
        async with self.pool.acquire() as conn, conn.transaction():
            end = await conn.fetchrow(Q["batch_end"], b["id"], state, len(ok), len(bad))
            await conn.execute(Q["notify_dispatcher"], "batch")
        fell_back = end["fell_back"] if end else 0
        log.info("batch lane: batch ended", batch=b["provider_batch_id"], state=state, answered=len(ok),
                 errors=len(bad), fell_back=fell_back, detail=detail or None)

