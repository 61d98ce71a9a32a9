"""The batch lane (DESIGN §11, blogqueue/batchlane.py) with real workers and the fakes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

import blogqueue
from blogqueue.settings import Settings
from blogqueue.testing.fake_anthropic_batch import FakeAnthropicBatch
from blogqueue.testing.fake_openai_batch import FakeOpenAIBatch
from tests.conftest import read_calls, wait_until

FAST = {"batch_window_seconds": 0.3, "batch_poll_seconds": 0.2, "batch_poll_max_seconds": 0.5,
        "offline_batch_seconds": 0.5}


@pytest.fixture
def lane_settings(settings: Settings) -> Settings:
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


KEY = "sk-batch-platform-key-123456"


@dataclass(frozen=True)
class Case:
    provider: str
    model: str
    fake: Callable[..., Any]
    many: int  # jobs of the exactly-once test (the contract's 200 on one provider keeps the suite quick)

    def env(self, fake: Any, **extra: Any) -> dict[str, Any]:
        return {**FAST, f"{self.provider}_base_url": fake.base_url, f"{self.provider}_api_key": KEY, **extra}

    def jobs(self, n: int, prefix: str = "tea") -> list[dict[str, Any]]:
        return [{"source": {"type": "keyword", "keyword": f"{prefix} {i}"}, "lane": "batch", "image": False,
                 "model": self.model} for i in range(n)]

    def sync_calls(self, fake: Any) -> int:
        path = "/v1/chat/completions" if self.provider == "openai" else "/v1/messages"
        return sum(1 for c in fake.calls if c["path"] == path)


CASES = [Case("openai", "openai:gpt-4o-mini", FakeOpenAIBatch, 200),
         Case("anthropic", "anthropic:claude-3-5-haiku-latest", FakeAnthropicBatch, 60)]


@pytest.fixture(params=CASES, ids=lambda c: c.provider)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


async def test_200_batch_lane_jobs_each_request_submitted_once_no_synchronous_call(
        case: Case, lane_settings: Settings, pool: asyncpg.Pool, workers: Any) -> None:
    n = case.many
    with case.fake(completion_delay_s=0.5) as fake:
        env = case.env(fake, batch_max_requests=n // 2, worker_concurrency=20)
        client = blogqueue.Client(lane_settings.replace(**env), pool)
        workers(2, **env)
        out = await client.enqueue("shop-a", case.jobs(n))
        jobs = [await finished(client, j.id, timeout=120) for j in out.jobs]
        chat = case.sync_calls(fake)
        ids = dict(fake.custom_ids)
        created = fake.batches_created
    assert [j.status for j in jobs] == ["done"] * n, [j for j in jobs if j.status != "done"][:1]
    assert chat == 0  # not one synchronous call for them
    assert len(ids) == n and set(ids.values()) == {1}, ids  # each request submitted exactly once
    assert created >= 2  # BATCH_MAX_REQUESTS = n/2 cut them into batches
    assert all(j.result and "A fake post" in j.result["title"] for j in jobs), jobs[0].result


async def test_a_leader_killed_between_upload_and_record_submits_nothing_twice(
        case: Case, lane_settings: Settings, pool: asyncpg.Pool, workers: Any) -> None:
    # The batch is created at once, but its id reaches the client 30 s later: the leader is
    # killed while it waits, so the id was never recorded.
    with case.fake(completion_delay_s=0.5, create_delay_s=30) as fake:
        env = case.env(fake)
        client = blogqueue.Client(lane_settings.replace(**env), pool)
        [leader] = workers(1, **env)
        out = await client.enqueue("shop-a", case.jobs(6))

        async def created_once() -> bool:
            return fake.batches_created == 1

        await wait_until(created_once, timeout=30)
        assert await pool.fetchval("SELECT count(*) FROM bq_provider_batches WHERE state = 'intent'") == 1
        leader.kill()
        fake.create_delay_s = 0.0
        workers(1, **env)
        jobs = [await finished(client, j.id, timeout=60) for j in out.jobs]
        ids = dict(fake.custom_ids)
        created = fake.batches_created
    assert [j.status for j in jobs] == ["done"] * 6, jobs
    assert created == 1  # the new leader found the batch in the provider's list
    assert len(ids) == 6 and set(ids.values()) == {1}, ids


async def test_an_expired_batch_falls_back_to_the_now_lane(case: Case, lane_settings: Settings,
                                                           pool: asyncpg.Pool, workers: Any) -> None:
    with case.fake(completion_delay_s=0.5, expire=True, expire_fraction=0.5) as fake:
        env = case.env(fake, batch_max_requests=4)
        client = blogqueue.Client(lane_settings.replace(**env), pool)
        workers(1, **env)
        out = await client.enqueue("shop-a", case.jobs(4))
        jobs = [await finished(client, j.id) for j in out.jobs]
        chat = case.sync_calls(fake)
    assert [j.status for j in jobs] == ["done"] * 4, jobs
    fell_back = [j for j in jobs if any(e.event == "batch_fallback" for e in j.events)]
    assert len(fell_back) == 2 and chat == 2  # half expired unanswered: those went to the now-lane
    row = await pool.fetchrow("SELECT state, succeeded, fell_back FROM bq_provider_batches")
    assert dict(row) == {"state": "expired", "succeeded": 2, "fell_back": 2}


async def test_a_stopped_parked_job_ends_cancelled_and_its_batch_is_cancelled(
        case: Case, lane_settings: Settings, pool: asyncpg.Pool, workers: Any) -> None:
    with case.fake(completion_delay_s=120) as fake:
        env = case.env(fake)
        client = blogqueue.Client(lane_settings.replace(**env), pool)
        workers(1, **env)
        out = await client.enqueue("shop-a", case.jobs(1))
        job_id = out.jobs[0].id

        async def submitted() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM bq_provider_batches WHERE state = 'submitted'"))

        await wait_until(submitted, timeout=30)
        job = await client.get_job(job_id)
        assert job.status == "running" and job.stage == "content", job
        stopped = await client.stop_job(job_id)
        assert stopped.cancelled == 1
        assert (await client.get_job(job_id)).status == "cancelled"

        async def cancelled_at_provider() -> bool:
            return any(b.get("cancelled_at") or b.get("cancel_at") for b in fake.batches.values())

        await wait_until(cancelled_at_provider, timeout=30)
        chat = case.sync_calls(fake)
    assert chat == 0


async def test_a_per_request_error_is_raised_as_its_class(case: Case, lane_settings: Settings,
                                                          pool: asyncpg.Pool, workers: Any) -> None:
    with case.fake(completion_delay_s=0.3) as fake:
        env = case.env(fake)
        client = blogqueue.Client(lane_settings.replace(**env), pool)
        workers(1, **env)
        out = await client.enqueue("shop-a", case.jobs(1, prefix="[bad-request] tea"))
        job = await finished(client, out.jobs[0].id)
        chat = case.sync_calls(fake)
    # A 400 is fatal (DESIGN §4): the job fails at once with the provider's message, no retry.
    assert job.status == "failed" and job.error_code == "invalid_request" and job.failures == 1, job
    assert chat == 0


async def test_metrics_show_the_batch_lane(lane_settings: Settings, pool: asyncpg.Pool, workers: Any) -> None:
    client = blogqueue.Client(lane_settings, pool)
    workers(1, **FAST)
    out = await client.enqueue("shop-a", [{"source": {"type": "keyword", "keyword": "mint"}, "lane": "batch",
                                           "image": False}])
    job = await finished(client, out.jobs[0].id)
    lane = (await client.metrics())["batch_lane"]
    assert job.status == "done"
    assert lane["requests"] == 1 and lane["parked_jobs"] == 0 and lane["open_batches"] == 0
    assert lane["tokens"] > 0 and lane["estimated_saving_tokens"] == round(lane["tokens"] * 0.5)


async def test_the_batch_queue_limit_is_respected_by_splitting(lane_settings: Settings, pool: asyncpg.Pool,
                                                              workers: Any) -> None:
    # Each request is ~1,600 enqueued tokens (prompt / 4 + max_tokens 1,500): 4 fit in 8,000.
    with FakeOpenAIBatch(completion_delay_s=0.3, queue_limit_tokens=8000) as fake:
        case = CASES[0]
        env = case.env(fake, batch_queue_tokens=8000)
        client = blogqueue.Client(lane_settings.replace(**env), pool)
        workers(1, **env)
        out = await client.enqueue("shop-a", case.jobs(12))
        jobs = [await finished(client, j.id) for j in out.jobs]
        failed = [b for b in fake.batches.values() if b["errors"]]
        created = fake.batches_created
    assert [j.status for j in jobs] == ["done"] * 12, jobs
    assert failed == [] and created >= 3  # cut to fit, never refused for the queue limit


async def test_lane_validation_default_and_batch_credit_price(settings: Settings, pool: asyncpg.Pool) -> None:
    from blogqueue import credits
    from blogqueue.errors import InvalidInput

    client = blogqueue.Client(settings.replace(credits_enabled=True), pool)
    with pytest.raises(InvalidInput) as err:
        await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "x"}, "lane": "later"})
    assert err.value.details == {"field": "job.lane"}
    await credits.grant(pool, "shop-a", 100)
    out = await client.enqueue("shop-a", [{"source": {"type": "keyword", "keyword": "now"}},
                                          {"source": {"type": "keyword", "keyword": "batch"}, "lane": "batch"}])
    lanes = [(await client.get_job(j.id)).lane for j in out.jobs]
    assert lanes == ["now", "batch"]
    # blog_post costs 25; in the batch lane BATCH_CREDIT_PERCENT (50) of it, rounded up.
    assert (await credits.balance(pool, "shop-a"))["reserved"] == 25 + 13
    batch_default = blogqueue.Client(settings.replace(default_lane="batch"), pool)
    out = await batch_default.enqueue("shop-b", [{"source": {"type": "keyword", "keyword": "d"}},
                                                 {"source": {"type": "keyword", "keyword": "n"}, "lane": "now"}])
    assert [(await client.get_job(j.id)).lane for j in out.jobs] == ["batch", "now"]
