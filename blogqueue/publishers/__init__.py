"""Publishers: where a finished result goes. One module per built-in publisher.

A publisher is registered on the app (`blogqueue.App.publisher`) as any object
with

    async publish(job, post, source, config) -> dict        # a blog post
    async write_back(job, rewrite, product, config) -> dict # a product rewrite

`source`/`product` are the job's first stage output; `config` is what the
publisher registered (built from the process's Settings), never the whole
Settings. Both send the job id as the idempotency key of the side effect and
raise blogqueue.errors.JobError subclasses. The pipeline saves what they
return as a checkpoint: once saved, a retry never calls them again.

`BLOGQUEUE_PUBLISHER` picks the registered publisher a deployment uses; the
built-in ones are `none`, `webhook` and `wix`.
"""

from __future__ import annotations

from typing import Any, Protocol


class Publisher(Protocol):
    async def publish(self, job: dict[str, Any], post: dict[str, Any], source: dict[str, Any],
                      config: Any) -> dict[str, Any]: ...

    async def write_back(self, job: dict[str, Any], rewrite: dict[str, Any], product: dict[str, Any],
                         config: Any) -> dict[str, Any]: ...
