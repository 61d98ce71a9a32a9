"""The batch lane (DESIGN §11): see docs/batch-lane.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .providers.base import TextRequest, TextResult
from .resolve import Resolved

if TYPE_CHECKING:
    from .pipeline import Run


async def text_call(run: Run, r: Resolved, request: TextRequest, call_no: int, digest: str) -> TextResult | None:
    return None
