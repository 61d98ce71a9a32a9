"""A Gemini API fake (`POST /v1beta|v1/models/{model}:generateContent`, `x-goog-api-key`), for `google-genai`.

A bad key gets Google's 400 `API_KEY_INVALID`; a 429 carries a `RetryInfo`
detail with `retryDelay`; prompts containing `[refuse]` get
`promptFeedback.blockReason: SAFETY` and no candidates.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .fakeserver import FakeServer, estimate_tokens


def _error(code: int, status: str, message: str, *details: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status, "details": list(details)}},
                        status_code=code)


class FakeGemini(FakeServer):
    name = "fake-gemini"

    def __init__(self, *, completion_tokens: int = 60, **kwargs: Any) -> None:
        self.completion_tokens = completion_tokens
        super().__init__(**kwargs)

    @property
    def base_url(self) -> str:
        return self.url + "/"

    def routes(self) -> list[Route]:
        # Newer google-genai releases call /v1, older ones /v1beta: answer both.
        return [Route("/{version:str}/models/{rest:path}", self._generate, methods=["POST"])]

    async def _generate(self, request: Request) -> Response:
        model = request.path_params["rest"].partition(":")[0]
        body = await request.json()
        path = request.url.path
        fault = await self.misbehave(request.headers.get("x-goog-api-key"))
        if fault == "429":
            self.record(path, 429)
            return _error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).",
                          {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                           "retryDelay": f"{self.faults.retry_after_s:g}s"})
        answers = {"401": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
                   "403": (403, "PERMISSION_DENIED", "Permission denied on resource project."),
                   "400": (400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
                   "500": (500, "INTERNAL", "An internal error has occurred."),
                   "timeout": (504, "DEADLINE_EXCEEDED", "Deadline exceeded.")}
        if fault in answers:
            code, status, message = answers[fault]
            self.record(path, code)
            extra = ({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},) \
                if fault == "401" else ()
            return _error(code, status, message, *extra)
        prompt = "".join(p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", []))
        prompt_tokens = estimate_tokens(prompt)
        if "[refuse]" in prompt or fault == "refuse":
            self.record(path, 200, prompt_tokens)
            return JSONResponse({"promptFeedback": {"blockReason": "SAFETY"},
                                 "usageMetadata": {"promptTokenCount": prompt_tokens,
                                                   "totalTokenCount": prompt_tokens}})
        limit = int((body.get("generationConfig") or {}).get("maxOutputTokens") or 8192)
        out = min(limit, self.completion_tokens)
        self.record(path, 200, prompt_tokens + out)
        return JSONResponse({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "# A fake post\n\n" + "word " * out}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out,
                              "totalTokenCount": prompt_tokens + out},
            "modelVersion": model})
