"""OpenAI's Batch API on top of the chat fake (FakeOpenAI), as OpenAI documents it.

Routes: `POST /v1/files` (multipart, `purpose=batch`), `GET /v1/files/{id}/content`,
`POST /v1/batches`, `GET /v1/batches/{id}`, `GET /v1/batches` (newest first, `limit`,
`after`, `has_more`), `POST /v1/batches/{id}/cancel`.

Documented behaviour it follows (OpenAI API reference, "Create batch" and "The request
input object"):
- input: "Your input file must be formatted as a JSONL file, and must be uploaded with
  the purpose `batch`. The file can contain up to 50,000 requests, and can be up to
  200 MB in size." Each line is `{custom_id, method, url, body}`; custom ids must be
  unique within a file and a file holds one model. A file that breaks these rules makes
  the batch `failed` with `errors.data`.
- `completion_window`: "Currently only 24h is supported."; `metadata`: "Set of 16
  key-value pairs that can be attached to an object" (keys up to 64, values up to 512
  characters), returned by retrieve and list.
- lifecycle: `validating` → `in_progress` → `finalizing` → `completed`; `expired` when the
  window passes ("batches that do not complete in time eventually move to an expired
  state; unfinished requests within that batch are cancelled, and any responses to
  completed requests are made available via the batch's output file"); `cancelling` →
  `cancelled` on cancel. Each answered request is one output line `{id, custom_id,
  response: {status_code, request_id, body}, error: null}`; requests that failed or did
  not run are lines of the error file with `error: {code, message}` (`batch_expired`,
  `batch_cancelled`).
- the batch queue limit: enqueued prompt + max tokens per model across a key's open
  batches; a batch over it fails with `token_limit_exceeded`.

Knobs: `completion_delay_s` (how long a batch takes), `expire=True` (batches expire at
the end of the delay with only `expire_fraction` of their requests answered),
`create_delay_s` (the batch is created at once but the answer to `POST /v1/batches` is
sent that late: a client killed meanwhile never learns the id), `queue_limit_tokens`.
Counting: `custom_ids` (how often each custom id was submitted in a created batch),
`batches_created`. Prompts containing `[bad-request]` get a 400 answer line.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from email.parser import BytesParser
from email.policy import default as email_policy
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .fake_openai import FakeOpenAI, _content_text, _error, _text
from .fakeserver import estimate_tokens

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024


class FakeOpenAIBatch(FakeOpenAI):
    name = "fake-openai-batch"

    def __init__(self, *, completion_delay_s: float = 0.5, expire: bool = False, expire_fraction: float = 0.0,
                 create_delay_s: float = 0.0, queue_limit_tokens: int | None = None, **kwargs: Any) -> None:
        self.completion_delay_s = completion_delay_s
        self.expire, self.expire_fraction = expire, expire_fraction
        self.create_delay_s = create_delay_s
        self.queue_limit_tokens = queue_limit_tokens
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.custom_ids: Counter[str] = Counter()
        self.batches_created = 0
        self._block = threading.Lock()
        super().__init__(**kwargs)

    def routes(self) -> list[Route]:
        return [*super().routes(),
                Route("/v1/files", self._upload, methods=["POST"]),
                Route("/v1/files/{file_id}/content", self._content, methods=["GET"]),
                Route("/v1/batches", self._create, methods=["POST"]),
                Route("/v1/batches", self._list, methods=["GET"]),
                Route("/v1/batches/{batch_id}", self._retrieve, methods=["GET"]),
                Route("/v1/batches/{batch_id}/cancel", self._cancel, methods=["POST"])]

    # -- files -------------------------------------------------------------------------------

    def _file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        obj = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed"}
        with self._block:
            self.files[fid] = {**obj, "content": content}
        return obj

    async def _upload(self, request: Request) -> Response:
        raw = await request.body()
        head = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
        msg = BytesParser(policy=email_policy).parsebytes(head + raw)
        fields: dict[str, Any] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True))
        if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
            self.record("/v1/files", 400, method="POST")
            return JSONResponse(_error("purpose must be batch and a file is required", "invalid_request_error",
                                       None), status_code=400)
        filename, content = fields["file"]
        self.record("/v1/files", 200, method="POST")
        return JSONResponse(self._file(content, filename or "upload.jsonl", "batch"))

    async def _content(self, request: Request) -> Response:
        with self._block:
            f = self.files.get(request.path_params["file_id"])
        if f is None:
            return JSONResponse(_error("No such File object", "invalid_request_error", None), status_code=404)
        self.record("/v1/files/content", 200, method="GET")
        return Response(f["content"], media_type="application/octet-stream")

    # -- batches -----------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        body = await request.json()
        with self._block:
            f = self.files.get(str(body.get("input_file_id")))
        if f is None or body.get("completion_window") != "24h" or body.get("endpoint") != "/v1/chat/completions":
            self.record("/v1/batches", 400, method="POST")
            return JSONResponse(_error("input_file_id, endpoint /v1/chat/completions and completion_window 24h "
                                       "are required", "invalid_request_error", None), status_code=400)
        metadata = body.get("metadata") or {}
        if len(metadata) > 16 or any(len(k) > 64 or len(str(v)) > 512 for k, v in metadata.items()):
            return JSONResponse(_error("Invalid metadata", "invalid_request_error", None), status_code=400)
        lines = [json.loads(x) for x in f["content"].decode().splitlines() if x.strip()]
        errors = self._validate(lines, f["bytes"])
        now = time.time()
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        tokens = sum(estimate_tokens("".join(_content_text(m.get("content")) for m in ln["body"].get("messages", [])))
                     + int(ln["body"].get("max_completion_tokens") or ln["body"].get("max_tokens") or 0)
                     for ln in lines if isinstance(ln.get("body"), dict))
        model = next((ln["body"].get("model") for ln in lines if isinstance(ln.get("body"), dict)), None)
        with self._block:
            if not errors and self.queue_limit_tokens is not None:
                queued = sum(b["tokens"] for b in self.batches.values()
                             if b["model"] == model and self._state(b, now)[0] in ("validating", "in_progress"))
                if queued + tokens > self.queue_limit_tokens:
                    errors = [{"code": "token_limit_exceeded", "line": None, "param": None,
                               "message": f"Enqueued token limit reached for {model}: limit "
                                          f"{self.queue_limit_tokens}, already enqueued {queued}."}]
            self.batches[bid] = {"id": bid, "created": now, "input_file_id": f["id"], "metadata": metadata,
                                 "lines": lines, "errors": errors, "tokens": tokens, "model": model,
                                 "cancelled_at": None, "files": None}
            self.batches_created += 1
            if not errors:
                self.custom_ids.update(str(ln["custom_id"]) for ln in lines)
        self.record("/v1/batches", 200, method="POST")
        # The batch exists now; a client that dies before this answer arrives never learns its id.
        return await self.answer(200, self._object(bid), delay=self.create_delay_s)

    def _validate(self, lines: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
        def err(code: str, message: str, line: int | None = None) -> list[dict[str, Any]]:
            return [{"code": code, "message": message, "param": None, "line": line}]
        if len(lines) > MAX_REQUESTS:
            return err("too_many_requests", f"A batch may contain up to {MAX_REQUESTS} requests.")
        if size > MAX_BYTES:
            return err("file_too_large", "The input file can be up to 200 MB in size.")
        seen: set[str] = set()
        models = set()
        for n, ln in enumerate(lines, 1):
            if ln.get("method") != "POST" or ln.get("url") != "/v1/chat/completions" or not isinstance(
                    ln.get("body"), dict) or not ln.get("custom_id"):
                return err("invalid_request", "Each line needs custom_id, method POST, url and body.", n)
            if ln["custom_id"] in seen:
                return err("duplicate_custom_id", "The custom_id for this request is a duplicate of another "
                           "request. The custom_id parameter must be unique for each request in a batch.", n)
            seen.add(ln["custom_id"])
            models.add(ln["body"].get("model"))
        if len(models) > 1:
            return err("mismatched_model", "The provided model does not match the model of other requests "
                       "in this batch: a batch holds one model.")
        return []

    def _state(self, b: dict[str, Any], now: float) -> tuple[str, float | None]:
        if b["errors"]:
            return "failed", b["created"]
        if b["cancelled_at"] is not None:
            return "cancelled", b["cancelled_at"]
        due = b["created"] + self.completion_delay_s
        if now < due:
            return "in_progress", None
        return ("expired" if self.expire else "completed"), due

    def _finish(self, b: dict[str, Any], state: str) -> None:
        """Writes the output and error files once the batch has ended (under _block)."""
        if b["files"] is not None or state not in ("completed", "expired", "cancelled"):
            return
        answered = len(b["lines"]) if state == "completed" else (
            int(len(b["lines"]) * self.expire_fraction) if state == "expired" else 0)
        out, errs = [], []
        for n, ln in enumerate(b["lines"]):
            cid = ln["custom_id"]
            if n >= answered:
                code = "batch_expired" if state == "expired" else "batch_cancelled"
                errs.append({"id": f"batch_req_{uuid.uuid4().hex[:20]}", "custom_id": cid, "response": None,
                             "error": {"code": code, "message": "This request could not be executed before the "
                                       "completion window expired." if state == "expired" else
                                       "This request was cancelled."}})
                continue
            prompt = "".join(_content_text(m.get("content")) for m in ln["body"].get("messages", []))
            if "[bad-request]" in prompt:
                errs.append({"id": f"batch_req_{uuid.uuid4().hex[:20]}", "custom_id": cid,
                             "response": {"status_code": 400, "request_id": uuid.uuid4().hex,
                                          "body": _error("Invalid request.", "invalid_request_error", None)},
                             "error": None})
                continue
            pt = estimate_tokens(prompt)
            ct = min(int(ln["body"].get("max_completion_tokens") or 4096), self.completion_tokens)
            body = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                    "created": int(time.time()), "model": ln["body"].get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": _text(prompt, ct, ln["body"]),
                                             "refusal": None}}],
                    "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}
            out.append({"id": f"batch_req_{uuid.uuid4().hex[:20]}", "custom_id": cid,
                        "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": body},
                        "error": None})
        files: dict[str, str | None] = {"output": None, "error": None}
        for what, rows in (("output", out), ("error", errs)):
            if rows:
                data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
                fid = f"file-{uuid.uuid4().hex[:24]}"
                self.files[fid] = {"id": fid, "content": data, "bytes": len(data)}
                files[what] = fid
        b["files"] = files
        b["counts"] = {"total": len(b["lines"]), "completed": len(out),
                       "failed": len(errs)}

    def _object(self, bid: str) -> dict[str, Any]:
        with self._block:
            b = self.batches[bid]
            state, ended = self._state(b, time.time())
            self._finish(b, state)
            files = b["files"] or {"output": None, "error": None}
            counts = b.get("counts") or {"total": len(b["lines"]), "completed": 0, "failed": 0}
            return {"id": bid, "object": "batch", "endpoint": "/v1/chat/completions",
                    "errors": {"object": "list", "data": b["errors"]} if b["errors"] else None,
                    "input_file_id": b["input_file_id"], "completion_window": "24h", "status": state,
                    "output_file_id": files["output"], "error_file_id": files["error"],
                    "created_at": int(b["created"]), "in_progress_at": int(b["created"]),
                    "expires_at": int(b["created"] + 86400), "completed_at": int(ended) if state == "completed"
                    and ended else None, "expired_at": int(ended) if state == "expired" and ended else None,
                    "cancelled_at": int(b["cancelled_at"]) if b["cancelled_at"] else None,
                    "failed_at": int(b["created"]) if state == "failed" else None,
                    "request_counts": counts, "metadata": b["metadata"]}

    async def _retrieve(self, request: Request) -> Response:
        bid = request.path_params["batch_id"]
        if bid not in self.batches:
            return JSONResponse(_error("No such batch", "invalid_request_error", None), status_code=404)
        self.record("/v1/batches/retrieve", 200, method="GET")
        return JSONResponse(self._object(bid))

    async def _list(self, request: Request) -> Response:
        limit = min(100, int(request.query_params.get("limit", 20)))
        after = request.query_params.get("after")
        with self._block:
            ids = sorted(self.batches, key=lambda k: self.batches[k]["created"], reverse=True)
        if after in ids:
            ids = ids[ids.index(after) + 1:]
        page = [self._object(i) for i in ids[:limit]]
        self.record("/v1/batches/list", 200, method="GET")
        return JSONResponse({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                             "last_id": page[-1]["id"] if page else None, "has_more": len(ids) > limit})

    async def _cancel(self, request: Request) -> Response:
        bid = request.path_params["batch_id"]
        with self._block:
            b = self.batches.get(bid)
            if b is not None and self._state(b, time.time())[0] in ("validating", "in_progress"):
                b["cancelled_at"] = time.time()
        if b is None:
            return JSONResponse(_error("No such batch", "invalid_request_error", None), status_code=404)
        self.record("/v1/batches/cancel", 200, method="POST")
        return JSONResponse(self._object(bid))
