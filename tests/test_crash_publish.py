"""kill -9 around the publish side effect: one delivery, one charge, no paid call made twice."""

from collections import Counter

import pytest

from blogqueue.client import Client
from blogqueue.testing.fake_webhook import FakeWebhookReceiver
from blogqueue.testing.fake_wix import FakeWix

from .conftest import read_calls, wait_until

SECRET = "whsec-crash-0123456789"
WIX_TOKEN = "wix-token-crash-123456"


async def done(bq, job_id, timeout=40):
    async def check():
        job = await bq.get_job(job_id)
        return job if job.status == "done" else None
    return await wait_until(check, timeout=timeout, what="the job to finish after the crash")


def paid_calls(settings, job_id):
    return Counter(c["stage"] for c in read_calls(settings) if c["job"] == job_id)


async def ledger(pool, job_id):
    rows = await pool.fetch("SELECT movement, amount FROM bq_credit_ledger WHERE job_id = $1::uuid ORDER BY id",
                            job_id)
    return [(r["movement"], r["amount"]) for r in rows]


@pytest.mark.parametrize("publisher", ["webhook", "wix"])
async def test_kill_after_the_side_effect_before_the_ack_delivers_once(publisher, settings, pool, workers):
    """The receiver records the delivery, then holds its 2xx; the worker dies waiting for it.

    The retry resumes after the saved image stage (no second image) and delivers
    again with the same Idempotency-Key, which the receiver drops.
    """
    bq = Client(settings.replace(credits_enabled=True), pool)
    await bq.grant_credits("store-1", 100)
    receiver = FakeWebhookReceiver(SECRET) if publisher == "webhook" else FakeWix(WIX_TOKEN)
    with receiver:
        receiver.hold_next(5.0)
        conf = (dict(webhook_url=receiver.url, webhook_secret=SECRET) if publisher == "webhook"
                else dict(wix_base_url=receiver.url, wix_api_token=WIX_TOKEN))
        (first,) = workers(1, publisher=publisher, lease_seconds=2.0, **conf)
        out = await bq.enqueue("store-1", {"source": {"type": "keyword", "keyword": "crash"}})
        job_id = out.jobs[0].id

        async def delivered():
            return receiver.received.is_set()
        await wait_until(delivered, what="the publisher's request to reach the receiver")
        first.kill()
        assert (await bq.get_job(job_id)).status == "running"  # not done: the ack never arrived
        workers(1, publisher=publisher, lease_seconds=2.0, **conf)
        job = await done(bq, job_id)
        posts = receiver.count("POST")
        unique = len(receiver.deliveries if publisher == "webhook" else receiver.drafts)
    assert posts == 2 and unique == 1  # delivered again, deduplicated by the Idempotency-Key
    if publisher == "webhook":
        assert receiver.bad_signatures == 0 and receiver.redeliveries == 1
    assert paid_calls(settings, job_id) == {"content": 1, "image": 1}  # saved stages were not paid again
    assert job.stages["image"].attempt == 1 and job.stages["publish"].attempt == 2
    assert await ledger(pool, job_id) == [("reserve", 25), ("charge", 25)]
    assert (await bq.credit_balance("store-1"))["balance"] == 75


async def test_kill_after_the_ack_was_saved_before_done_never_publishes_again(settings, pool, workers):
    """The worker got the 2xx and saved the publish checkpoint, then died before marking the job done.

    To land in that window deterministically the test holds an EXCLUSIVE lock on
    the ledger: the worker's final status change settles credits in the same
    statement, so it blocks exactly there. The retry finds every stage saved and
    only finishes the job: no second request at all, one charge.
    """
    bq = Client(settings.replace(credits_enabled=True), pool)
    await bq.grant_credits("store-1", 25)
    with FakeWebhookReceiver(SECRET) as receiver:
        out = await bq.enqueue("store-1", {"source": {"type": "keyword", "keyword": "window"}})
        job_id = out.jobs[0].id
        conf = dict(publisher="webhook", webhook_url=receiver.url, webhook_secret=SECRET, lease_seconds=2.0)
        async with pool.acquire() as holder:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("LOCK TABLE bq_credit_ledger IN EXCLUSIVE MODE")
            me = await holder.fetchval("SELECT pg_backend_pid()")
            (first,) = workers(1, **conf)

            async def finish_blocked():
                return await pool.fetchval("SELECT count(*) FROM pg_stat_activity "
                                           "WHERE $1 = ANY(pg_blocking_pids(pid))", me)
            await wait_until(finish_blocked, what="the worker's final update to wait on the ledger")
            saved = await pool.fetchval("SELECT count(*) FROM bq_job_stages WHERE job_id = $1::uuid "
                                        "AND stage = 'publish'", job_id)
            status = await pool.fetchval("SELECT status FROM bq_jobs WHERE id = $1::uuid", job_id)
            first.kill()
            # A killed client's backend would still finish its statement once the lock goes:
            # end it too, as a crashed host's connections end.
            await pool.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                               "AND pid <> pg_backend_pid()")
            await tx.rollback()
        assert saved == 1 and status == "running" and len(receiver.requests) == 1
        workers(1, **conf)
        job = await done(bq, job_id)
        requests = len(receiver.requests)
    assert requests == 1 and len(receiver.deliveries) == 1 and receiver.redeliveries == 0
    assert job.attempts == 2 and job.stages["publish"].attempt == 1
    assert paid_calls(settings, job_id) == {"content": 1, "image": 1}
    assert await ledger(pool, job_id) == [("reserve", 25), ("charge", 25)]
    assert (await bq.credit_balance("store-1"))["balance"] == 0
