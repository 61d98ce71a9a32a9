"""Jobs through real worker processes: stages, retries, error classes, stop, scheduling."""

from collections import Counter
from datetime import UTC, datetime, timedelta

from testkit.processes import ARQ_WORKER

from .conftest import keyword_jobs, read_calls, wait_until


async def statuses(pool, batch_id):
    rows = await pool.fetch("SELECT bq_public_status(status, failures) s, count(*) n FROM bq_jobs "
                            "WHERE batch_id = $1 GROUP BY 1", batch_id)
    return {r["s"]: r["n"] for r in rows}


async def wait_finished(client, out, timeout=60):
    async def finished():
        b = await client.get_batch(out.batch_id)
        return b if b.finished else None
    return await wait_until(finished, timeout=timeout, what="batch to finish")


async def test_both_kinds_run_every_stage(client, workers, settings):
    workers(1)
    out = await client.enqueue("shop-a", [
        {"source": {"type": "keyword", "keyword": "green tea"}},
        {"kind": "product_optimization",
         "source": {"type": "product", "name": "Linen shirt", "description": "A shirt.", "price": 30}},
        {"source": {"type": "product", "name": "Teapot"}, "image": False},
    ])
    batch = await wait_finished(client, out)
    assert batch.counts["done"] == 3
    post, rewrite, no_image = [await client.get_job(j.id) for j in out.jobs]
    assert post.result["title"] and "green tea" in post.result["body"].lower()
    assert post.result["image_url"].startswith("offline://")
    assert set(post.stages) == {"source", "content", "image", "publish"}
    assert rewrite.result["seo_title"] and rewrite.result["original"]["name"] == "Linen shirt"
    assert set(rewrite.stages) == {"product", "rewrite", "write_back"}
    assert no_image.result["image_url"] is None
    events = [e.event for e in post.events]
    assert events == ["enqueued", "started", "stage_done", "stage_done", "stage_done", "stage_done", "done"]
    calls = Counter((c["job"], c["call"]) for c in read_calls(settings))
    assert calls == {(post.id, "text"): 1, (post.id, "image"): 1, (rewrite.id, "text"): 1,
                     (no_image.id, "text"): 1}


async def test_retryable_errors_follow_the_schedule_then_fail(client, workers, settings):
    workers(1)
    out = await client.enqueue("shop-a", [
        {"source": {"type": "keyword", "keyword": "a"}, "model": "offline:flaky-2"},
        {"source": {"type": "keyword", "keyword": "b"}, "model": "offline:flaky-9"},
    ])
    await wait_finished(client, out)
    recovered, exhausted = [await client.get_job(j.id) for j in out.jobs]
    assert recovered.status == "done" and recovered.attempts == 3 and recovered.failures == 2
    assert exhausted.status == "failed" and exhausted.attempts == settings.max_attempts
    assert "simulated timeout on attempt 4" in exhausted.last_error
    retries = [e for e in exhausted.events if e.event == "retry_scheduled"]
    assert len(retries) == len(settings.retry_schedule)
    for e, base in zip(retries, settings.retry_schedule, strict=True):
        assert base * (1 - settings.retry_jitter) <= e.detail["delay_s"] <= base * (1 + settings.retry_jitter)
    # The source stage was saved on attempt 1 and never run again.
    assert recovered.stages["source"].attempt == 1


async def test_retrying_status_shows_next_attempt_time(client, workers, settings):
    workers(1, retry_schedule=(30.0,))
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "a"},
                                          "model": "offline:flaky-1"})
    job_id = out.jobs[0].id

    async def retrying():
        job = await client.get_job(job_id)
        return job if job.status == "retrying" else None
    job = await wait_until(retrying, what="retrying status")
    wait = job.next_attempt_at - datetime.now(UTC)
    assert timedelta(seconds=20) < wait < timedelta(seconds=34)
    assert job.last_error and job.error_code == "timeout"


async def test_fatal_error_fails_at_once(client, workers):
    workers(1)
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "a"}, "model": "offline:refuse"})
    await wait_finished(client, out)
    job = await client.get_job(out.jobs[0].id)
    assert job.status == "failed" and job.attempts == 1
    assert job.error_code == "content_refused" and "content policy" in job.last_error


async def test_rate_limited_waits_without_using_an_attempt(client, workers):
    workers(1)
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "a"},
                                          "model": "offline:ratelimit-2"})
    await wait_finished(client, out)
    job = await client.get_job(out.jobs[0].id)
    assert job.status == "done" and job.failures == 0 and job.attempts == 3
    assert [e.event for e in job.events].count("rate_limited") == 2


async def test_stop_running_job_aborts_the_call_and_keeps_saved_stages(client, workers, settings, pool):
    workers(1)
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "a"},
                                          "model": "offline:slow-20000"})
    job_id = out.jobs[0].id

    async def in_content():
        job = await client.get_job(job_id)
        return job.status == "running" and job.stage == "content"
    await wait_until(in_content, what="job to reach the content stage")
    stopped = await client.stop_job(job_id, "shop-a")
    assert stopped.stopping == 1

    async def cancelled():
        return (await client.get_job(job_id)).status == "cancelled"
    await wait_until(cancelled, timeout=5, what="running job to be cancelled")
    job = await client.get_job(job_id)
    assert set(job.stages) == {"source"}
    assert job.events[-1].event == "cancelled" and job.events[-1].detail == {"stage": "content"}
    assert (await client.stop_job(job_id, "shop-a")).cancelled == 0  # finished: nothing to do


async def test_run_at_is_not_dispatched_before_its_time(client, workers, pool):
    workers(1)
    when = datetime.now(UTC) + timedelta(seconds=2)
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "later"},
                                          "run_at": when.isoformat()})
    await wait_finished(client, out)
    job = await client.get_job(out.jobs[0].id)
    assert job.status == "done"
    assert job.started_at >= when


async def test_many_jobs_each_run_once(client, workers, settings, pool):
    workers(2)
    out = await client.enqueue("shop-a", keyword_jobs(300))
    batch = await wait_finished(client, out)
    assert batch.counts["done"] == 300
    per_job = Counter(c["job"] for c in read_calls(settings) if c["call"] == "text")
    assert len(per_job) == 300 and set(per_job.values()) == {1}
    assert await pool.fetchval("SELECT count(*) FROM bq_job_events WHERE event = 'done'") == 300
    # Two dispatchers were campaigning: still one dispatch and one start per job.
    assert await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE attempt <> 1") == 0
    assert await pool.fetchval("SELECT count(*) FROM bq_job_events WHERE event = 'started'") == 300


async def test_arq_command_runs_the_same_worker(client, workers):
    """`arq blogqueue.worker.WorkerSettings` reads the environment and runs jobs like `blogqueue worker`."""
    workers(1, argv=ARQ_WORKER)
    out = await client.enqueue("shop-a", keyword_jobs(5))
    batch = await wait_finished(client, out)
    assert batch.counts["done"] == 5
