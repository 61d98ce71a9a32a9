"""Nothing lost, nothing twice: kill -9, Redis flushed, SIGTERM."""

from collections import Counter

import redis.asyncio as aioredis

from .conftest import keyword_jobs, read_calls, wait_until


async def job_where(client, job_id, pred, what, timeout=30):
    async def check():
        job = await client.get_job(job_id)
        return job if pred(job) else None
    return await wait_until(check, timeout=timeout, what=what)


async def test_kill_9_mid_stage_resumes_without_repaying_saved_stages(client, workers, settings):
    (first,) = workers(1, lease_seconds=2.0)
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "crash"},
                                          "model": "offline:slow-1500"})
    job_id = out.jobs[0].id
    await job_where(client, job_id, lambda j: j.status == "running" and j.stage == "image",
                    "the image stage to start")
    first.kill()
    workers(1, lease_seconds=2.0)
    job = await job_where(client, job_id, lambda j: j.status == "done", "the job to finish", timeout=40)

    calls = Counter((c["stage"], c["attempt"]) for c in read_calls(settings) if c["job"] == job_id)
    # content was saved before the kill: paid once. image was cut off mid-call: paid again.
    assert calls == {("content", 1): 1, ("image", 1): 1, ("image", 2): 1}
    assert job.attempts == 2 and job.failures == 1
    assert job.stages["content"].attempt == 1 and job.stages["image"].attempt == 2
    events = [e.event for e in job.events]
    assert events.count("lease_expired") == 1 and events.count("done") == 1


async def test_redis_flushed_mid_run_loses_nothing(client, workers, settings, pool):
    workers(2, lease_seconds=2.0, offline_latency_ms=20.0)
    out = await client.enqueue("shop-a", keyword_jobs(200, image=False))
    await client.enqueue("shop-b", keyword_jobs(100, image=False))

    async def some_done():
        return await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'done'") >= 40
    await wait_until(some_done, what="the first jobs to finish")
    r = aioredis.from_url(settings.redis_url)
    try:
        await r.flushall()
    finally:
        await r.aclose()

    async def all_done():
        return await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'done'") == 300
    await wait_until(all_done, timeout=60, what="every job to finish after FLUSHALL")
    text_calls = Counter(c["job"] for c in read_calls(settings) if c["call"] == "text")
    assert len(text_calls) == 300 and set(text_calls.values()) == {1}
    assert await pool.fetchval("SELECT count(*) FROM bq_job_events WHERE event = 'done'") == 300
    assert out.batch_id


async def test_sigterm_releases_running_work_without_using_an_attempt(client, workers, settings):
    (first,) = workers(1, shutdown_grace_seconds=1)
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "slow"},
                                          "model": "offline:slow-4000", "image": False})
    job_id = out.jobs[0].id
    await job_where(client, job_id, lambda j: j.status == "running" and j.stage == "content",
                    "the content stage to start")
    assert first.terminate(timeout=15) is not None
    job = await client.get_job(job_id)
    assert job.status == "queued" and job.failures == 0
    assert job.events[-1].event == "released"
    workers(1)
    job = await job_where(client, job_id, lambda j: j.status == "done", "another worker to finish it")
    # No attempt was used up. The dying worker's dispatcher may hand the released job to arq once
    # more before it exits, so the dispatch counter may be past 2; only failures are attempts used.
    assert job.failures == 0 and job.attempts >= 2


async def test_a_job_that_keeps_killing_workers_ends_failed(client, workers, settings, pool):
    """Lost leases count as failures, so a poison job cannot loop forever."""
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "poison"},
                                          "model": "offline:slow-60000"})
    job_id = out.jobs[0].id
    for attempt in range(1, settings.max_attempts + 1):
        (w,) = workers(1, lease_seconds=1.5)
        await job_where(client, job_id, lambda j, a=attempt: j.status == "running" and j.attempts == a,
                        f"attempt {attempt} to run")
        w.kill()
    workers(1, lease_seconds=1.5)  # its dispatcher reaps the last lapsed lease
    job = await job_where(client, job_id, lambda j: j.status == "failed", "the job to fail",
                          timeout=20)
    assert job.error_code == "worker_lost" and job.failures == settings.max_attempts


async def test_worker_rides_out_a_redis_outage(client, workers, settings, pool, tmp_path):
    """Redis going away does not end `blogqueue worker`: it restarts its arq loop when Redis is back."""
    from testkit.processes import RedisServer

    redis = RedisServer(tmp_path).start()
    try:
        (worker,) = workers(1, redis_url=redis.url)
        first = await client.enqueue("shop-a", keyword_jobs(20, image=False))

        async def batch_done(out):
            return (await client.get_batch(out.batch_id)).finished
        await wait_until(lambda: batch_done(first), what="jobs before the outage")
        redis.stop()
        during = await client.enqueue("shop-a", keyword_jobs(20, image=False))  # PostgreSQL alone takes it
        await wait_until(lambda: _logged(tmp_path, "Redis unreachable"), timeout=30, what="the worker to notice")
        redis.start()
        await wait_until(lambda: batch_done(during), timeout=60, what="jobs enqueued during the outage")
        assert worker.alive()
        assert (await client.get_batch(during.batch_id)).counts["done"] == 20
    finally:
        redis.stop()


async def test_attempts_running_when_redis_goes_away_finish_on_postgresql(client, workers, pool, tmp_path):
    """Redis lost mid-run: arq's shutdown gives up at the first job whose Redis bookkeeping fails
    and would close the loop under the others; the worker lets them end on PostgreSQL alone
    (WorkerRuntime.wind_down). The long attempts finish `done` on their first attempt while Redis
    is still away, instead of hanging as `running` until their lease lapses."""
    from testkit.processes import RedisServer

    redis = RedisServer(tmp_path).start()
    try:
        # A grace longer than what the long attempts have left when Redis goes (the tests' default is 2 s).
        (worker,) = workers(1, redis_url=redis.url, shutdown_grace_seconds=10)
        short = await client.enqueue("shop-a", keyword_jobs(2, image=False, model="offline:slow-1500"))
        long = await client.enqueue("shop-a", keyword_jobs(2, image=False, model="offline:slow-6000"))
        ids = [j.id for j in short.jobs + long.jobs]

        async def all_running():
            n = await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'running' AND id = ANY($1::uuid[])",
                                    ids)
            return n == 4
        await wait_until(all_running, timeout=30, what="the four attempts to run")
        redis.stop()  # the short ones' arq bookkeeping fails first, then arq's poll

        async def long_done():
            return [(await client.get_job(j.id)).status for j in long.jobs] == ["done", "done"]
        await wait_until(long_done, timeout=25, what="the long attempts to finish while Redis is away")
        assert await _logged(tmp_path, "winding down the attempts still running")
        for j in long.jobs:
            job = await client.get_job(j.id)
            assert job.attempts == 1
            assert "lease_expired" not in [e.event for e in job.events]
        redis.start()
        await wait_until(lambda: _logged(tmp_path, "restarting the arq loop"), timeout=30, what="the restart")
        assert worker.alive()
    finally:
        redis.stop()


async def _logged(tmp_path, text):
    return any(text in log.read_text(errors="replace") for log in tmp_path.glob("worker-*.log"))
