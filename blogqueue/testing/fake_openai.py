"""An OpenAI-compatible fake: chat completions and image generation, with OpenAI's rate limits.

Limits are enforced the way OpenAI's rate-limit guide documents them, per key,
in requests per minute (RPM) and tokens per minute (TPM):

- "Your rate limit is calculated as the maximum of max_tokens and the estimated
  number of tokens based on the character count of your request": a request is
  counted when it arrives as its estimate (prompt characters / 4 +
  `max_tokens`); when it completes, its entry takes the tokens really used.
  Images count as requests only.
- `mode="window"` (the default): a rolling minute. A request is admitted if
  the requests and tokens of the last 60 s plus this one stay within RPM/TPM.
- `mode="quantized"`: the minute AND a per-second limit. OpenAI: "Rate limits
  can be quantized, meaning they are enforced over shorter periods of time
  (e.g. 60,000 requests/minute may be enforced as 1,000 requests/second).
  Sending short bursts of requests or contexts (prompts+max_tokens) that are too
  long can lead to rate limit errors, even when you are technically below the
  rate limit per minute." Here each of RPM and TPM is also a bucket refilled
  continuously at limit/60 per second holding one second of it
  (`quantum_s`): 600 RPM is 10 requests/second with one second of burst.

A request is counted when it arrives: a refusal (429) comes at once, the
latency (`latency_ms` + a uniform draw from `latency_spread_ms`) is the
generation time of an admitted call. Every answer carries OpenAI's headers:
`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
`x-ratelimit-reset-requests` ("the time until the rate limit (based on
requests) resets to its initial state", e.g. `1s`, `6m0s`, `20ms`) and the same
three for tokens, and `openai-processing-ms` (the time OpenAI took on the
request). A refused request gets 429, `retry-after` (seconds) and
`retry-after-ms`, and OpenAI's error body (`type: requests` or `tokens`,
`code: rate_limit_exceeded`).

Prompts containing `[refuse]` are refused: chat answers `finish_reason:
content_filter` with a `refusal`, images answer 400 `content_policy_violation`.

Run standalone (for load tests):
    python -m blogqueue.testing.fake_openai --port 8100 --rpm 600 --tpm 60000 --latency-ms 50 [--quantized]
and point `BLOGQUEUE_OPENAI_BASE_URL` at http://127.0.0.1:8100/v1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import threading
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .buckets import RollingWindow, TokenBucket
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


class KeyLimits:
    """One key's limits: the rolling minute, and in quantized mode the per-second buckets."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float, quantum_s: float | None,
                 now: float) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.req = RollingWindow(rpm, window_s) if rpm is not None else None
        self.tok = RollingWindow(tpm, window_s) if tpm is not None else None
        self.req_q = self.tok_q = None
        if quantum_s is not None:
            self.req_q = TokenBucket(rpm / 60, rpm / 60 * quantum_s, now) if rpm is not None else None
            self.tok_q = TokenBucket(tpm / 60, tpm / 60 * quantum_s, now) if tpm is not None else None

    def admit(self, now: float, estimate: int) -> tuple[bool, float, str, list[Any] | None]:
        """Admits or refuses; returns (ok, seconds until this request would fit, what binds, the entries)."""
        waits = {"requests": max(self.req.wait(now, 1) if self.req else 0.0,
                                 self.req_q.wait(now, 1) if self.req_q else 0.0),
                 "tokens": max(self.tok.wait(now, estimate) if self.tok and estimate else 0.0,
                               self.tok_q.wait(now, estimate) if self.tok_q and estimate else 0.0)}
        what = max(waits, key=lambda k: waits[k])
        if waits[what] > 0:
            return False, waits[what], what, None
        entries: list[Any] = [self.req.take(now, 1) if self.req else None,
                              self.tok.take(now, estimate) if self.tok else None]
        if self.req_q:
            self.req_q.take(now, 1)
        if self.tok_q and estimate:
            self.tok_q.take(now, estimate)
        return True, 0.0, "", [*entries, estimate]

    def settle(self, now: float, entries: list[Any], used: int) -> None:
        if entries[1] is not None:
            self.tok.settle(entries[1], used)  # type: ignore[union-attr]
        if self.tok_q and entries[2]:
            self.tok_q.give(now, entries[2] - used)

    def headers(self, now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.req is not None:
            out |= {"x-ratelimit-limit-requests": str(self.rpm),
                    "x-ratelimit-remaining-requests": str(int(self.req.remaining(now))),
                    "x-ratelimit-reset-requests": duration(self.req.reset_s(now))}
        if self.tok is not None:
            out |= {"x-ratelimit-limit-tokens": str(self.tpm),
                    "x-ratelimit-remaining-tokens": str(int(self.tok.remaining(now))),
                    "x-ratelimit-reset-tokens": duration(self.tok.reset_s(now))}
        return out


class FakeOpenAI(FakeServer):
    name = "fake-openai"

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None, completion_tokens: int = 120,
                 window_s: float = WINDOW_S, mode: str = "window", quantum_s: float = 1.0,
                 **kwargs: Any) -> None:
        if mode not in ("window", "quantized"):
            raise ValueError(f"mode must be window or quantized, got {mode!r}")
        self.rpm, self.tpm, self.window_s, self.mode, self.quantum_s = rpm, tpm, window_s, mode, quantum_s
        self.completion_tokens = completion_tokens
        self._windows: dict[str, KeyLimits] = {}
        self._wlock = threading.Lock()
        super().__init__(**kwargs)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def routes(self) -> list[Route]:
        return [Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/images/generations", self._images, methods=["POST"])]

    def _window(self, key: str) -> KeyLimits:
        if key not in self._windows:
            self._windows[key] = KeyLimits(self.rpm, self.tpm, self.window_s,
                                           self.quantum_s if self.mode == "quantized" else None, time.time())
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
        fault = await self.misbehave(key, sleep=False)
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
        arrived = time.time()
        with self._wlock:
            window = self._window(key or "")
            if fault == "429":
                ok, wait, what, entries = False, self.faults.retry_after_s, "requests", None
            else:
                ok, wait, what, entries = window.admit(arrived, estimate)
            headers = window.headers(arrived)
        kh = hashlib.sha256((key or "").encode()).hexdigest()[:12]
        if not ok:
            self.record(path, 429, key=kh, subject=subject, binding=what)
            headers |= {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))}
            limit = self.tpm if what == "tokens" else self.rpm
            return JSONResponse(
                _error(f"Rate limit reached for {what} per min (limit {limit}). Please try again in "
                       f"{duration(wait)}.", what, "rate_limit_exceeded"), status_code=429, headers=headers)
        latency = self.latency_s()
        if latency:
            await asyncio.sleep(latency)  # generation: the request is already counted
        if fault == "refuse":
            self.record(path, 400, subject=subject)
            return JSONResponse(_error("Your request was rejected as a result of our safety system.",
                                       "invalid_request_error", "content_policy_violation"), status_code=400)
        payload, used = answer()
        assert entries is not None
        with self._wlock:
            window.settle(time.time(), entries, used)
        self.record(path, 200, used, key=kh, subject=subject, at=arrived, estimate=estimate)
        headers["openai-processing-ms"] = str(int((time.time() - arrived) * 1000))
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
    p.add_argument("--latency-spread-ms", type=float, default=0.0)
    p.add_argument("--quantized", action="store_true",
                   help="also enforce each limit per second (OpenAI's quantized limits)")
    p.add_argument("--error-5xx-rate", type=float, default=0.0)
    p.add_argument("--error-429-rate", type=float, default=0.0)
    p.add_argument("--timeout-rate", type=float, default=0.0)
    a = p.parse_args(argv)
    fake = FakeOpenAI(host=a.host, port=a.port, rpm=a.rpm, tpm=a.tpm, completion_tokens=a.completion_tokens,
                      mode="quantized" if a.quantized else "window", latency_spread_ms=a.latency_spread_ms,
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
