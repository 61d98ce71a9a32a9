"""An Anthropic Messages API fake (`POST /v1/messages`, `x-api-key` or bearer auth), for the real `anthropic` SDK,
with Anthropic's rate limits.

Limits are enforced the way Anthropic's rate-limits page documents them, per key:

- Three separate limits: requests per minute (RPM), input tokens per minute
  (ITPM) and output tokens per minute (OTPM) (`rpm`, `itpm`, `otpm`; None: not
  limited).
- "We use the token bucket algorithm to do rate limiting. This means that your
  capacity is continuously replenished up to your maximum limit, rather than
  being reset at fixed intervals." Each limit is a bucket refilled continuously
  at limit/60 per second, holding `capacity_s` seconds of it (default 60: up to
  the per-minute maximum; tests pass a smaller one for a stricter provider).
- ITPM: "input_tokens and cache_creation_input_tokens count toward ITPM";
  "cache_read_input_tokens do not count toward ITPM rate limits" on current
  models (though they are billed). Prompt caching is modelled: the system and
  message blocks up to the last one with `cache_control` are the cached prefix
  (per key); the first call writes it (`cache_creation_input_tokens`), later
  calls read it (`cache_read_input_tokens`), and `input_tokens` counts the rest.
- OTPM: "estimated based on max_tokens at the beginning of each request, and
  the estimate is adjusted at the end of the request to reflect the actual
  number of output tokens used": `max_tokens` is taken from the bucket when
  the request arrives and the unused part goes back when it completes.
- A request over any limit gets 429 with a `retry-after` header ("the number
  of seconds to wait until you can retry the request") and the error body
  `{"type": "error", "error": {"type": "rate_limit_error", "message": ...}}`.
- Every answer carries `anthropic-ratelimit-requests-{limit,remaining,reset}`,
  `anthropic-ratelimit-input-tokens-*`, `anthropic-ratelimit-output-tokens-*`
  and `anthropic-ratelimit-tokens-*` (the most restrictive of the token limits);
  `*-reset` is the RFC 3339 time the bucket is fully replenished.

Sources: https://docs.anthropic.com/en/api/rate-limits (read in its
translated copies, docs.anthropic.com/{de,es,fr}/api/rate-limits).

A request is counted when it arrives: a 429 comes at once, the latency
(`latency_ms` + a uniform draw from `latency_spread_ms`) is the generation of an
admitted call. Prompts containing `[refuse]` get `stop_reason: "refusal"`.
Faults (5xx, 429 with `retry-after`, timeouts, scripted answers) as in `fakeserver`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .buckets import TokenBucket
from .fakeserver import FakeServer, bearer, estimate_tokens

ERRORS = {"400": (400, "invalid_request_error", "max_tokens: field required"),
          "401": (401, "authentication_error", "invalid x-api-key"),
          "403": (403, "permission_error", "Your API key does not have permission to use the specified resource."),
          "500": (529, "overloaded_error", "Overloaded"),
          "timeout": (504, "api_error", "timeout")}
LIMITS = (("requests", "rpm"), ("input-tokens", "itpm"), ("output-tokens", "otpm"))


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _rfc3339(seconds_from_now: float) -> str:
    at = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeAnthropic(FakeServer):
    name = "fake-anthropic"

    def __init__(self, *, completion_tokens: int = 60, rpm: int | None = None, itpm: int | None = None,
                 otpm: int | None = None, capacity_s: float = 60.0, **kwargs: Any) -> None:
        self.completion_tokens = completion_tokens
        self.limits = {"rpm": rpm, "itpm": itpm, "otpm": otpm}
        self.capacity_s = capacity_s
        self._buckets: dict[str, dict[str, TokenBucket]] = {}
        self._cached: dict[str, set[str]] = {}
        self._block = threading.Lock()
        super().__init__(**kwargs)

    @property
    def base_url(self) -> str:
        return self.url

    def routes(self) -> list[Route]:
        return [Route("/v1/messages", self._messages, methods=["POST"])]

    def _key_buckets(self, key: str, now: float) -> dict[str, TokenBucket]:
        if key not in self._buckets:
            self._buckets[key] = {d: TokenBucket(n / 60, n / 60 * self.capacity_s, now)
                                  for d, n in self.limits.items() if n is not None}
        return self._buckets[key]

    def _headers(self, buckets: dict[str, TokenBucket], now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, d in LIMITS:
            if d in buckets:
                b = buckets[d]
                out |= {f"anthropic-ratelimit-{name}-limit": str(self.limits[d]),
                        f"anthropic-ratelimit-{name}-remaining": str(int(b.remaining(now))),
                        f"anthropic-ratelimit-{name}-reset": _rfc3339(b.reset_s(now))}
        tokens = [d for d in ("itpm", "otpm") if d in buckets]
        if tokens:  # the most restrictive token limit currently in effect
            d = min(tokens, key=lambda x: buckets[x].remaining(now))
            out |= {"anthropic-ratelimit-tokens-limit": str(self.limits[d]),
                    "anthropic-ratelimit-tokens-remaining": str(int(buckets[d].remaining(now))),
                    "anthropic-ratelimit-tokens-reset": _rfc3339(buckets[d].reset_s(now))}
        return out

    def _input(self, key: str, body: dict[str, Any]) -> tuple[int, int, int, str]:
        """(input_tokens, cache_creation_input_tokens, cache_read_input_tokens, the prompt's text)."""
        blocks = _blocks(body.get("system")) + [b for m in body.get("messages", []) for b in _blocks(m.get("content"))]
        texts = [str(b.get("text", "")) for b in blocks]
        marked = [i for i, b in enumerate(blocks) if b.get("cache_control")]
        prompt = "".join(texts)
        if not marked:
            return estimate_tokens(prompt), 0, 0, prompt
        prefix = "".join(texts[:marked[-1] + 1])
        rest = "".join(texts[marked[-1] + 1:])
        h = hashlib.sha256(prefix.encode()).hexdigest()
        with self._block:
            cached = self._cached.setdefault(key, set())
            hit = h in cached
            cached.add(h)
        n = estimate_tokens(prefix)
        return estimate_tokens(rest), (0 if hit else n), (n if hit else 0), prompt

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        # Anthropic accepts `x-api-key` and (newer SDKs) `Authorization: Bearer`.
        key = request.headers.get("x-api-key") or bearer(request)
        fault = await self.misbehave(key, sleep=False)
        path = "/v1/messages"
        kh = hashlib.sha256((key or "").encode()).hexdigest()[:12]
        if fault in ERRORS:
            status, typ, msg = ERRORS[fault]
            self.record(path, status)
            return JSONResponse({"type": "error", "error": {"type": typ, "message": msg}}, status_code=status)
        in_tokens, cache_write, cache_read, prompt = self._input(key or "", body)
        max_tokens = int(body.get("max_tokens", 1))
        costs = {"rpm": 1, "itpm": in_tokens + cache_write, "otpm": max_tokens}
        arrived = time.time()
        with self._block:
            buckets = self._key_buckets(key or "", arrived)
            waits = {d: b.wait(arrived, costs[d]) for d, b in buckets.items()}
            if fault == "429":
                waits["rpm"] = self.faults.retry_after_s
            binding = max(waits, key=lambda d: waits[d]) if waits else None
            ok = binding is None or waits[binding] <= 0
            if ok:
                for d, b in buckets.items():
                    b.take(arrived, costs[d])
            headers = self._headers(buckets, arrived)
        if not ok:
            assert binding is not None
            what = {"rpm": "requests", "itpm": "input tokens", "otpm": "output tokens"}[binding]
            self.record(path, 429, key=kh, binding=binding)
            error = {"type": "rate_limit_error",
                     "message": f"This request would exceed the rate limit for your organization of "
                                f"{self.limits.get(binding)} {what} per minute."}
            return JSONResponse({"type": "error", "error": error}, status_code=429,
                                headers=headers | {"retry-after": str(max(1, math.ceil(waits[binding])))})
        latency = self.latency_s()
        if latency:
            await asyncio.sleep(latency)  # generation: the request is already counted
        refuse = "[refuse]" in prompt or fault == "refuse"
        out_tokens = 0 if refuse else min(max_tokens, self.completion_tokens)
        with self._block:
            if "otpm" in buckets:  # the OTPM estimate is adjusted to the output really produced
                buckets["otpm"].give(time.time(), max_tokens - out_tokens)
            headers = self._headers(buckets, time.time())
        topic = prompt[prompt.rfind("Topic: ") + 7:].split("\n", 1)[0][:120] if "Topic: " in prompt else ""
        self.record(path, 200, in_tokens + cache_write + out_tokens, key=kh, at=arrived, subject=topic,
                    input_tokens=in_tokens,
                    cache_creation_input_tokens=cache_write, cache_read_input_tokens=cache_read,
                    output_tokens=out_tokens, max_tokens=max_tokens)
        return JSONResponse({
            "id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant",
            "model": body.get("model"),
            "content": [] if refuse else [{"type": "text", "text": "# A fake post\n\n" + "word " * out_tokens}],
            "stop_reason": "refusal" if refuse else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens,
                      "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read}},
            headers=headers)
