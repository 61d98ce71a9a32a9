"""State transitions decided by SQL, checked directly against PostgreSQL."""

import uuid

from blogqueue.db import Q

from .conftest import keyword_jobs


async def running_job(client, pool, **flags):
    out = await client.enqueue("shop-a", keyword_jobs(1))
    jid = uuid.UUID(out.jobs[0].id)
    await pool.execute("UPDATE bq_jobs SET status = 'running', attempt = 1, worker_id = 'w', "
                       "cancel_requested = $2 WHERE id = $1", jid, flags.get("cancel", False))
    return jid


async def finish(pool, jid, status, attempt=1):
    return await pool.fetchrow(Q["finish_attempt"], jid, attempt, status, 1, 5.0, "boom", "timeout", None,
                               "retry_scheduled", None, [], [], None)


async def test_a_stopped_job_is_never_requeued(client, pool):
    jid = await running_job(client, pool, cancel=True)
    row = await finish(pool, jid, "scheduled")
    assert row["status"] == "cancelled"
    job = await client.get_job(str(jid))
    assert job.status == "cancelled" and job.error_code == "cancelled" and job.finished_at
    assert job.events[-1].event == "cancelled"


async def test_retry_is_scheduled_when_not_stopped(client, pool):
    jid = await running_job(client, pool)
    row = await finish(pool, jid, "scheduled")
    assert row["status"] == "scheduled"
    job = await client.get_job(str(jid))
    assert job.status == "retrying" and job.next_attempt_at and job.last_error == "boom"


async def test_a_stale_attempt_changes_nothing(client, pool):
    jid = await running_job(client, pool)
    assert await finish(pool, jid, "done", attempt=2) is None
    assert await pool.fetch(Q["claim_attempts"], [jid], [1], "w2", 5.0) == []  # not dispatched
    assert (await client.get_job(str(jid))).status == "running"
