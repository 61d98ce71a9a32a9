"""Publishers: where a finished result goes. One module per publisher.

Each has `async publish(job, post, source, settings) -> dict` for blog posts and
`async write_back(job, rewrite, product, settings) -> dict` for product
rewrites (`source`/`product` are the job's first stage output). Both send the
job id as the idempotency key of the side effect and raise
blogqueue.errors.JobError subclasses. The pipeline saves what they return as a
checkpoint: once saved, a retry never calls them again.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..settings import Settings
from . import none, webhook, wix


class Publisher(Protocol):
    async def publish(self, job: dict[str, Any], post: dict[str, Any], source: dict[str, Any],
                      settings: Settings) -> dict[str, Any]: ...

    async def write_back(self, job: dict[str, Any], rewrite: dict[str, Any], product: dict[str, Any],
                         settings: Settings) -> dict[str, Any]: ...


REGISTRY: dict[str, Publisher] = {"none": none, "webhook": webhook, "wix": wix}  # type: ignore[dict-item]


def get(name: str) -> Publisher:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"publisher {name!r} is not available; known: {', '.join(sorted(REGISTRY))}") from None
