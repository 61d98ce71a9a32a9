"""Per-call replay: every paid provider call of a stage is kept, and a stage that runs
again replays the answers it already paid for (invariant 3 inside a stage).

A stage's checkpoint saves its output once the stage is done; a stage with two paid
calls that dies during the second would pay the first again on the next attempt. So
each call's answer is also kept in `bq_call_responses`, keyed by (job, stage, call
number within the stage), with a hash of the request: when the stage runs again, call
N whose request is the same returns the stored answer without a provider call.

When the answer is written (a PostgreSQL transaction per paid call on the hot path
is what this avoids):
- call N's answer is held in memory and written at the latest just before call N+1
  of the same stage is sent (so a worker killed during call N+1 has call N on disk);
- when the stage finishes first, its checkpoint covers every call it made and the
  held answer is dropped unwritten: a stage with one paid call costs nothing extra;
- when the stage raises, held answers are written (best effort) before the attempt
  ends, so a retry of a stage that failed after a paid call replays it;
- a batch-lane job parking its stage writes them before it parks.
The window that remains is the one the checkpoint always had: a worker killed after
a stage's *last* call returned and before its checkpoint committed pays that call again.

Answers are looked up only from the second attempt on (the first run of a job
cannot have any), once per stage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import asyncpg

from .db import Q
from .providers.base import TextRequest, TextResult


def text_request_hash(request: TextRequest) -> str:
    return hashlib.sha256(json.dumps(["text", asdict(request)], sort_keys=True).encode()).hexdigest()[:32]


def image_request_hash(model: str, prompt: str) -> str:
    return hashlib.sha256(json.dumps(["image", model, prompt]).encode()).hexdigest()[:32]


def text_to_json(result: TextResult) -> dict[str, Any]:
    return {"text": result.text, "model": result.model, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "cache_read_input_tokens": result.cache_read_input_tokens,
            "cache_creation_input_tokens": result.cache_creation_input_tokens}


def text_from_json(data: dict[str, Any]) -> TextResult:
    return TextResult(text=str(data["text"]), model=str(data["model"]), prompt_tokens=int(data["prompt_tokens"]),
                      completion_tokens=int(data["completion_tokens"]),
                      cache_read_input_tokens=int(data.get("cache_read_input_tokens", 0)),
                      cache_creation_input_tokens=int(data.get("cache_creation_input_tokens", 0)))


class CallLedger:
    """The calls of one attempt's current stage: numbering, stored answers, answers held back."""

    def __init__(self, pool: asyncpg.Pool, job_id: Any, attempt: int) -> None:
        self._pool = pool
        self._job_id = job_id
        self._attempt = attempt
        self.stage = ""
        self.calls = 0           # calls numbered so far in this stage (the next is calls + 1)
        self._stored: dict[int, tuple[str, dict[str, Any]]] | None = None
        self._held: list[tuple[int, str, str, dict[str, Any]]] = []  # (call, hash, lane, answer)

    def enter(self, stage: str) -> None:
        if stage != self.stage:
            self.stage, self.calls, self._stored, self._held = stage, 0, None, []

    def next_call(self) -> int:
        self.calls += 1
        return self.calls

    async def stored(self, call_no: int, request_hash: str, *, look: bool = False) -> dict[str, Any] | None:
        """The answer kept for this call of this stage, if its request was the same.

        `look` forces a lookup on a first attempt too (a batch-lane call whose answer the
        poller stored while the job was parked is always on a later attempt anyway).
        """
        if self._stored is None:
            if self._attempt <= 1 and not look:
                return None
            rows = await self._pool.fetch(Q["call_responses"], self._job_id, self.stage)
            self._stored = {r["call_no"]: (r["request_hash"], r["response"]) for r in rows}
        hit = self._stored.get(call_no)
        return hit[1] if hit is not None and hit[0] == request_hash else None

    def hold(self, call_no: int, request_hash: str, answer: dict[str, Any], lane: str = "now") -> None:
        self._held.append((call_no, request_hash, lane, answer))

    async def write_held(self) -> None:
        """Writes the answers held back (before the next call is sent, or before parking)."""
        if not self._held:
            return
        held, self._held = self._held, []
        await self._pool.execute(Q["save_call_responses"], self._job_id, self.stage, [h[0] for h in held],
                                 [h[1] for h in held], [h[2] for h in held], [h[3] for h in held])

    def checkpointed(self) -> None:
        """The stage's output is saved: it covers every call, nothing held needs writing."""
        self._held = []
