"""The stages of each job kind, and the loop that runs them with checkpoints.

A stage is `async def stage(run) -> dict`: its output is saved in
`bq_job_stages` before the next stage starts, and a later attempt skips every
stage that has a saved output (invariant 3), so a paid call whose result was
saved is never made again.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from . import prompts, providers, publishers, ratelimit, sources
from .db import Q
from .errors import FatalError
from .providers import CallContext, ImageRequest, ImageResult, TextRequest, TextResult
from .resolve import Resolved, resolve
from .settings import Settings


class StaleAttempt(Exception):
    """This attempt no longer owns its job (lease lapsed, job stopped): stop quietly."""


@dataclass
class Run:
    job: dict[str, Any]
    settings: Settings
    pool: asyncpg.Pool
    outputs: dict[str, Any]
    stage: str = ""
    _resolved: Resolved | None = field(default=None, repr=False)

    @property
    def job_id(self) -> str:
        return str(self.job["id"])

    @property
    def spec(self) -> dict[str, Any]:
        return self.job["spec"]

    def ctx(self) -> CallContext:
        return CallContext(job_id=self.job_id, attempt=self.job["attempt"], stage=self.stage,
                           tenant_id=self.job["tenant_id"])

    async def resolved(self) -> Resolved:
        if self._resolved is None:
            self._resolved = await resolve(self.job, self.settings, self.pool)
        return self._resolved

    async def text(self, system: str, prompt: str, *, max_tokens: int = 1500,
                   json_output: bool = False) -> TextResult:
        r = await self.resolved()
        provider = providers.get(r.provider, self.settings)
        request = TextRequest(model=r.model, prompt=prompt, system=system, max_tokens=max_tokens,
                              json_output=json_output)
        ctx = self.ctx()
        if r.provider == "offline" and not ratelimit.is_limited(self.settings, "offline"):
            return await provider.generate_text(request, r.api_key, ctx)  # unlimited: 429s go to the engine
        dims = getattr(provider, "limit_dimensions", ("rpm", "tpm"))
        cost = ratelimit.text_cost(dims, system, prompt, max_tokens=max_tokens)
        ratelimit.warm(provider, r.api_key)
        return await ratelimit.limiter(self.settings).call(
            r.provider, r.api_key, cost, lambda: provider.generate_text(request, r.api_key, ctx),
            used=ratelimit.text_usage, info=lambda res: res.limits, tenant=ctx.tenant_id)

    async def image(self, prompt: str) -> str:
        r = await self.resolved()
        provider = providers.get(r.provider, self.settings)
        request, ctx = ImageRequest(model=r.model, prompt=prompt), self.ctx()
        if r.provider == "offline" and not ratelimit.is_limited(self.settings, "offline"):
            return (await provider.generate_image(request, r.api_key, ctx)).url
        ratelimit.warm(provider, r.api_key)
        result: ImageResult = await ratelimit.limiter(self.settings).call(
            r.provider, r.api_key, {"rpm": 1}, lambda: provider.generate_image(request, r.api_key, ctx),
            used=lambda res: None, info=lambda res: res.limits, tenant=ctx.tenant_id)
        return result.url


def _usage(result: TextResult) -> dict[str, Any]:
    return {"model": result.model, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens}


# -- blog_post -----------------------------------------------------------------

async def source_stage(run: Run) -> dict[str, Any]:
    return await sources.fetch(run.spec["source"], run.settings, run.job["tenant_id"])


async def content_stage(run: Run) -> dict[str, Any]:
    system, prompt = prompts.blog(run.outputs["source"])
    result = await run.text(system, prompt)
    title, _, body = result.text.strip().partition("\n")
    title = title.lstrip("# ").strip() or run.outputs["source"]["topic"]
    return {"title": title, "body": body.strip(), "usage": _usage(result), "prompt_version": prompts.VERSION}


async def image_stage(run: Run) -> dict[str, Any]:
    if not run.spec.get("image", True):
        return {"skipped": True}
    return {"url": await run.image(prompts.image(run.outputs["content"]["title"]))}


async def publish_stage(run: Run) -> dict[str, Any]:
    if not run.spec.get("publish", True):
        return {"skipped": True}
    post = {"title": run.outputs["content"]["title"], "body": run.outputs["content"]["body"],
            "image_url": run.outputs["image"].get("url")}
    return await publishers.get(run.settings.publisher).publish(run.job, post, run.outputs["source"], run.settings)


def blog_result(run: Run) -> dict[str, Any]:
    content = run.outputs["content"]
    return {"title": content["title"], "body": content["body"],
            "image_url": run.outputs["image"].get("url"), "publish": run.outputs["publish"],
            "usage": content["usage"], "prompt_version": content.get("prompt_version", prompts.VERSION)}


# -- product_optimization ------------------------------------------------------

async def product_stage(run: Run) -> dict[str, Any]:
    return await sources.fetch(run.spec["source"], run.settings, run.job["tenant_id"])


async def rewrite_stage(run: Run) -> dict[str, Any]:
    system, prompt = prompts.rewrite(run.outputs["product"]["product"])
    result = await run.text(system, prompt, max_tokens=800, json_output=True)
    try:
        fields = json.loads(_strip_fence(result.text))
    except ValueError:
        raise FatalError("the model did not answer with the JSON object the rewrite asks for",
                         code="bad_model_output") from None
    keys = ("title", "description", "seo_title", "seo_description")
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), str) for k in keys):
        raise FatalError("the model's rewrite lacks title, description or SEO fields", code="bad_model_output")
    return {**{k: fields[k] for k in keys}, "usage": _usage(result), "prompt_version": prompts.VERSION}


async def write_back_stage(run: Run) -> dict[str, Any]:
    if not run.spec.get("publish", True):
        return {"skipped": True}
    rewrite = {k: v for k, v in run.outputs["rewrite"].items() if k not in ("usage", "prompt_version")}
    return await publishers.get(run.settings.publisher).write_back(run.job, rewrite, run.outputs["product"],
                                                                   run.settings)


def product_result(run: Run) -> dict[str, Any]:
    rewrite = run.outputs["rewrite"]
    return {**{k: v for k, v in rewrite.items() if k not in ("usage", "prompt_version")},
            "original": run.outputs["product"]["product"], "write_back": run.outputs["write_back"],
            "usage": rewrite["usage"], "prompt_version": rewrite.get("prompt_version", prompts.VERSION)}


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


Stage = Callable[[Run], Awaitable[dict[str, Any]]]
PIPELINES: dict[str, tuple[list[tuple[str, Stage]], Callable[[Run], dict[str, Any]]]] = {
    "blog_post": ([("source", source_stage), ("content", content_stage), ("image", image_stage),
                   ("publish", publish_stage)], blog_result),
    "product_optimization": ([("product", product_stage), ("rewrite", rewrite_stage),
                              ("write_back", write_back_stage)], product_result),
}


async def run_pipeline(run: Run, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Runs the unfinished stages in order; returns the job's result.

    Raises StaleAttempt when a checkpoint finds the attempt no longer owns the
    job, and asyncio.CancelledError when `should_stop` says stop at a boundary.
    """
    stages, result = PIPELINES[run.job["kind"]]
    names = [name for name, _ in stages]
    for i, (name, stage) in enumerate(stages):
        if name in run.outputs:
            continue
        if should_stop():
            raise StopRequested
        run.stage = name
        output = await stage(run)
        following = names[i + 1] if i + 1 < len(names) else None
        owned = await run.pool.fetchval(Q["save_stage"], run.job["id"], run.job["attempt"], name, output,
                                        following)
        if not owned:
            raise StaleAttempt(name)
        run.outputs[name] = output
    return result(run)


class StopRequested(Exception):
    """A stop was asked for this job; raised at a stage boundary."""
