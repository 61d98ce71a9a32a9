"""Replicate through the official `replicate` SDK; images only.

A model is `replicate:owner/name` (an official model) or
`replicate:owner/name:<64-hex version>`. Base URL from `REPLICATE_BASE_URL`.
The prediction is created with `Prefer: wait` (synchronous mode) and polled
if it is still running after that, within `PROVIDER_TIMEOUT_SECONDS`.
Text calls on a Replicate model fail with `text_unsupported`: use Replicate for
the image and another provider for text (or `"image": false`).
"""

from __future__ import annotations

import asyncio
import re

import httpx
import replicate
from replicate.exceptions import ModelError, ReplicateError

from ..errors import FatalError, JobError, RetryableError
from . import common
from .base import CallContext, ImageRequest, ImageResult, ProviderConfig, TextRequest, TextResult

NAME = "replicate"
MODELS = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}/[a-z0-9][a-z0-9_.-]{0,99}(:[0-9a-f]{64})?$")
REFUSAL = re.compile(r"nsfw|safety|content policy|flagged", re.IGNORECASE)


def validate(model: str) -> None:
    if not MODELS.match(model):
        raise ValueError(f"unknown Replicate model {model!r}; expected owner/name or owner/name:<version>, "
                         f"e.g. black-forest-labs/flux-schnell")


class ReplicateProvider:
    name = NAME
    limit_dimensions: tuple[str, ...] = ("rpm",)

    def __init__(self, config: ProviderConfig) -> None:
        self.timeout = config.timeout_seconds
        t = httpx.Timeout(min(5.0, self.timeout), read=self.timeout)
        self.clients: common.ClientCache[replicate.Client] = common.ClientCache(
            lambda key: replicate.Client(api_token=key, base_url=config.base_url, timeout=t))

    async def generate_text(self, request: TextRequest, api_key: str | None, ctx: CallContext) -> TextResult:
        raise FatalError("Replicate is used for images here; choose an openai, anthropic or gemini model for "
                         "text", code="text_unsupported")

    async def generate_image(self, request: ImageRequest, api_key: str | None, ctx: CallContext) -> ImageResult:
        if not api_key:
            raise common.no_key(NAME)
        client = self.clients.get(api_key)
        name, _, version = request.model.partition(":")
        width, _, height = request.size.partition("x")
        inputs = {"prompt": request.prompt, "width": int(width or 1024), "height": int(height or 1024)}
        wait = max(1, min(60, int(self.timeout)))
        try:
            async with asyncio.timeout(self.timeout + 1):
                if version:
                    pred = await client.predictions.async_create(version=version, input=inputs, wait=wait)
                else:
                    pred = await client.predictions.async_create(model=name, input=inputs, wait=wait)
                if pred.status not in ("succeeded", "failed", "canceled"):
                    await pred.async_wait()
        except TimeoutError:
            raise common.timeout_error(NAME, self.timeout) from None
        except ReplicateError as exc:
            # The SDK drops the response headers; Replicate states the wait in the detail text.
            m = re.search(r"available in (\d+(?:\.\d+)?) second", exc.detail or "")
            headers = {"retry-after": m.group(1)} if m else None
            raise common.from_status(NAME, exc.status, exc.detail or exc.title or "", headers, api_key) from None
        except ModelError as exc:
            raise self._failed(str(exc), api_key) from None
        except httpx.TimeoutException:
            raise common.timeout_error(NAME, self.timeout) from None
        except httpx.TransportError:
            raise common.connection_error(NAME) from None
        if pred.status != "succeeded":
            raise self._failed(str(pred.error or pred.status), api_key)
        output = pred.output
        url = output[0] if isinstance(output, list) and output else output
        if not isinstance(url, str) or not url:
            raise RetryableError(f"{NAME} returned no image", code="provider_error")
        return ImageResult(url=url, model=f"{NAME}:{request.model}")

    def _failed(self, error: str, api_key: str) -> JobError:
        if REFUSAL.search(error):
            return common.from_status(NAME, 400, error, None, api_key, refused=True)
        return RetryableError(f"{NAME} prediction failed: {common.redact(error, api_key)}", code="provider_error")
