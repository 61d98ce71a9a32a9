"""An Anthropic Messages API fake (`POST /v1/messages`, `x-api-key` or bearer auth), for the real `anthropic` SDK.

Prompts containing `[refuse]` get `stop_reason: "refusal"`. Faults (latency,
5xx, 429 with `retry-after`, timeouts, scripted answers) as in `fakeserver`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .fakeserver import FakeServer, bearer, estimate_tokens

ERRORS = {"400": (400, "invalid_request_error", "max_tokens: field required"),
          "401": (401, "authentication_error", "invalid x-api-key"),
          "403": (403, "permission_error", "Your API key does not have permission to use the specified resource."),
          "500": (529, "overloaded_error", "Overloaded"),
          "timeout": (504, "api_error", "timeout")}


class FakeAnthropic(FakeServer):
    name = "fake-anthropic"

    def __init__(self, *, completion_tokens: int = 60, **kwargs: Any) -> None:
        self.completion_tokens = completion_tokens
        super().__init__(**kwargs)

    @property
    def base_url(self) -> str:
        return self.url

    def routes(self) -> list[Route]:
        return [Route("/v1/messages", self._messages, methods=["POST"])]

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        # Anthropic accepts `x-api-key` and (newer SDKs) `Authorization: Bearer`.
        fault = await self.misbehave(request.headers.get("x-api-key") or bearer(request))
        path = "/v1/messages"
        headers = {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
                   "anthropic-ratelimit-requests-reset": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime(time.time() + 1))}
        if fault == "429":
            self.record(path, 429)
            error = {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit"}
            return JSONResponse({"type": "error", "error": error},
                                status_code=429, headers={"retry-after": str(int(self.faults.retry_after_s))})
        if fault in ERRORS:
            status, typ, msg = ERRORS[fault]
            self.record(path, status)
            return JSONResponse({"type": "error", "error": {"type": typ, "message": msg}}, status_code=status)
        prompt = "".join(m["content"] if isinstance(m["content"], str) else "" for m in body.get("messages", []))
        refuse = "[refuse]" in prompt or fault == "refuse"
        out_tokens = 0 if refuse else min(int(body.get("max_tokens", 1)), self.completion_tokens)
        in_tokens = estimate_tokens(prompt + str(body.get("system", "")))
        self.record(path, 200, in_tokens + out_tokens)
        return JSONResponse({
            "id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant",
            "model": body.get("model"),
            "content": [] if refuse else [{"type": "text", "text": "# A fake post\n\n" + "word " * out_tokens}],
            "stop_reason": "refusal" if refuse else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens}}, headers=headers)
