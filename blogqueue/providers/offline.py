"""The deterministic, network-free provider.

Same prompt, same text: output is derived from a hash of the request, so tests
and demos are repeatable. Latency comes from `OFFLINE_LATENCY_MS`.

Model names select behaviour, which makes failure paths reproducible from any
process (tests, demos, chaos runs):

    offline:template        normal text and images
    offline:slow-<ms>       each call takes <ms> milliseconds
    offline:flaky-<n>       attempts 1..n fail with a retryable error
    offline:ratelimit-<n>   attempts 1..n are answered "429, retry after 1 s"
    offline:refuse          every call is refused as a content-policy violation (fatal)

When `OFFLINE_CALL_LOG` names a file, every call appends one JSON line to it
(job, attempt, stage, what), so a test can count the paid calls it would have made.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass

from ..errors import FatalError, RateLimited, RetryableError
from .base import CallContext, ImageRequest, ImageResult, TextRequest, TextResult

MODELS = re.compile(r"^(template|refuse|slow-\d{1,6}|flaky-\d{1,2}|ratelimit-\d{1,2})$")
WORDS = ("craft", "garden", "season", "light", "story", "market", "fresh", "simple", "bold",
         "guide", "morning", "secret", "classic", "modern", "local", "quality", "everyday",
         "style", "care", "bright", "home", "trail", "coffee", "linen", "handmade")


def validate(model: str) -> None:
    if not MODELS.match(model):
        raise ValueError(f"offline model must be template, refuse, slow-<ms>, flaky-<n> or ratelimit-<n>, "
                         f"got {model!r}")


@dataclass(frozen=True)
class OfflineConfig:
    """OFFLINE_LATENCY_MS and OFFLINE_CALL_LOG: all the offline provider is given."""

    latency_ms: float = 0.0
    call_log: str | None = None


class OfflineProvider:
    name = "offline"
    limit_dimensions: tuple[str, ...] = ("rpm", "tpm")

    def __init__(self, config: OfflineConfig) -> None:
        self.latency_s = config.latency_ms / 1000
        self.call_log = config.call_log

    async def _behave(self, model: str, ctx: CallContext, what: str) -> None:
        self._log(ctx, what, model)
        kind, _, arg = model.partition("-")
        delay = int(arg) / 1000 if kind == "slow" else self.latency_s
        if delay:
            await asyncio.sleep(delay)
        if kind == "refuse":
            raise FatalError("the offline provider refused the request (content policy)", code="content_refused")
        if kind == "flaky" and ctx.attempt <= int(arg):
            raise RetryableError(f"offline provider: simulated timeout on attempt {ctx.attempt}", code="timeout")
        if kind == "ratelimit" and ctx.attempt <= int(arg):
            raise RateLimited("offline provider: simulated 429", retry_after=1.0)

    def _log(self, ctx: CallContext, what: str, model: str) -> None:
        if not self.call_log:
            return
        line = json.dumps({"job": ctx.job_id, "attempt": ctx.attempt, "stage": ctx.stage,
                           "call": what, "model": model, "pid": os.getpid()}) + "\n"
        # One O_APPEND write per line keeps lines whole across processes.
        fd = os.open(self.call_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    async def generate_text(self, request: TextRequest, api_key: str | None, ctx: CallContext) -> TextResult:
        await self._behave(request.model, ctx, "text")
        seed = hashlib.sha256(f"{request.system}\n{request.prompt}".encode()).digest()
        rng = random.Random(seed)
        topic = _topic(request.prompt)
        if request.json_output:
            text = json.dumps({
                "title": f"{topic.title()} — {rng.choice(WORDS).title()} Edition",
                "description": _paragraph(rng, topic, 3),
                "seo_title": f"{topic.title()} | {rng.choice(WORDS).title()}",
                "seo_description": _paragraph(rng, topic, 1)[:155],
            })
        else:
            title = f"{rng.choice(WORDS).title()} {topic.title()}: A {rng.choice(WORDS).title()} Guide"
            body = "\n\n".join(_paragraph(rng, topic, 4) for _ in range(4))
            text = f"# {title}\n\n{body}"
        prompt_tokens = max(1, len(request.prompt) // 4)
        completion_tokens = min(request.max_tokens, max(1, len(text) // 4))
        return TextResult(text=text, model=f"offline:{request.model}", prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens)

    async def generate_image(self, request: ImageRequest, api_key: str | None, ctx: CallContext) -> ImageResult:
        await self._behave(request.model, ctx, "image")
        colour = hashlib.sha256(request.prompt.encode()).hexdigest()[:6]
        return ImageResult(url=f"offline://image/{colour}.svg", model=f"offline:{request.model}")


def _topic(prompt: str) -> str:
    m = re.search(r"[Tt]opic: (.+)", prompt)
    return (m.group(1) if m else prompt).strip()[:80] or "our store"


def _paragraph(rng: random.Random, topic: str, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 14))]
        words.insert(rng.randint(0, len(words)), topic)
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)
