"""Google Gemini through the official `google-genai` SDK; text only.

Base URL from `GEMINI_BASE_URL` (passed as `http_options.base_url`). The SDK's
own retries are off (one attempt): the engine retries and the limiter must
see every 429. Gemini's 429 carries its wait as a `RetryInfo.retryDelay`
detail (e.g. `"20s"`), which becomes the bucket's pause.
"""

from __future__ import annotations

import re
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..errors import FatalError, JobError, RateLimited
from . import common
from .base import CallContext, ImageRequest, ImageResult, ProviderConfig, TextRequest, TextResult

NAME = "gemini"
MODELS = re.compile(r"^gemini-[a-z0-9.-]{1,100}$")


def validate(model: str) -> None:
    if not MODELS.match(model):
        raise ValueError(f"unknown Gemini model {model!r}; expected e.g. gemini-2.0-flash")


class GeminiProvider:
    name = NAME
    limit_dimensions: tuple[str, ...] = ("rpm", "tpm")

    def __init__(self, config: ProviderConfig) -> None:
        self.timeout = config.timeout_seconds
        options = types.HttpOptions(base_url=config.base_url, timeout=int(self.timeout * 1000),
                                    retry_options=types.HttpRetryOptions(attempts=1))
        self.clients: common.ClientCache[genai.Client] = common.ClientCache(
            lambda key: genai.Client(api_key=key, http_options=options))

    async def generate_text(self, request: TextRequest, api_key: str | None, ctx: CallContext) -> TextResult:
        if not api_key:
            raise common.no_key(NAME)
        config = types.GenerateContentConfig(
            system_instruction=request.system, max_output_tokens=request.max_tokens,
            response_mime_type="application/json" if request.json_output else None)
        try:
            resp = await self.clients.get(api_key).aio.models.generate_content(
                model=request.model, contents=request.prompt, config=config)
        except genai_errors.APIError as exc:
            raise self._error(exc, api_key) from None
        except Exception as exc:
            raise self._transport(exc) from None
        blocked = resp.prompt_feedback and resp.prompt_feedback.block_reason
        finish = resp.candidates[0].finish_reason if resp.candidates else None
        if blocked or (finish is not None and str(getattr(finish, "value", finish)) in
                       ("SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII")):
            raise common.from_status(NAME, 400, f"blocked ({blocked or finish})", None, api_key, refused=True)
        usage = resp.usage_metadata
        return TextResult(text=resp.text or "", model=f"{NAME}:{request.model}",
                          prompt_tokens=(usage.prompt_token_count or 0) if usage else 0,
                          completion_tokens=(usage.candidates_token_count or 0) if usage else 0)

    async def generate_image(self, request: ImageRequest, api_key: str | None, ctx: CallContext) -> ImageResult:
        raise FatalError("Gemini text models cannot make images here: submit the job with \"image\": false, "
                         "or choose an openai or replicate model", code="image_unsupported")

    def _error(self, exc: genai_errors.APIError, api_key: str) -> JobError:
        headers = dict(exc.response.headers) if getattr(exc.response, "headers", None) else {}
        status = exc.code
        if status == 400 and "API_KEY_INVALID" in str(exc.details):
            status = 401  # Google answers a bad key with 400 INVALID_ARGUMENT / API_KEY_INVALID
        err = common.from_status(NAME, status, exc.message or str(exc.status), headers, api_key)
        if isinstance(err, RateLimited):
            delay = _retry_delay(exc.details)
            if delay is not None:
                err = RateLimited(f"{NAME} is rate limiting this API key (429); waiting {delay:g} s",
                                  retry_after=delay)
        return err

    def _transport(self, exc: Exception) -> JobError:
        name = type(exc).__name__
        if "Timeout" in name:
            return common.timeout_error(NAME, self.timeout)
        if "Connect" in name or isinstance(exc, OSError):
            return common.connection_error(NAME)
        return common.from_status(NAME, None, name, None, None)


def _retry_delay(details: Any) -> float | None:
    err = details.get("error", details) if isinstance(details, dict) else {}
    for d in err.get("details", []) if isinstance(err, dict) else []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("RetryInfo"):
            return common.parse_duration(str(d.get("retryDelay", "")))
    return None
