"""OpenAI's Batch API through the `openai` SDK (docs/batch-lane.md).

One batch is one JSONL file uploaded with `client.files.create(purpose="batch")`, one
line `{custom_id, method: "POST", url: "/v1/chat/completions", body}` per request and a
single model per file (OpenAI: "The file can contain up to 50,000 requests, and can be
up to 200 MB in size"), then `client.batches.create(input_file_id, endpoint,
completion_window="24h", metadata={"blogqueue_intent": <intent id>})`. The metadata is
how a leader that died between the upload and recording the id finds the batch again
(`client.batches.list`). Answers are read from `output_file_id` (one line per answered
request: `{custom_id, response: {status_code, body}, error}`) and `error_file_id`; an
expired batch still returns what completed, the rest is absent and falls back.
"""

from __future__ import annotations

import json
from typing import Any

import openai
from openai import AsyncOpenAI

from ..errors import JobError
from . import common
from .base import ProviderConfig, TextRequest, TextResult
from .batch import BatchAnswer, BatchItem, BatchState, BatchStatus, Intent
from .openai import NAME

INTENT_KEY = "blogqueue_intent"
ENDPOINT = "/v1/chat/completions"
STATES: dict[str, BatchState] = {
    "validating": "in_progress", "in_progress": "in_progress", "finalizing": "in_progress",
    "cancelling": "in_progress", "completed": "ended", "expired": "expired", "failed": "failed",
    "cancelled": "cancelled"}
# Per-request errors that only say the batch stopped before the request ran: a fallback, no error.
NOT_RUN = {"batch_expired", "batch_cancelled", "batch_failed"}
FIND_SCAN = 500  # batches listed (newest first) when looking for an intent


def body(request: TextRequest) -> dict[str, Any]:
    """The chat-completions body the synchronous adapter would send."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": request.prompt})
    out: dict[str, Any] = {"model": request.model, "messages": messages,
                           "max_completion_tokens": request.max_tokens}
    if request.json_output:
        out["response_format"] = {"type": "json_object"}
    return out


def jsonl(items: list[BatchItem]) -> bytes:
    return b"".join(json.dumps({"custom_id": i.custom_id, "method": "POST", "url": ENDPOINT,
                                "body": body(i.request)}).encode() + b"\n" for i in items)


class OpenAIBatch:
    name = NAME
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    def __init__(self, config: ProviderConfig) -> None:
        self.timeout = config.timeout_seconds
        self.clients: common.ClientCache[AsyncOpenAI] = common.ClientCache(
            lambda key: AsyncOpenAI(api_key=key, base_url=config.base_url, timeout=self.timeout, max_retries=2))

    def _client(self, api_key: str | None) -> AsyncOpenAI:
        if not api_key:
            raise common.no_key(NAME)
        return self.clients.get(api_key)

    async def submit(self, items: list[BatchItem], api_key: str | None, model: str, intent_id: str) -> str:
        client = self._client(api_key)
        try:
            f = await client.files.create(file=(f"blogqueue-{intent_id}.jsonl", jsonl(items), "application/jsonl"),
                                          purpose="batch")
            b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h", metadata={INTENT_KEY: intent_id})
        except openai.OpenAIError as exc:
            raise _error(exc, api_key) from None
        return b.id

    async def find(self, api_key: str | None, intent: Intent) -> str | None:
        client = self._client(api_key)
        seen = 0
        try:
            async for b in client.batches.list(limit=100):
                if (b.metadata or {}).get(INTENT_KEY) == intent.id:
                    return b.id
                seen += 1
                if seen >= FIND_SCAN:
                    break
        except openai.OpenAIError as exc:
            raise _error(exc, api_key) from None
        return None

    async def status(self, batch_id: str, api_key: str | None) -> BatchStatus:
        try:
            b = await self._client(api_key).batches.retrieve(batch_id)
        except openai.OpenAIError as exc:
            raise _error(exc, api_key) from None
        detail = ""
        if b.errors and b.errors.data:
            detail = "; ".join(f"{e.code}: {e.message}" for e in b.errors.data)[:500]
        return BatchStatus(STATES.get(b.status, "in_progress"), detail)

    async def results(self, batch_id: str, api_key: str | None) -> list[BatchAnswer]:
        client = self._client(api_key)
        try:
            b = await client.batches.retrieve(batch_id)
            lines: list[dict[str, Any]] = []
            for file_id in (b.output_file_id, b.error_file_id):
                if file_id:
                    content = await client.files.content(file_id)
                    lines += [json.loads(x) for x in content.text.splitlines() if x.strip()]
        except openai.OpenAIError as exc:
            raise _error(exc, api_key) from None
        return [a for a in (_answer(line, api_key) for line in lines) if a is not None]

    async def cancel(self, batch_id: str, api_key: str | None) -> None:
        try:
            await self._client(api_key).batches.cancel(batch_id)
        except openai.OpenAIError as exc:
            raise _error(exc, api_key) from None


def _answer(line: dict[str, Any], api_key: str | None) -> BatchAnswer | None:
    custom_id = str(line.get("custom_id"))
    response = line.get("response") or {}
    error = line.get("error") or {}
    status = response.get("status_code")
    data = response.get("body") or {}
    if status == 200 and isinstance(data, dict) and data.get("choices"):
        choice = data["choices"][0]
        message = choice.get("message") or {}
        if choice.get("finish_reason") == "content_filter" or message.get("refusal"):
            return BatchAnswer(custom_id, error=common.from_status(
                NAME, 400, message.get("refusal") or "the answer was filtered", None, api_key, refused=True))
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return BatchAnswer(custom_id, result=TextResult(
            text=message.get("content") or "", model=f"{NAME}:{data.get('model')}",
            prompt_tokens=int(usage.get("prompt_tokens", 0)), completion_tokens=int(usage.get("completion_tokens", 0)),
            cache_read_input_tokens=int(details.get("cached_tokens", 0) or 0)))
    if error.get("code") in NOT_RUN:
        return None  # the batch stopped before this request ran: the now-lane takes it
    err = (data.get("error") if isinstance(data, dict) else None) or error
    message = str(err.get("message") or "the batch request failed")
    refused = err.get("code") == "content_policy_violation"
    return BatchAnswer(custom_id, error=common.from_status(NAME, status or 500, message, None, api_key,
                                                           refused=refused))


def _error(exc: openai.OpenAIError, api_key: str | None) -> JobError:
    if isinstance(exc, openai.APITimeoutError):
        return common.timeout_error(NAME, 60.0)
    if isinstance(exc, openai.APIConnectionError):
        return common.connection_error(NAME)
    if isinstance(exc, openai.APIStatusError):
        return common.from_status(NAME, exc.status_code, exc.message, exc.response.headers, api_key or "")
    return common.from_status(NAME, None, type(exc).__name__, None, api_key or "")
