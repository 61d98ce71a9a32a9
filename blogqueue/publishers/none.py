"""Keep the result in PostgreSQL only: the job's status returns it."""

from __future__ import annotations

from typing import Any

# Nothing leaves PostgreSQL: the pipeline need not checkpoint this stage on its own
# before the finish (blogqueue.pipeline).
side_effects = False


async def publish(job: dict[str, Any], post: dict[str, Any], source: dict[str, Any],
                  config: None) -> dict[str, Any]:
    return {"publisher": "none", "kept": True}


async def write_back(job: dict[str, Any], rewrite: dict[str, Any], product: dict[str, Any],
                     config: None) -> dict[str, Any]:
    return {"publisher": "none", "kept": True}
