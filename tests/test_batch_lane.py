"""The batch lane (DESIGN §11, blogqueue/batchlane.py) with real workers and the fakes."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

import blogqueue
from blogqueue.settings import Settings
from tests.conftest import read_calls, wait_until

FAST = {"batch_window_seconds": 0.3, "batch_poll_seconds": 0.2, "batch_poll_max_seconds": 0.5,
        "offline_batch_seconds": 0.5}


@pytest.fixture
async def lane_settings(settings: Settings, pool: asyncpg.Pool) -> Settings:
    await pool.execute("TRUNCATE bq_provider_batches CASCADE")
    return settings.replace(**FAST)


async def finished(client: blogqueue.Client, job_id: str, timeout: float = 60) -> blogqueue.JobDetail:
    async def done() -> blogqueue.JobDetail | None:
        job = await client.get_job(job_id)
        return job if job.status in ("done", "failed", "cancelled") else None

    return await wait_until(done, timeout=timeout)


async def test_offline_batch_lane_jobs_park_and_finish(lane_settings: Settings, pool: asyncpg.Pool,
                                                      workers: Any) -> None:
    client = blogqueue.Client(lane_settings, pool)
    workers(1, **FAST)
    out = await client.enqueue("shop-a", [{"source": {"type": "keyword", "keyword": f"tea {i}"}, "lane": "batch",
                                           "image": False} for i in range(5)])
    jobs = [await finished(client, j.id) for j in out.jobs]
    assert [j.status for j in jobs] == ["done"] * 5, jobs
    assert all(j.lane == "batch" for j in jobs)
    events = [e.event for e in jobs[0].events]
    assert "parked" in events and "batch_answered" in events, events
    parked = next(e for e in jobs[0].events if e.event == "parked")
    assert parked.detail["waiting_for"] == "provider batch"
    # No synchronous text call was made for them: the offline call log holds none.
    assert [c for c in read_calls(lane_settings) if c["call"] == "text"] == []
    rows = await pool.fetch("SELECT state, request_count FROM bq_provider_batches")
    assert sum(r["request_count"] for r in rows) == 5 and {r["state"] for r in rows} == {"ended"}
