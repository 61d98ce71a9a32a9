"""The typed library API: `Client.open`, typed results exported from `blogqueue`, their JSON."""

from __future__ import annotations

import json
from datetime import datetime
from typing import get_args

import pytest

import blogqueue
from blogqueue import Batch, Client, Enqueued, Job, JobDetail, JobPage, Settings, Stopped
from blogqueue.jobs import PUBLIC_STATUSES
from blogqueue.models import PublicStatus


def kw(word: str) -> dict:
    return {"source": {"type": "keyword", "keyword": word}, "metadata": {"n": 1}}


async def test_open_is_an_async_context_manager_with_its_own_pool(settings: Settings) -> None:
    async with Client.open(settings, min_size=0) as bq:
        out = await bq.enqueue("shop-o", kw("tea"))
        assert isinstance(out, Enqueued) and out.jobs[0].status == "queued"
        pool = bq.pool
    assert pool.is_closing()  # the pool it opened is closed on leaving the block


async def test_connect_still_works_but_warns(settings: Settings) -> None:
    with pytest.warns(DeprecationWarning, match=r"Client\.open"):
        bq = await Client.connect(settings)
    async with bq:
        assert (await bq.list_jobs("shop-none")).jobs == []


async def test_results_are_typed_and_frozen(client: Client) -> None:
    out = await client.enqueue("shop-t", [kw("a"), kw("b")])
    job = await client.get_job(out.jobs[0].id, "shop-t")
    assert isinstance(job, JobDetail) and isinstance(job.created_at, datetime) and job.created_at.tzinfo
    assert job.events[0].event == "enqueued" and job.stages == {}
    assert job.wait_reason and "no live worker" in job.wait_reason  # no worker runs in this test
    page = await client.list_jobs("shop-t", limit=1)
    assert isinstance(page, JobPage) and type(page.jobs[0]) is Job and page.next_cursor
    batch = await client.get_batch(out.batch_id, "shop-t")
    assert isinstance(batch, Batch) and batch.total == 2 and batch.counts["queued"] == 2
    stopped = await client.stop_batch(out.batch_id, "shop-t")
    assert isinstance(stopped, Stopped) and stopped.cancelled == 2 and stopped.job is None
    with pytest.raises(ValueError, match="frozen"):
        job.status = "done"  # type: ignore[misc]


async def test_json_is_the_contract_shape(client: Client) -> None:
    """The keys the HTTP API has always answered with: views without events omit the keys."""
    out = await client.enqueue("shop-j", kw("c"))
    assert set(json.loads(out.model_dump_json())) == {"batch_id", "jobs", "estimated_wait_s"}
    one = json.loads((await client.get_job(out.jobs[0].id)).model_dump_json())
    listed = json.loads((await client.list_jobs("shop-j")).model_dump_json())["jobs"][0]
    assert set(one) - set(listed) == {"wait_reason", "events", "stages"}
    assert one["created_at"] == datetime.fromisoformat(one["created_at"]).isoformat()  # isoformat, not "Z"
    assert "detail" not in one["events"][0]  # an event without detail has no key
    stop = json.loads((await client.stop_tenant("shop-j")).model_dump_json())
    assert stop == {"cancelled": 1, "stopping": 0}


def test_public_names_and_statuses() -> None:
    for name in ("Client", "JobSpec", "Job", "JobDetail", "Enqueued", "JobPage", "Batch", "Stopped"):
        assert name in blogqueue.__all__ and hasattr(blogqueue, name)
    assert get_args(PublicStatus) == PUBLIC_STATUSES
