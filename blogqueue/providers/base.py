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
    prompt_tokens: int
    completion_tokens: int
    limits: RateInfo | None = None  # the provider's rate-limit headers, for the shared limiter

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
    """Adapters raise blogqueue.errors.JobError subclasses, never a bare SDK error."""

    name: str

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
