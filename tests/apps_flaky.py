"""An app whose jobs fail at their second stage while a file exists (`--app tests.apps_flaky:app`):
batch retry tests make jobs fail for real, then succeed on retry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import blogqueue


async def draft(run: blogqueue.Run) -> dict[str, Any]:
    """A paid call (the offline provider logs it): a retry must not make it again once saved."""
    r = await run.text(system="You draft.", prompt=f"Draft about {run.spec['source']['keyword']}", max_tokens=50)
    return {"text": r.text}


async def publish(run: blogqueue.Run) -> dict[str, Any]:
    flag = run.spec["metadata"].get("fail_while")
    if flag and await asyncio.to_thread(Path(flag).exists):
        raise blogqueue.FatalError("the publisher refused the post", code="publish_refused")
    return {"published": True}


async def wobble(run: blogqueue.Run) -> dict[str, Any]:
    """Fails with a retryable error in the job's first attempt only."""
    if run.attempt == 1:
        raise blogqueue.RetryableError("the provider timed out", code="timeout")
    return {"ok": True}


app = blogqueue.App()
app.kind("flaky", [("draft", draft), ("publish", publish)], sources=["keyword"], credit_cost=3)
app.kind("wobbly", [("wobble", wobble)], sources=["keyword"])
