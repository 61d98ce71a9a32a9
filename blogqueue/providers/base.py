"""The one interface every provider adapter implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ProviderConfig:
    """What a built-in network provider adapter is given: its base URL and call timeout (no keys:
    a key comes with each call, resolved per job)."""

    base_url: str | None = None
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class CallContext:
    """Who a provider call is for: passed along so adapters can log and fakes can count."""

    job_id: str
    attempt: int
    stage: str
    tenant_id: str


@dataclass(frozen=True)
class TextRequest:
    model: str
    prompt: str
    system: str | None = None
    max_tokens: int = 1024
    json_output: bool = False


@dataclass(frozen=True)
class TextResult:
    text: str
    model: str
    prompt_tokens: int      # input tokens as the provider reports them (Anthropic: after the cache breakpoints)
    completion_tokens: int
    limits: RateInfo | None = None  # the provider's rate-limit headers, for the shared limiter
    # Prompt caching (Anthropic `usage.cache_read_input_tokens` / `cache_creation_input_tokens`; OpenAI's
    # `prompt_tokens_details.cached_tokens` is part of `prompt_tokens` and lands in the first field too).
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ImageRequest:
    model: str
    prompt: str
    size: str = "1024x1024"


@dataclass(frozen=True)
class ImageResult:
    url: str
    model: str
    limits: RateInfo | None = None


class Provider(Protocol):
    """Adapters raise blogqueue.errors.JobError subclasses, never a bare SDK error.

    `limit_dimensions` names what the provider limits per API key, from `RATE_LIMITS`' vocabulary:
    `rpm`, `tpm` (prompt + completion tokens), `itpm` / `otpm` (input / output tokens). The shared
    limiter charges a text call on those, an image call on `rpm` only.
    """

    name: str
    limit_dimensions: tuple[str, ...]

    async def generate_text(self, request: TextRequest, api_key: str | None,
                            ctx: CallContext) -> TextResult: ...

    async def generate_image(self, request: ImageRequest, api_key: str | None,
                             ctx: CallContext) -> ImageResult: ...


@dataclass(frozen=True)
class RateInfo:
    """What a provider's rate-limit headers said after a call (None: not sent)."""

    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    # Anthropic's separate input and output token limits (`anthropic-ratelimit-input-tokens-*` etc.).
    remaining_input_tokens: int | None = None
    reset_input_tokens_s: float | None = None
    remaining_output_tokens: int | None = None
    reset_output_tokens_s: float | None = None
    # How long the provider took on the request (OpenAI's `openai-processing-ms`): the request reached it
    # at least that long before the answer, which tells the limiter when the provider counted it.
    processing_s: float | None = None
