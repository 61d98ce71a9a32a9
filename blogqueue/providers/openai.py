"""OpenAI (and any OpenAI-compatible server) through the official `openai` SDK.

Text: chat completions. Images: `images.generate` with the job's model when it
is an image model (`dall-e-*`, `gpt-image-*`), else `dall-e-3`. The base URL
comes from `OPENAI_BASE_URL` (default: OpenAI's). The SDK's own retries are
off: the engine retries and the shared limiter must see every 429.
"""

from __future__ import annotations

import re
from typing import Any

import openai
from openai import AsyncOpenAI

from ..errors import JobError
from . import common
from .base import CallContext, ImageRequest, ImageResult, ProviderConfig, TextRequest, TextResult

NAME = "openai"
MODELS = re.compile(r"^(gpt-|o\d|chatgpt-|dall-e-|gpt-image-|ft:)[A-Za-z0-9._:-]{0,120}$")
IMAGE_MODELS = ("dall-e-", "gpt-image-")
DEFAULT_IMAGE_MODEL = "dall-e-3"


def validate(model: str) -> None:
    if not MODELS.match(model):
        raise ValueError(f"unknown OpenAI model {model!r}; expected e.g. gpt-4o-mini, o3-mini, dall-e-3")


class OpenAIProvider:
    name = NAME
    limit_dimensions: tuple[str, ...] = ("rpm", "tpm")

    def __init__(self, config: ProviderConfig) -> None:
        self.timeout = config.timeout_seconds
        self.clients: common.ClientCache[AsyncOpenAI] = common.ClientCache(
            lambda key: AsyncOpenAI(api_key=key, base_url=config.base_url, timeout=self.timeout,
                                    max_retries=0))

    async def generate_text(self, request: TextRequest, api_key: str | None, ctx: CallContext) -> TextResult:
        if not api_key:
            raise common.no_key(NAME)
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        extra: dict[str, Any] = {"response_format": {"type": "json_object"}} if request.json_output else {}
        try:
            raw = await self.clients.get(api_key).chat.completions.with_raw_response.create(
                model=request.model, messages=messages, max_completion_tokens=request.max_tokens,  # type: ignore[arg-type]
                **extra)
            completion = await common.parsed(raw)
        except openai.OpenAIError as exc:
            raise self._error(exc, api_key) from None
        choice = completion.choices[0]
        message = choice.message
        if choice.finish_reason == "content_filter" or getattr(message, "refusal", None):
            raise common.from_status(NAME, 400, message.refusal or "the answer was filtered", None, api_key,
                                     refused=True)
        usage = completion.usage
        details = getattr(usage, "prompt_tokens_details", None)
        return TextResult(text=message.content or "", model=f"{NAME}:{completion.model or request.model}",
                          prompt_tokens=usage.prompt_tokens if usage else 0,
                          completion_tokens=usage.completion_tokens if usage else 0,
                          cache_read_input_tokens=int(getattr(details, "cached_tokens", 0) or 0),
                          limits=common.rate_info(raw.headers))

    async def generate_image(self, request: ImageRequest, api_key: str | None, ctx: CallContext) -> ImageResult:
        if not api_key:
            raise common.no_key(NAME)
        model = request.model if request.model.startswith(IMAGE_MODELS) else DEFAULT_IMAGE_MODEL
        try:
            raw = await self.clients.get(api_key).images.with_raw_response.generate(
                model=model, prompt=request.prompt, size=request.size, n=1)  # type: ignore[arg-type]
            images = await common.parsed(raw)
        except openai.OpenAIError as exc:
            raise self._error(exc, api_key) from None
        if not images.data or not (images.data[0].url or images.data[0].b64_json):
            raise common.from_status(NAME, 502, "the image answer held no image", None, api_key)
        url = images.data[0].url or f"data:image/png;base64,{images.data[0].b64_json}"
        return ImageResult(url=url, model=f"{NAME}:{model}", limits=common.rate_info(raw.headers))

    def _error(self, exc: openai.OpenAIError, api_key: str) -> JobError:
        if isinstance(exc, openai.APITimeoutError):
            return common.timeout_error(NAME, self.timeout)
        if isinstance(exc, openai.APIConnectionError):
            return common.connection_error(NAME)
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            err = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
            message = str(err.get("message") or exc.message)
            refused = err.get("code") == "content_policy_violation"
            return common.from_status(NAME, exc.status_code, message, exc.response.headers, api_key,
                                      refused=refused)
        return common.from_status(NAME, None, type(exc).__name__, None, api_key)
