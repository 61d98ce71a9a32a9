"""Anthropic through the official `anthropic` SDK (Messages API); text only.

Anthropic has no image model: a `blog_post` job on an Anthropic model must ask
for `"image": false` or fail with `image_unsupported`. Base URL from
`ANTHROPIC_BASE_URL`. Rate-limit headers (`anthropic-ratelimit-*`) feed the
shared limiter like OpenAI's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

import anthropic
from anthropic import AsyncAnthropic

from ..errors import FatalError, JobError
from . import common
from .base import CallContext, ImageRequest, ImageResult, ProviderConfig, RateInfo, TextRequest, TextResult

NAME = "anthropic"
MODELS = re.compile(r"^claude-[a-z0-9.-]{1,100}$")


def validate(model: str) -> None:
    if not MODELS.match(model):
        raise ValueError(f"unknown Anthropic model {model!r}; expected e.g. claude-3-5-sonnet-latest")


def _rate_info(headers: Mapping[str, str]) -> RateInfo | None:
    def num(name: str) -> int | None:
        try:
            return int(headers[name])
        except (KeyError, ValueError):
            return None

    def reset(name: str) -> float | None:
        try:
            at = datetime.fromisoformat(headers[name].replace("Z", "+00:00"))
        except (KeyError, ValueError):
            return None
        return max(0.0, (at - datetime.now(UTC)).total_seconds())

    p = "anthropic-ratelimit-"
    info = RateInfo(num(p + "requests-remaining"), reset(p + "requests-reset"),
                    num(p + "tokens-remaining"), reset(p + "tokens-reset"),
                    num(p + "input-tokens-remaining"), reset(p + "input-tokens-reset"),
                    num(p + "output-tokens-remaining"), reset(p + "output-tokens-reset"))
    found = (info.remaining_requests, info.remaining_tokens, info.remaining_input_tokens, info.remaining_output_tokens)
    return info if any(v is not None for v in found) else None


def usage_fields(usage: object) -> dict[str, int]:
    """`usage` of a Messages answer as TextResult fields.

    `input_tokens` counts only the tokens after the last cache breakpoint; cache reads and writes
    come separately. Anthropic's rate limits: input_tokens and cache_creation_input_tokens count
    toward ITPM, cache_read_input_tokens do not (on current models), so the limiter needs all three.
    """
    def n(name: str) -> int:
        return int(getattr(usage, name, 0) or 0)

    return {"prompt_tokens": n("input_tokens"), "completion_tokens": n("output_tokens"),
            "cache_read_input_tokens": n("cache_read_input_tokens"),
            "cache_creation_input_tokens": n("cache_creation_input_tokens")}


class AnthropicProvider:
    name = NAME
    limit_dimensions: tuple[str, ...] = ("rpm", "itpm", "otpm")  # Anthropic limits input and output tokens separately

    def __init__(self, config: ProviderConfig) -> None:
        self.timeout = config.timeout_seconds
        self.clients: common.ClientCache[AsyncAnthropic] = common.ClientCache(
            lambda key: AsyncAnthropic(api_key=key, base_url=config.base_url, timeout=self.timeout,
                                       max_retries=0))

    async def generate_text(self, request: TextRequest, api_key: str | None, ctx: CallContext) -> TextResult:
        if not api_key:
            raise common.no_key(NAME)
        prompt = request.prompt + ("\n\nAnswer with one JSON object only." if request.json_output else "")
        kwargs = {"system": request.system} if request.system else {}
        try:
            raw = await self.clients.get(api_key).messages.with_raw_response.create(
                model=request.model, max_tokens=request.max_tokens,
                messages=[{"role": "user", "content": prompt}], **kwargs)  # type: ignore[arg-type]
            message = await common.parsed(raw)
        except anthropic.AnthropicError as exc:
            raise self._error(exc, api_key) from None
        if message.stop_reason == "refusal":
            raise common.from_status(NAME, 400, "the model declined to answer", None, api_key, refused=True)
        text = "".join(getattr(b, "text", "") for b in message.content)
        return TextResult(text=text, model=f"{NAME}:{message.model or request.model}",
                          limits=_rate_info(raw.headers), **usage_fields(message.usage))

    async def generate_image(self, request: ImageRequest, api_key: str | None, ctx: CallContext) -> ImageResult:
        raise FatalError("Anthropic models cannot make images: submit the job with \"image\": false, "
                         "or choose an openai or replicate model", code="image_unsupported")

    def _error(self, exc: anthropic.AnthropicError, api_key: str) -> JobError:
        if isinstance(exc, anthropic.APITimeoutError):
            return common.timeout_error(NAME, self.timeout)
        if isinstance(exc, anthropic.APIConnectionError):
            return common.connection_error(NAME)
        if isinstance(exc, anthropic.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            err = body.get("error") if isinstance(body.get("error"), dict) else body
            message = str((err or {}).get("message") or exc.message)
            return common.from_status(NAME, exc.status_code, message, exc.response.headers, api_key)
        return common.from_status(NAME, None, type(exc).__name__, None, api_key)
