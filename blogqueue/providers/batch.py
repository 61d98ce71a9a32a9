"""The interface of a provider's Batch API, as the batch lane (blogqueue/batchlane.py) uses it.

An adapter submits a list of text requests as one provider batch, finds a batch again by
the intent id it was submitted with (recovery after a crash between upload and record),
reports a batch's state, reads its answers and cancels it. Per-request failures come back
as the engine's error classes (DESIGN §4); requests a batch never answered (expired,
cancelled, failed) are simply absent from `results`, and the lane sends them to the now-lane.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from ..errors import JobError
from .base import TextRequest, TextResult

BatchState = Literal["in_progress", "ended", "expired", "failed", "cancelled"]


@dataclass(frozen=True)
class BatchItem:
    custom_id: str
    request: TextRequest


@dataclass(frozen=True)
class Intent:
    """What the lane knows of a batch it may have submitted: its intent id (OpenAI metadata), its
    requests' custom ids, when the intent was recorded, and provider ids already recorded
    (which cannot be this one)."""

    id: str
    custom_ids: frozenset[str]
    created_at: datetime
    known: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BatchStatus:
    state: BatchState
    detail: str = ""


@dataclass(frozen=True)
class BatchAnswer:
    custom_id: str
    result: TextResult | None = None
    error: JobError | None = None


class BatchProvider(Protocol):
    name: str
    max_requests: int      # per batch (OpenAI 50,000; Anthropic 100,000)
    max_bytes: int         # per batch (OpenAI 200 MB input file; Anthropic 256 MB)

    async def submit(self, items: list[BatchItem], api_key: str | None, model: str, intent_id: str) -> str:
        """Uploads the requests as one batch tagged with `intent_id`; returns the provider's batch id."""
        ...

    async def find(self, api_key: str | None, intent: Intent) -> str | None:
        """The provider's id of the batch submitted for this intent, if there is one."""
        ...

    async def status(self, batch_id: str, api_key: str | None) -> BatchStatus: ...

    async def results(self, batch_id: str, api_key: str | None) -> list[BatchAnswer]: ...

    async def cancel(self, batch_id: str, api_key: str | None) -> None: ...
