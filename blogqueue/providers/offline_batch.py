"""The offline provider's simulated Batch API: the demo shows the batch lane without a network.

A batch "completes" OFFLINE_BATCH_SECONDS after its submission; its answers are the
offline provider's (deterministic) answers. Batches live in the memory of the process
that submitted them (the leader): a batch a new leader does not know counts as expired,
so its requests fall back to the now-lane (offline calls are free).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import ClassVar

from ..errors import JobError
from .base import CallContext
from .batch import BatchAnswer, BatchItem, BatchStatus, Intent
from .offline import OfflineConfig, OfflineProvider


@dataclass
class _Batch:
    intent_id: str
    items: list[BatchItem]
    due: float
    cancelled: bool = False


class OfflineBatch:
    name = "offline"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    _batches: ClassVar[dict[str, _Batch]] = {}  # per process, shared by every instance

    def __init__(self, completion_seconds: float) -> None:
        self.completion_seconds = completion_seconds
        self._text = OfflineProvider(OfflineConfig())

    async def submit(self, items: list[BatchItem], api_key: str | None, model: str, intent_id: str) -> str:
        batch_id = f"offline-batch-{uuid.uuid4().hex[:12]}"
        self._batches[batch_id] = _Batch(intent_id, list(items), time.monotonic() + self.completion_seconds)
        return batch_id

    async def find(self, api_key: str | None, intent: Intent) -> str | None:
        return next((k for k, b in self._batches.items() if b.intent_id == intent.id), None)

    async def status(self, batch_id: str, api_key: str | None) -> BatchStatus:
        b = self._batches.get(batch_id)
        if b is None:
            return BatchStatus("expired", "this process does not know the batch (the leader changed)")
        if b.cancelled:
            return BatchStatus("cancelled")
        return BatchStatus("ended" if time.monotonic() >= b.due else "in_progress")

    async def results(self, batch_id: str, api_key: str | None) -> list[BatchAnswer]:
        b = self._batches.pop(batch_id, None)
        if b is None or b.cancelled:
            return []
        out = []
        # A large attempt number: the offline models' flaky/ratelimit simulations are for the now-lane.
        ctx = CallContext(job_id=batch_id, attempt=1_000_000, stage="batch", tenant_id="")
        for item in b.items:
            try:
                out.append(BatchAnswer(item.custom_id, result=await self._text.generate_text(item.request, None, ctx)))
            except JobError as exc:
                out.append(BatchAnswer(item.custom_id, error=exc))
        return out

    async def cancel(self, batch_id: str, api_key: str | None) -> None:
        b = self._batches.get(batch_id)
        if b is not None:
            b.cancelled = True
