"""Anthropic's Message Batches API on top of the Messages fake (FakeAnthropic), as documented.

Routes: `POST /v1/messages/batches`, `GET /v1/messages/batches/{id}`, `GET
/v1/messages/batches` (newest first; `limit`, `after_id`, `before_id`; `has_more`,
`first_id`, `last_id`), `POST /v1/messages/batches/{id}/cancel`, `GET
/v1/messages/batches/{id}/results` (the batch's `results_url`).

Documented behaviour it follows (Anthropic API reference and batch-processing guide):
- a batch holds "up to 100,000 Message requests or 256 MB in size, whichever is reached
  first"; each request is `{custom_id, params}`, `custom_id` "Must be unique for each
  request within the Message Batch" (`^[a-zA-Z0-9_-]{1,64}$`); a body that breaks these
  is refused with 400 `invalid_request_error`.
- "Once a Message Batch is created, it begins processing immediately. Batches can take
  up to 24 hours to complete." `processing_status` is `in_progress`, `canceling` or
  `ended`; "Processing ends when every request in a Message Batch has either succeeded,
  errored, canceled, or expired." `request_counts` (`processing`, `succeeded`, `errored`,
  `canceled`, `expired`): the last four are "zero until processing of the entire
  Message Batch has ended". `results_url` is set once it has ended.
- retrieve: "This endpoint is idempotent and can be used to poll for Message Batch
  completion."; cancel: "Batches may be canceled any time before processing ends. Once
  cancellation is initiated, the batch enters a canceling state".
- results: "Each line in the file is a JSON object containing the result of a single
  request in the Message Batch. Results are not guaranteed to be in the same order as
  requests. Use the `custom_id` field to match results to requests." `result.type` is
  `succeeded` (with `message`), `errored` (with `error`), `canceled` or `expired`.

Knobs: `completion_delay_s`, `expire=True` with `expire_fraction` (the rest `expired`),
`create_delay_s` (the batch exists at once, the answer comes that late). Counting:
`custom_ids` (how often each custom id was submitted), `batches_created`. Prompts
containing `[bad-request]` get an `errored` result.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .fake_anthropic import FakeAnthropic, _blocks
from .fakeserver import bearer, estimate_tokens

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t is not None else None


def _invalid(message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": message}},
                        status_code=400)


class FakeAnthropicBatch(FakeAnthropic):
    name = "fake-anthropic-batch"

    def __init__(self, *, completion_delay_s: float = 0.5, expire: bool = False, expire_fraction: float = 0.0,
                 create_delay_s: float = 0.0, **kwargs: Any) -> None:
        self.completion_delay_s = completion_delay_s
        self.expire, self.expire_fraction = expire, expire_fraction
        self.create_delay_s = create_delay_s
        self.batches: dict[str, dict[str, Any]] = {}
        self.custom_ids: Counter[str] = Counter()
        self.batches_created = 0
        self._bl = threading.Lock()
        super().__init__(**kwargs)

    def routes(self) -> list[Route]:
        return [*super().routes(),
                Route("/v1/messages/batches", self._create, methods=["POST"]),
                Route("/v1/messages/batches", self._list, methods=["GET"]),
                Route("/v1/messages/batches/{batch_id}", self._retrieve, methods=["GET"]),
                Route("/v1/messages/batches/{batch_id}/cancel", self._cancel, methods=["POST"]),
                Route("/v1/messages/batches/{batch_id}/results", self._results, methods=["GET"])]

    def _key_ok(self, request: Request) -> bool:
        key = request.headers.get("x-api-key") or bearer(request)
        return bool(key) and (self.faults.api_keys is None or key in self.faults.api_keys)

    async def _create(self, request: Request) -> Response:
        if not self._key_ok(request):
            return JSONResponse({"type": "error", "error": {"type": "authentication_error",
                                                            "message": "invalid x-api-key"}}, status_code=401)
        raw = await request.body()
        body = json.loads(raw)
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs:
            return _invalid("requests: a non-empty list is required")
        if len(reqs) > MAX_REQUESTS or len(raw) > MAX_BYTES:
            return _invalid("a batch may hold up to 100,000 requests or 256 MB")
        ids = [r.get("custom_id") for r in reqs]
        if not all(isinstance(i, str) and CUSTOM_ID.match(i) for i in ids):
            return _invalid("requests.custom_id: must match ^[a-zA-Z0-9_-]{1,64}$")
        if len(set(ids)) != len(ids):
            return _invalid("requests: custom_id must be unique for each request within the Message Batch")
        bid = f"msgbatch_{uuid.uuid4().hex[:24]}"
        now = time.time()
        with self._bl:
            self.batches[bid] = {"id": bid, "created": now, "requests": reqs, "cancel_at": None, "results": None}
            self.batches_created += 1
            self.custom_ids.update(ids)
        self.record("/v1/messages/batches", 200, method="POST")
        return await self.answer(200, self._object(bid), delay=self.create_delay_s)

    def _ended_at(self, b: dict[str, Any]) -> float | None:
        if b["cancel_at"] is not None:
            return b["cancel_at"]
        due = b["created"] + self.completion_delay_s
        return due if time.time() >= due else None

    def _settle(self, b: dict[str, Any]) -> None:
        """The results, once the batch has ended (under _bl)."""
        if b["results"] is not None or self._ended_at(b) is None:
            return
        cancelled = b["cancel_at"] is not None
        run = 0 if cancelled else len(b["requests"]) if not self.expire else int(len(b["requests"]) *
                                                                                  self.expire_fraction)
        results = []
        for n, r in enumerate(b["requests"]):
            cid, params = r["custom_id"], r.get("params") or {}
            if n >= run:
                results.append({"custom_id": cid, "result": {"type": "canceled" if cancelled else "expired"}})
                continue
            prompt = "".join(blk.get("text", "") for m in params.get("messages", [])
                             for blk in _blocks(m.get("content")))
            if "[bad-request]" in prompt:
                results.append({"custom_id": cid, "result": {"type": "errored", "error": {
                    "type": "error", "error": {"type": "invalid_request_error", "message": "Invalid request."}}}})
                continue
            out = min(int(params.get("max_tokens", 1)), self.completion_tokens)
            topic = prompt[prompt.rfind("Topic: ") + 7:].split("\n", 1)[0][:120] if "Topic: " in prompt else ""
            results.append({"custom_id": cid, "result": {"type": "succeeded", "message": {
                "id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant",
                "model": params.get("model"),
                "content": [{"type": "text", "text": f"# A fake post about {topic}\n\n" + "word " * out}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": estimate_tokens(prompt), "output_tokens": out,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}})
        random.Random(b["id"]).shuffle(results)  # "not guaranteed to be in the same order as requests"
        b["results"] = results

    def _object(self, bid: str) -> dict[str, Any]:
        with self._bl:
            b = self.batches[bid]
            self._settle(b)
            ended = self._ended_at(b)
            counts = {"processing": len(b["requests"]), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
            if b["results"] is not None:
                counts["processing"] = 0
                for r in b["results"]:
                    counts[r["result"]["type"]] += 1
            return {"id": bid, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                    "request_counts": counts, "created_at": _iso(b["created"]),
                    "expires_at": _iso(b["created"] + 86400), "ended_at": _iso(ended), "archived_at": None,
                    "cancel_initiated_at": _iso(b["cancel_at"]),
                    "results_url": f"{self.url}/v1/messages/batches/{bid}/results" if ended else None}

    async def _retrieve(self, request: Request) -> Response:
        bid = request.path_params["batch_id"]
        if bid not in self.batches:
            return JSONResponse({"type": "error", "error": {"type": "not_found_error", "message": "Not found"}},
                                status_code=404)
        self.record("/v1/messages/batches/retrieve", 200, method="GET")
        return JSONResponse(self._object(bid))

    async def _list(self, request: Request) -> Response:
        limit = min(1000, int(request.query_params.get("limit", 20)))
        with self._bl:
            ids = sorted(self.batches, key=lambda k: self.batches[k]["created"], reverse=True)
        after = request.query_params.get("after_id")
        if after in ids:
            ids = ids[ids.index(after) + 1:]
        page = [self._object(i) for i in ids[:limit]]
        self.record("/v1/messages/batches/list", 200, method="GET")
        return JSONResponse({"data": page, "has_more": len(ids) > limit,
                             "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})

    async def _cancel(self, request: Request) -> Response:
        bid = request.path_params["batch_id"]
        with self._bl:
            b = self.batches.get(bid)
            if b is not None and self._ended_at(b) is None:
                b["cancel_at"] = time.time()
        if b is None:
            return JSONResponse({"type": "error", "error": {"type": "not_found_error", "message": "Not found"}},
                                status_code=404)
        self.record("/v1/messages/batches/cancel", 200, method="POST")
        return JSONResponse(self._object(bid))

    async def _results(self, request: Request) -> Response:
        bid = request.path_params["batch_id"]
        obj = self._object(bid) if bid in self.batches else None
        if obj is None or obj["processing_status"] != "ended":
            return _invalid("the batch has not ended: no results yet")
        with self._bl:
            lines = self.batches[bid]["results"] or []
        self.record("/v1/messages/batches/results", 200, method="GET")
        return Response(b"".join(json.dumps(x).encode() + b"\n" for x in lines), media_type="application/binary")
