"""The `pages` publisher: each finished post or FAQ page becomes `<FAQ_PAGES_DIR>/<job id>.json`.

Idempotent by construction: the file is named by the job id and written whole
(a temporary file renamed into place), so a retry that publishes again leaves
exactly one page.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blogqueue


@dataclass(frozen=True)
class PagesConfig:
    directory: Path


def pages_config(settings: blogqueue.Settings) -> PagesConfig:
    """This publisher's own configuration: only the directory (it needs no secret of the deployment)."""
    return PagesConfig(Path(os.environ.get("FAQ_PAGES_DIR", ".faq-pages")))


class PagesPublisher:
    async def publish(self, job: dict[str, Any], post: dict[str, Any], source: dict[str, Any],
                      config: PagesConfig) -> dict[str, Any]:
        config.directory.mkdir(parents=True, exist_ok=True)
        target = config.directory / f"{job['id']}.json"
        body = json.dumps({"job_id": str(job["id"]), "tenant_id": job["tenant_id"], "kind": job["kind"], **post})
        fd, tmp = tempfile.mkstemp(dir=config.directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.replace(tmp, target)
        return {"publisher": "pages", "path": str(target)}

    async def write_back(self, job: dict[str, Any], rewrite: dict[str, Any], product: dict[str, Any],
                         config: PagesConfig) -> dict[str, Any]:
        raise blogqueue.FatalError("the pages publisher writes pages; it cannot write a product back",
                                   code="publisher_cannot_write_back")
