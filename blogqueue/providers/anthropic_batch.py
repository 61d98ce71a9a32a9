"""Anthropic's Message Batches API through the `anthropic` SDK (docs/batch-lane.md).

`client.messages.batches.create(requests=[{custom_id, params}])` with the same `params`
the synchronous adapter sends (Anthropic: a batch holds "up to 100,000 Message requests
or 256 MB in size, whichever is reached first"; custom ids match `^[a-zA-Z0-9_-]{1,64}$`),
`retrieve` to poll (`processing_status`: `in_progress`, `canceling`, `ended`),
`results` (one JSONL line per request, `{custom_id, result: {type: succeeded | errored |
canceled | expired, ...}}`, "not guaranteed to be in the same order as requests"),
`cancel`, `list` (newest first).

Anthropic batches carry no metadata, so a leader that died between the upload and
recording the id finds its batch by custom ids: among the key's batches created since
the intent was recorded and not already recorded, one whose request count matches; an
ended one is confirmed by its results' custom ids. Requests a batch did not run
(`canceled`, `expired`) are left out of the answers and fall back to the now-lane.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anthropic
from anthropic import AsyncAnthropic

from ..errors import JobError
from . import common
from .anthropic import NAME, usage_fields
from .base import ProviderConfig, TextRequest, TextResult
from .batch import BatchAnswer, BatchItem, BatchStatus, Intent

FIND_SCAN = 500
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


def params(request: TextRequest) -> dict[str, Any]:
    """The Messages `params` the synchronous adapter would send."""
    prompt = request.prompt + ("\n\nAnswer with one JSON object only." if request.json_output else "")
    out: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens,
                           "messages": [{"role": "user", "content": prompt}]}
    if request.system:
        out["system"] = request.system
    return out


class AnthropicBatch:
    name = NAME
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def __init__(self, config: ProviderConfig) -> None:
        self.timeout = config.timeout_seconds
        self.clients: common.ClientCache[AsyncAnthropic] = common.ClientCache(
            lambda key: AsyncAnthropic(api_key=key, base_url=config.base_url, timeout=self.timeout, max_retries=2))

    def _client(self, api_key: str | None) -> AsyncAnthropic:
        if not api_key:
            raise common.no_key(NAME)
        return self.clients.get(api_key)

    async def submit(self, items: list[BatchItem], api_key: str | None, model: str, intent_id: str) -> str:
        try:
            b = await self._client(api_key).messages.batches.create(
                requests=[{"custom_id": i.custom_id, "params": params(i.request)} for i in items])  # type: ignore[typeddict-item]
        except anthropic.AnthropicError as exc:
            raise _error(exc, api_key) from None
        return b.id

    async def find(self, api_key: str | None, intent: Intent) -> str | None:
        client = self._client(api_key)
        since = intent.created_at - timedelta(seconds=60)  # clocks of PostgreSQL and Anthropic differ
        candidates = []
        seen = 0
        try:
            async for b in client.messages.batches.list(limit=100):
                seen += 1
                if b.created_at < since or seen > FIND_SCAN:
                    break
                c = b.request_counts
                total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
                if b.id not in intent.known and total == len(intent.custom_ids):
                    candidates.append(b)
            for b in candidates:
                if b.processing_status == "ended":
                    ids = {r.custom_id async for r in await client.messages.batches.results(b.id)}
                    if ids == intent.custom_ids:
                        return b.id
                elif len(candidates) == 1:
                    return b.id  # unconfirmable until it ends; the only batch it can be
        except anthropic.AnthropicError as exc:
            raise _error(exc, api_key) from None
        return None

    async def status(self, batch_id: str, api_key: str | None) -> BatchStatus:
        try:
            b = await self._client(api_key).messages.batches.retrieve(batch_id)
        except anthropic.AnthropicError as exc:
            raise _error(exc, api_key) from None
        if b.processing_status != "ended":
            return BatchStatus("in_progress")
        c = b.request_counts
        detail = f"succeeded {c.succeeded}, errored {c.errored}, canceled {c.canceled}, expired {c.expired}"
        if c.expired:
            return BatchStatus("expired", detail)
        return BatchStatus("cancelled" if b.cancel_initiated_at else "ended", detail)

    async def results(self, batch_id: str, api_key: str | None) -> list[BatchAnswer]:
        out: list[BatchAnswer] = []
        try:
            async for line in await self._client(api_key).messages.batches.results(batch_id):
                answer = _answer(line, api_key)
                if answer is not None:
                    out.append(answer)
        except anthropic.AnthropicError as exc:
            raise _error(exc, api_key) from None
        return out

    async def cancel(self, batch_id: str, api_key: str | None) -> None:
        try:
            await self._client(api_key).messages.batches.cancel(batch_id)
        except anthropic.AnthropicError as exc:
            raise _error(exc, api_key) from None


def _answer(line: Any, api_key: str | None) -> BatchAnswer | None:
    result = line.result
    if result.type == "succeeded":
        message = result.message
        if message.stop_reason == "refusal":
            return BatchAnswer(line.custom_id, error=common.from_status(
                NAME, 400, "the model declined to answer", None, api_key, refused=True))
        text = "".join(getattr(b, "text", "") for b in message.content)
        u = usage_fields(message.usage)
        return BatchAnswer(line.custom_id, result=TextResult(
            text=text, model=f"{NAME}:{message.model}", prompt_tokens=u["prompt_tokens"],
            completion_tokens=u["completion_tokens"], cache_read_input_tokens=u["cache_read_input_tokens"],
            cache_creation_input_tokens=u["cache_creation_input_tokens"]))
    if result.type == "errored":
        err = result.error.error
        return BatchAnswer(line.custom_id, error=common.from_status(
            NAME, ERROR_STATUS.get(err.type, 500), err.message, None, api_key))
    return None  # canceled or expired: never ran, the now-lane takes it


def _error(exc: anthropic.AnthropicError, api_key: str | None) -> JobError:
    if isinstance(exc, anthropic.APITimeoutError):
        return common.timeout_error(NAME, 60.0)
    if isinstance(exc, anthropic.APIConnectionError):
        return common.connection_error(NAME)
    if isinstance(exc, anthropic.APIStatusError):
        return common.from_status(NAME, exc.status_code, exc.message, exc.response.headers, api_key or "")
    return common.from_status(NAME, None, type(exc).__name__, None, api_key or "")
