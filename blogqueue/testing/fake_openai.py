"""An OpenAI-compatible fake: chat completions and image generation, with OpenAI's rate limits.

Limits are enforced the way OpenAI documents them: per key, requests per minute
(RPM) and tokens per minute (TPM), over a rolling minute. A request is admitted
only if the requests of the last 60 s plus this one stay within RPM and the
tokens of the last 60 s plus this request's *estimate* (prompt characters / 4 +
`max_tokens`, OpenAI's documented way of counting a request before it runs)
stay within TPM; what the minute then holds is the tokens really used (the
`usage` returned). Images count as requests only.

Every answer carries OpenAI's headers: `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` (duration until
the window is back to its initial state, e.g. `1s`, `6m0s`, `20ms`) and the
same three for tokens. A refused request gets 429, `retry-after` (seconds) and
`retry-after-ms`, and OpenAI's error body with code `rate_limit_exceeded`.

Prompts containing `[refuse]` are refused: chat answers `finish_reason:
content_filter` with a `refusal`, images answer 400 `content_policy_violation`.

Run standalone (for load tests):
    python -m blogqueue.testing.fake_openai --port 8100 --rpm 600 --tpm 60000 --latency-ms 50
and point `BLOGQUEUE_OPENAI_BASE_URL` at http://127.0.0.1:8100/v1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import threading
import time
import uuid
from collections import deque
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .fakeserver import FakeServer, bearer, estimate_tokens

WINDOW_S = 60.0


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    if minutes >= 1:
        return f"{int(minutes)}m{secs:.0f}s" if secs == int(secs) else f"{int(minutes)}m{secs:.3f}s".rstrip("0")
    return f"{secs:.3f}".rstrip("0").rstrip(".") + "s"


class RollingMinute:
    """One key's rolling window of admitted requests: (time, tokens used)."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float = WINDOW_S) -> None:
        self.rpm, self.tpm, self.window = rpm, tpm, window_s
        self.entries: deque[list[float]] = deque()   # [at, tokens]
        self.tokens = 0.0

    def _expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - self.window:
            self.tokens -= self.entries.popleft()[1]

    def admit(self, now: float, estimate: int) -> tuple[bool, float, list[float] | None]:
        """Admits or refuses; returns (ok, seconds until this request would fit, the entry)."""
        self._expire(now)
        wait = 0.0
        if self.rpm is not None and len(self.entries) + 1 > self.rpm:
            wait = max(wait, self.entries[len(self.entries) - self.rpm][0] + self.window - now)
        if self.tpm is not None and self.tokens + estimate > self.tpm:
            need, freed = self.tokens + estimate - self.tpm, 0.0
            for at, tok in self.entries:
                freed += tok
                if freed >= need:
                    wait = max(wait, at + self.window - now)
                    break
            else:
                wait = max(wait, self.window)
        if wait > 0:
            return False, wait, None
        entry = [now, float(estimate)]
        self.entries.append(entry)
        self.tokens += estimate
        return True, 0.0, entry

    def settle(self, entry: list[float], used: int) -> None:
        """The window holds the tokens really used, not the estimate."""
        self.tokens += used - entry[1]
        entry[1] = used

    def headers(self, now: float) -> dict[str, str]:
        self._expire(now)
        out: dict[str, str] = {}
        reset = (self.entries[-1][0] + self.window - now) if self.entries else 0.0
        if self.rpm is not None:
            out |= {"x-ratelimit-limit-requests": str(self.rpm),
                    "x-ratelimit-remaining-requests": str(max(0, self.rpm - len(self.entries))),
                    "x-ratelimit-reset-requests": duration(reset)}
        if self.tpm is not None:
            out |= {"x-ratelimit-limit-tokens": str(self.tpm),
                    "x-ratelimit-remaining-tokens": str(max(0, int(self.tpm - self.tokens))),
                    "x-ratelimit-reset-tokens": duration(reset)}
        return out


class FakeOpenAI(FakeServer):
    name = "fake-openai"

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None, completion_tokens: int = 120,
                 window_s: float = WINDOW_S, **kwargs: Any) -> None:
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self.completion_tokens = completion_tokens
        self._windows: dict[str, RollingMinute] = {}
        self._wlock = threading.Lock()
        super().__init__(**kwargs)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def routes(self) -> list[Route]:
        return [Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/images/generations", self._images, methods=["POST"])]

    def _window(self, key: str) -> RollingMinute:
        if key not in self._windows:
            self._windows[key] = RollingMinute(self.rpm, self.tpm, self.window_s)
        return self._windows[key]

    # -- protocol ----------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        prompt = "".join(_content_text(m.get("content")) for m in body.get("messages", []))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 4096
        prompt_tokens = estimate_tokens(prompt)
        refuse = "[refuse]" in prompt
        request.state.subject = _subject(prompt)

        def answer() -> tuple[dict[str, Any], int]:
            completion = min(int(max_tokens), self.completion_tokens)
            if refuse:
                message = {"role": "assistant", "content": None,
                           "refusal": "I can't help with that request.", "annotations": []}
                finish, completion = "content_filter", 0
            else:
                message = {"role": "assistant", "content": _text(prompt, completion, body),
                           "refusal": None, "annotations": []}
                finish = "stop"
            return ({"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                     "created": int(time.time()), "model": body.get("model", "gpt-4o-mini"),
                     "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                     "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                               "total_tokens": prompt_tokens + completion}}, prompt_tokens + completion)

        return await self._serve(request, "/v1/chat/completions", prompt_tokens + int(max_tokens), answer)

    async def _images(self, request: Request) -> Response:
        body = await request.json()
        prompt = str(body.get("prompt", ""))
        request.state.subject = _subject(prompt)
        if "[refuse]" in prompt:
            fault_body = _error("Your request was rejected as a result of our safety system.",
                                "invalid_request_error", "content_policy_violation")
            self.record("/v1/images/generations", 400)
            return JSONResponse(fault_body, status_code=400)

        def answer() -> tuple[dict[str, Any], int]:
            return ({"created": int(time.time()),
                     "data": [{"url": f"{self.url}/files/{uuid.uuid4().hex}.png",
                               "revised_prompt": prompt}]}, 0)

        return await self._serve(request, "/v1/images/generations", 0, answer)

    async def _serve(self, request: Request, path: str, estimate: int, answer: Any) -> Response:
        key = bearer(request)
        # What the call was about, so a test can tie provider calls to its jobs.
        subject = getattr(request.state, "subject", "")
        fault = await self.misbehave(key)
        if fault == "timeout":
            self.record(path, 504, subject=subject)
            return JSONResponse(_error("Request timed out.", "server_error", None), status_code=504)
        if fault in ("401", "403"):
            self.record(path, int(fault), subject=subject)
            msg = ("Incorrect API key provided." if fault == "401"
                   else "You are not allowed to sample from this model")
            return JSONResponse(_error(msg, "invalid_request_error", "invalid_api_key" if fault == "401" else None),
                                status_code=int(fault))
        if fault == "400":
            self.record(path, 400, subject=subject)
            return JSONResponse(_error("Invalid value for 'model'.", "invalid_request_error", "invalid_value"),
                                status_code=400)
        if fault == "500":
            self.record(path, 500, subject=subject)
            return JSONResponse(_error("The server had an error while processing your request.",
                                       "server_error", None), status_code=500)
        now = time.time()
        with self._wlock:
            window = self._window(key or "")
            if fault == "429":
                ok, wait, entry = False, self.faults.retry_after_s, None
            else:
                ok, wait, entry = window.admit(now, estimate)
            headers = window.headers(now)
        kh = hashlib.sha256((key or "").encode()).hexdigest()[:12]
        if not ok:
            self.record(path, 429, key=kh, subject=subject)
            headers |= {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))}
            what = "tokens" if self.tpm is not None and estimate and fault != "429" else "requests"
            return JSONResponse(
                _error(f"Rate limit reached for {what}. Please try again in {duration(wait)}.", what,
                       "rate_limit_exceeded"), status_code=429, headers=headers)
        if fault == "refuse":
            self.record(path, 400, subject=subject)
            return JSONResponse(_error("Your request was rejected as a result of our safety system.",
                                       "invalid_request_error", "content_policy_violation"), status_code=400)
        payload, used = answer()
        assert entry is not None
        with self._wlock:
            window.settle(entry, used)
        self.record(path, 200, used, key=kh, subject=subject)
        return JSONResponse(payload, headers=headers)

    def calls_by_key(self) -> dict[str, int]:
        """Admitted calls by key (first 12 hex digits of the key's SHA-256)."""
        with self.lock:
            out: dict[str, int] = {}
            for c in self.calls:
                if c["status"] == 200:
                    out[c["key"]] = out.get(c["key"], 0) + 1
            return out


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _text(prompt: str, tokens: int, body: dict[str, Any]) -> str:
    """A completion of about `tokens` tokens; JSON when the caller asked for a JSON object."""
    if (body.get("response_format") or {}).get("type") == "json_object":
        return json.dumps({"title": "Fake title", "description": "Fake description.",
                           "seo_title": "Fake SEO title", "seo_description": "Fake SEO description."})
    words = ("lorem", "ipsum", "dolor", "sit", "amet")
    body_words = " ".join(words[i % 5] for i in range(max(1, tokens - 4)))
    topic = _subject(prompt)
    return f"# A fake post{' about ' + topic if topic else ''}\n\n{body_words}"


def _subject(prompt: str) -> str:
    """The prompt's topic line (blogqueue's prompts say `Topic: ...`), else the image prompt's subject."""
    for marker in ("Topic: ", "about ", "illustrating: "):
        at = prompt.rfind(marker)
        if at >= 0:
            return prompt[at + len(marker):].split("\n", 1)[0].strip()[:120]
    return ""


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m blogqueue.testing.fake_openai", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--completion-tokens", type=int, default=120)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--error-5xx-rate", type=float, default=0.0)
    p.add_argument("--error-429-rate", type=float, default=0.0)
    p.add_argument("--timeout-rate", type=float, default=0.0)
    a = p.parse_args(argv)
    fake = FakeOpenAI(host=a.host, port=a.port, rpm=a.rpm, tpm=a.tpm, completion_tokens=a.completion_tokens,
                      latency_ms=a.latency_ms, error_5xx_rate=a.error_5xx_rate, error_429_rate=a.error_429_rate,
                      timeout_rate=a.timeout_rate).start()
    print(f"fake OpenAI on {fake.base_url} (rpm={a.rpm}, tpm={a.tpm}); stats at {fake.url}/_stats", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
