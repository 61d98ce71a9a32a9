"""Sources: where a job's subject comes from. One module per source type.

Each module has `validate(source) -> dict` (raises ValueError with a message for
users, at enqueue) and `async fetch(source, settings, tenant_id) -> dict` (the source
stage's output, at run time; raises blogqueue.errors.JobError subclasses).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..settings import Settings
from . import keyword, product, tmdb


class Source(Protocol):
    KINDS: tuple[str, ...]

    def validate(self, source: dict[str, Any]) -> dict[str, Any]: ...

    async def fetch(self, source: dict[str, Any], settings: Settings, tenant_id: str) -> dict[str, Any]: ...


REGISTRY: dict[str, Source] = {"keyword": keyword, "product": product, "tmdb": tmdb}  # type: ignore[dict-item]


def validate(kind: str, source: dict[str, Any]) -> dict[str, Any]:
    name = source.get("type")
    if not isinstance(name, str) or name not in REGISTRY:  # {"type": {}} is not hashable
        raise ValueError(f"type must be one of {', '.join(sorted(REGISTRY))}")
    module = REGISTRY[name]
    if kind not in module.KINDS:
        raise ValueError(f"type {name!r} cannot feed a {kind} job")
    return {"type": name, **module.validate(source)}


async def fetch(source: dict[str, Any], settings: Settings, tenant_id: str) -> dict[str, Any]:
    """The source stage's output; `source` names the type, so prompts can pick their template."""
    out = await REGISTRY[source["type"]].fetch(source, settings, tenant_id)
    return {**out, "source": source["type"]}
