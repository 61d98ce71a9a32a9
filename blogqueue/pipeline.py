"""The checkpoint loop, and `Run`: what every stage (built-in or yours) receives.

A stage is `async def stage(run: blogqueue.Run) -> dict`. Its output is saved
in `bq_job_stages`, and a later attempt skips every stage that has a saved
output (invariant 3), so a paid call whose result was saved is never made
again.

When a stage's output is written (issue #14: fewer PostgreSQL round trips per
job, invariant 3 kept):
- a stage that made a paid call (`run.text`, `run.image`) has its output
  written before the next paid call or side effect of the attempt starts (in
  that call's own preparation, awaited before the call is sent), or by the
  attempt's finish, whichever comes first; and at the latest SHOW_STAGE_AFTER
  seconds after it returned, so a slow stage without a paid call after it (a
  long fetch) cannot leave a paid answer unsaved for long. The common tail
  (image, then a publisher that delivers nothing) thus costs no write of its
  own: the finish saves both;
- a stage with an external side effect (`run.publish`, `run.write_back` to a
  publisher that delivers, or `run.mark_effect()`) has its output written on
  its own as soon as it returns, before the next stage or the finish, so a
  crash while finishing never sends the request again
  (tests/test_crash_publish.py);
- a stage that made neither (fetching the source, a skipped image) is cheap to
  run again, so its output waits for the next write: a checkpoint, or the
  attempt's finish. When a later stage's call is still running after
  SHOW_STAGE_AFTER seconds, they are written then (which also shows that stage
  as the job's `stage`): the shown stage lags by at most that;
- the last stage's output is written by the attempt's finish, in the same
  statement (`finish_attempt`): nothing runs between the two, except as above.
The writes of a worker's concurrent attempts go out together (group commit,
blogqueue.worker.Writes); each attempt still awaits its own.
Every such write is fenced by the attempt like a single checkpoint, and writes
one `stage_done` event per stage, in stage order. A stage raises
`blogqueue.RetryableError` (try again on the retry schedule),
`blogqueue.RateLimited` (wait, no attempt used) or `blogqueue.FatalError`
(fail now, with its message as `last_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from . import ratelimit, replay
from .db import Q
from .errors import FatalError
from .prompts import Prompt
from .providers.base import CallContext, ImageRequest, ImageResult, Provider, TextRequest, TextResult
from .resolve import Resolved, resolve
from .settings import Settings

if TYPE_CHECKING:
    from .app import App

# Seconds a paid call or side effect may run before the outputs of free stages before it are
# written anyway (see the module's docstring): zero-latency calls never wait for that write,
# slow ones show their stage soon.
SHOW_STAGE_AFTER = 0.25


class StaleAttempt(Exception):
    """This attempt no longer owns its job (lease lapsed, job stopped): stop quietly."""


class StopRequested(Exception):
    """A stop was asked for this job; raised at a stage boundary."""


class Parked(StaleAttempt):
    """A batch-lane call's request is recorded and the job parked (blogqueue/batchlane.py):
    the attempt ends here, holding no worker slot and using up no attempt. The job is queued
    again when the answer is stored, and its stage then replays it."""


class Run:
    """One attempt of one job, as its stages see it.

    Attributes (treat them as read-only):
      job_id, tenant_id, user_id (None when enqueued without a user), attempt
        (1 for the first run; a retry resumes at the first unsaved stage),
      spec      the submitted job: `source` (validated, with `type`), `metadata`,
                `image`, `publish`, `model` (None: the user's or the default),
      outputs   saved outputs of the stages before this one, by stage name,
      stage     the running stage's name,
      kind, app the job's kind and the App it runs in.

    Calls:
      await run.text(system, prompt, *, max_tokens=1500, json_output=False)
          -> TextResult (.text, .prompt_tokens, .completion_tokens, .model)
      await run.image(prompt) -> URL
          Both resolve the model and key (DESIGN §5) and pass the shared rate
          limiter (§7) of the provider the model names.
      run.prompt(name) -> Prompt      the app's prompt of that name
      await run.fetch_source() -> dict  the job's source, fetched by its source type
      await run.publish(post, source) / await run.write_back(rewrite, product)
          -> dict  through the deployment's publisher (BLOGQUEUE_PUBLISHER),
          with the job id as idempotency key.
    """

    def __init__(self, job: dict[str, Any], *, app: App, settings: Settings, pool: asyncpg.Pool,
                 outputs: dict[str, Any] | None = None,
                 stored: tuple[str | None, dict[str, str]] | None = None,
                 save_stages: Callable[..., Awaitable[bool]] | None = None) -> None:
        self.job = job
        self.job_id = str(job["id"])
        self.tenant_id = str(job["tenant_id"])
        self.user_id: str | None = job.get("user_id")
        self.attempt = int(job["attempt"])
        self.kind = str(job["kind"])
        self.spec: dict[str, Any] = {**job["spec"], "model": job.get("model")}
        self.outputs: dict[str, Any] = dict(outputs or {})
        self.stage = ""
        self.app = app
        self._settings = settings
        self._pool = pool
        self._resolved: Resolved | None = None
        self.lane: str = str(self.spec.get("lane") or "now")
        self._calls = replay.CallLedger(pool, job["id"], self.attempt)
        self._stored = stored
        self._unsaved: list[tuple[str, dict[str, Any]]] = []  # finished stages not written yet, in order
        self._effect = False  # the running stage made a paid call or a side effect
        self._external = False  # ... and that was an external side effect (see run_pipeline)
        self._write_lock = asyncio.Lock()  # one checkpoint write at a time
        self._late: asyncio.Task[None] | None = None  # the pending write of SHOW_STAGE_AFTER
        # When the oldest paid stage output not written yet returned (loop time); None: none is waiting.
        self._paid_since: float | None = None
        # The worker's group commit of checkpoints (blogqueue.worker.Writes); alone: one statement.
        self._save_stages = save_stages or self._save_alone

    # -- provider calls ------------------------------------------------------------

    def _ctx(self) -> CallContext:
        return CallContext(job_id=self.job_id, attempt=self.attempt, stage=self.stage, tenant_id=self.tenant_id)

    async def _provider(self) -> tuple[Resolved, Provider, bool, tuple[str, ...]]:
        """The resolved model and key, the adapter, whether the limiter meters it, and on what.

        A provider registered without dimensions (offline) is metered only when RATE_LIMITS
        names it, on its adapter's dimensions (the demo runs offline under the seeds' limits).
        """
        if self._resolved is None:
            self._resolved = await resolve(self.job, self._settings, self._pool, self.app, stored=self._stored)
        r = self._resolved
        entry = self.app.providers[r.provider]
        adapter = self.app.provider_adapter(r.provider, self._settings)
        dims = entry.limit_dimensions or tuple(getattr(adapter, "limit_dimensions", ("rpm", "tpm")))
        limited = bool(entry.limit_dimensions) or ratelimit.is_limited(self._settings, r.provider)
        return r, adapter, limited, dims

    async def text(self, system: str, prompt: str, *, max_tokens: int = 1500,
                   json_output: bool = False) -> TextResult:
        await self._before_call()
        r, provider, limited, dims = await self._provider()
        request = TextRequest(model=r.model, prompt=prompt, system=system, max_tokens=max_tokens,
                              json_output=json_output)
        # Per-call replay (blogqueue/replay.py): an answer this stage already paid for is not paid again.
        self._calls.enter(self.stage)
        n, digest = self._calls.next_call(), replay.text_request_hash(request)
        kept = await self._calls.stored(n, digest)
        if kept is not None:
            return replay.text_from_json(kept)
        if self.lane == "batch":
            from .batchlane import text_call as batch_text_call  # the now-lane never imports it

            # A parked job ends its attempt without a finish: the earlier stages' outputs still
            # waiting for the next write (the module's docstring) are written before it parks,
            # so the resumed attempt sends the same request and finds its stored answer.
            await self._write_unsaved(self.stage)

            sent = await batch_text_call(self, r, request, n, digest)
            if sent is not None:  # its batch request came back: the answer, stored by the poller
                return sent
            # None: no batch adapter for this provider, or the batch fell back: the now-lane.
        await self._calls.write_held()  # call n-1's answer is on disk before call n is sent
        ctx = self._ctx()
        if not limited:
            result = await provider.generate_text(request, r.api_key, ctx)  # unlimited: 429s go to the engine
        else:
            cost = ratelimit.text_cost(dims, system, prompt, max_tokens=max_tokens)
            result = await self._limited(
                r, provider, cost, lambda: provider.generate_text(request, r.api_key, ctx),
                used=ratelimit.text_usage, info=lambda res: res.limits)
        self._calls.hold(n, digest, replay.text_to_json(result))
        return result

    async def image(self, prompt: str) -> str:
        await self._before_call()
        r, provider, limited, _ = await self._provider()
        request, ctx = ImageRequest(model=r.model, prompt=prompt), self._ctx()
        self._calls.enter(self.stage)
        n, digest = self._calls.next_call(), replay.image_request_hash(r.model, prompt)
        kept = await self._calls.stored(n, digest)
        if kept is not None:
            return str(kept["url"])
        await self._calls.write_held()
        if not limited:
            url = (await provider.generate_image(request, r.api_key, ctx)).url
        else:
            result: ImageResult = await self._limited(
                r, provider, {"rpm": 1}, lambda: provider.generate_image(request, r.api_key, ctx),
                used=lambda res: None, info=lambda res: res.limits)
            url = result.url
        self._calls.hold(n, digest, {"url": url, "model": r.model})
        return url

    async def _limited(self, r: Resolved, provider: Provider, cost: ratelimit.Cost, call: Callable[[], Any], *,
                       used: Callable[[Any], Any], info: Callable[[Any], Any]) -> Any:
        """The one place a stage's provider call passes the shared limiter (fair line: this tenant)."""
        # The SDK client is built before the grant: built after it, it delays the call's arrival
        # at the provider by up to a second on a loaded machine (see blogqueue.ratelimit).
        ratelimit.warm(provider, r.api_key)
        return await ratelimit.limiter(self._settings).call(r.provider, r.api_key, cost, call, used=used,
                                                            info=info, tenant=self.tenant_id)

    # -- checkpoints ---------------------------------------------------------------

    async def mark_effect(self) -> None:
        """Call before a paid call or side effect this stage makes by other means than
        `run.text`, `run.image`, `run.publish` or `run.write_back` (which call it): this
        stage's output is then saved as soon as it returns, on its own, before the next
        stage or the finish.
        """
        self._external = True
        await self._before_call()

    async def _before_call(self) -> None:
        self._effect = True
        if self._paid_since is not None:
            # Invariant 3: an earlier stage's paid answer is committed before this call starts.
            # Awaited, and an error (stale attempt, database away) ends the attempt here.
            await self._settle_late_write()
            async with self._write_lock:
                if self._unsaved:
                    await self._checkpoint(self.stage)
            return
        if self._unsaved and self._late is None:
            self._late = asyncio.create_task(self._write_late(self.stage))

    def _watch_paid(self, stage: str) -> None:
        """At the start of a stage while a paid output waits: written SHOW_STAGE_AFTER after it
        returned unless something writes it first (a paid call's preparation, the finish)."""
        if self._paid_since is not None and self._late is None:
            delay = self._paid_since + SHOW_STAGE_AFTER - asyncio.get_running_loop().time()
            self._late = asyncio.create_task(self._write_late(stage, delay))

    async def _write_late(self, stage: str, delay: float = SHOW_STAGE_AFTER) -> None:
        """Writes the outputs still unsaved when the call has run SHOW_STAGE_AFTER seconds."""
        await asyncio.sleep(max(0.0, delay))
        # Shielded: once started, the write completes (the stage's end waits on the lock).
        await asyncio.shield(self._write_unsaved(stage))

    async def _write_unsaved(self, following: str) -> None:
        async with self._write_lock:
            if not self._unsaved:
                return
            try:
                await self._checkpoint(following)
            except StaleAttempt:
                pass  # the stage's own checkpoint or the finish finds that out and stops
            except Exception as exc:  # e.g. the database away for a moment: the next write takes them
                structlog.get_logger("blogqueue.pipeline").warning(
                    "could not write earlier stages early; they go with the next write",
                    error=type(exc).__name__)

    async def _settle_late_write(self) -> None:
        """At a stage's end: drops the early write if it has not started, else waits for it."""
        late, self._late = self._late, None
        if late is not None:
            late.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await late
        async with self._write_lock:
            pass

    async def _before_delivery(self, publisher: Any) -> None:
        # A publisher that declares `side_effects = False` (`none`: the result stays in
        # PostgreSQL) delivers nothing, so its stage needs no checkpoint of its own.
        if getattr(publisher, "side_effects", True):
            await self.mark_effect()

    async def _checkpoint(self, following: str | None) -> None:
        """Saves the unsaved stage outputs while this attempt still owns the job; StaleAttempt if it does not."""
        names = [n for n, _ in self._unsaved]
        owned = await self._save_stages(self.job["id"], self.attempt, names, [o for _, o in self._unsaved],
                                        following)
        if not owned:
            raise StaleAttempt(names[-1])
        self._unsaved.clear()
        self._paid_since = None
        if self.stage in names:  # the running stage's output is saved: its held answers need no write
            self._calls.checkpointed()

    async def _save_alone(self, *args: Any) -> bool:
        return bool(await self._pool.fetchval(Q["save_stages"], *args))

    def unsaved(self) -> tuple[list[str], list[dict[str, Any]]]:
        """Finished stages whose outputs are not written yet (names, outputs), for the attempt's finish."""
        return [n for n, _ in self._unsaved], [o for _, o in self._unsaved]

    # -- the app's prompts, source and publisher -------------------------------------

    def prompt(self, name: str) -> Prompt:
        try:
            return self.app.prompts[name]
        except KeyError:
            raise FatalError(f"no prompt {name!r} is registered on this app", code="unknown_prompt") from None

    async def fetch_source(self) -> dict[str, Any]:
        return await self.app.fetch_source(self.job["spec"]["source"], self._settings, self.tenant_id)

    async def publish(self, post: dict[str, Any], source: dict[str, Any] | None = None) -> dict[str, Any]:
        publisher, config = self.app.publisher_for(self._settings)
        await self._before_delivery(publisher)
        out: dict[str, Any] = await publisher.publish(self.job, post, source or {}, config)
        return out

    async def write_back(self, rewrite: dict[str, Any], product: dict[str, Any]) -> dict[str, Any]:
        publisher, config = self.app.publisher_for(self._settings)
        await self._before_delivery(publisher)
        out: dict[str, Any] = await publisher.write_back(self.job, rewrite, product, config)
        return out


def usage(result: TextResult) -> dict[str, Any]:
    """What a stage keeps of a text call for the job's result: model and token counts."""
    return {"model": result.model, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens}


async def run_pipeline(run: Run, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Runs the unfinished stages of the job's kind in order; returns the job's result.

    Raises StaleAttempt when a checkpoint finds the attempt no longer owns the
    job, and StopRequested when `should_stop` says stop at a boundary. Outputs
    still unsaved when it returns or raises (see the module's docstring) are
    in `run.unsaved()`: the attempt's finish writes them.
    """
    kind = run.app.kinds[run.kind]
    names = kind.stage_names
    for i, (name, stage) in enumerate(kind.stages):
        if name in run.outputs:
            continue
        if should_stop():
            raise StopRequested
        run.stage = name
        run._effect = run._external = False
        run._watch_paid(name)
        try:
            output = await stage(run)
        except Exception:
            # A retry of this stage replays the calls it already paid for (blogqueue/replay.py).
            with contextlib.suppress(Exception):
                await run._calls.write_held()
            raise
        finally:
            # Before anything else writes (this stage's checkpoint, the finish), the early write
            # of earlier outputs (SHOW_STAGE_AFTER) is either dropped or done.
            await asyncio.shield(run._settle_late_write())
        if not isinstance(output, dict):
            raise FatalError(f"stage {name!r} of kind {kind.name!r} returned {type(output).__name__}, not a dict",
                             code="bad_stage_output")
        run.outputs[name] = output
        run._unsaved.append((name, output))
        following = names[i + 1] if i + 1 < len(names) else None
        # See the module's docstring: a delivery's acknowledgement is written here, now; a paid
        # answer before the next paid call, by the finish, or SHOW_STAGE_AFTER from now; a free
        # stage's output with the next write. A paid stage followed only by free ones (image,
        # then a publisher that delivers nothing) so costs no statement of its own.
        if run._external:
            await run._checkpoint(following)
        elif run._effect and run._paid_since is None:
            run._paid_since = asyncio.get_running_loop().time()
    return kind.result(run) if kind.result is not None else {n: run.outputs[n] for n in names}
