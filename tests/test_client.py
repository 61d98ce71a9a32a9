"""The library API without workers: enqueue, validation, idempotency, backpressure, listing, stop."""

from datetime import UTC, datetime, timedelta

import pytest

from blogqueue.client import Client
from blogqueue.errors import BacklogFull, Conflict, InvalidInput, NotFound

from .conftest import keyword_jobs


async def count(pool, sql="SELECT count(*) FROM bq_jobs", *args):
    return await pool.fetchval(sql, *args)


async def test_enqueue_one_and_read_it_back(client, pool):
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "green tea"},
                                          "metadata": {"ref": 7}, "priority": 3})
    assert len(out.jobs) == 1 and out.jobs[0].status == "queued"
    job = await client.get_job(out.jobs[0].id, tenant_id="shop-a")
    assert job.status == "queued" and job.kind == "blog_post"
    assert job.metadata == {"ref": 7} and job.priority == 3 and job.attempts == 0
    assert job.batch_id == out.batch_id
    assert [e.event for e in job.events] == ["enqueued"]


async def test_bulk_enqueue_is_atomic(client, pool):
    jobs = keyword_jobs(999)
    jobs.insert(500, {"source": {"type": "keyword", "keyword": ""}})
    with pytest.raises(InvalidInput) as err:
        await client.enqueue("shop-a", jobs)
    assert err.value.details == {"field": "jobs[500].source"}
    assert await count(pool) == 0 and await count(pool, "SELECT count(*) FROM bq_batches") == 0
    out = await client.enqueue("shop-a", keyword_jobs(1000))
    assert len(out.jobs) == 1000 and await count(pool) == 1000


@pytest.mark.parametrize(("job", "field"), [
    ({"source": {"type": "keyword", "keyword": "x"}, "colour": "red"}, "job.colour"),
    ({"source": {"type": "rss"}}, "job.source"),
    ({"source": {"type": "keyword", "keyword": "x"}, "kind": "poem"}, "job.kind"),
    ({"source": {"type": "keyword", "keyword": "x"}, "model": "nope:gpt"}, "job.model"),
    ({"source": {"type": "keyword", "keyword": "x"}, "model": "offline:gpt-9"}, "job.model"),
    ({"source": {"type": "keyword", "keyword": "x"}, "priority": "high"}, "job.priority"),
    ({"source": {"type": "keyword", "keyword": "x"}, "run_at": "tomorrow"}, "job.run_at"),
    ({"source": {"type": "keyword", "keyword": "x"}, "image": "yes"}, "job.image"),
    ({"kind": "product_optimization", "source": {"type": "keyword", "keyword": "x"}}, "job.source"),
    ({"kind": "product_optimization", "source": {"type": "product"}}, "job.source"),
])
async def test_invalid_jobs_name_the_field_and_write_nothing(client, pool, job, field):
    with pytest.raises(InvalidInput) as err:
        await client.enqueue("shop-a", job)
    assert err.value.details["field"] == field
    assert err.value.code == "invalid_input"
    assert await count(pool) == 0


async def test_idempotency_key_returns_the_existing_job(client, pool):
    job = {"source": {"type": "keyword", "keyword": "tea"}, "idempotency_key": "k1"}
    first = await client.enqueue("shop-a", job)
    again = await client.enqueue("shop-a", job)
    assert again.jobs[0].id == first.jobs[0].id and again.jobs[0].replayed
    # Another tenant's identical key is its own job.
    other = await client.enqueue("shop-b", job)
    assert other.jobs[0].id != first.jobs[0].id
    with pytest.raises(Conflict):
        await client.enqueue("shop-a", [keyword_jobs(1)[0], {**job, "priority": 5}])
    assert await count(pool) == 2


async def test_backlog_limits_refuse_with_retry_after_and_write_nothing(client, pool, settings):
    small = Client(settings.replace(max_tenant_backlog=5, max_backlog=8), pool)
    await small.enqueue("shop-a", keyword_jobs(5))
    with pytest.raises(BacklogFull) as err:
        await small.enqueue("shop-a", keyword_jobs(1))
    assert err.value.code == "backlog_full" and err.value.retry_after >= 1
    assert err.value.details["scope"] == "tenant"
    await small.enqueue("shop-b", keyword_jobs(3))
    with pytest.raises(BacklogFull) as err:
        await small.enqueue("shop-c", keyword_jobs(1))
    assert err.value.details["scope"] == "global"
    assert await count(pool) == 8


async def test_scheduled_job_shows_queued_with_its_time(client):
    when = datetime.now(UTC) + timedelta(hours=2)
    out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "later"},
                                          "run_at": when.isoformat()})
    job = await client.get_job(out.jobs[0].id, "shop-a")
    assert job.status == "queued"
    assert abs(job.run_at - when) < timedelta(seconds=1)


async def test_tenants_see_only_their_own(client):
    out = await client.enqueue("shop-a", keyword_jobs(3))
    job_id = out.jobs[0].id
    with pytest.raises(NotFound):
        await client.get_job(job_id, "shop-b")
    with pytest.raises(NotFound):
        await client.stop_job(job_id, "shop-b")
    with pytest.raises(NotFound):
        await client.get_batch(out.batch_id, "shop-b")
    with pytest.raises(NotFound):
        await client.get_job("not-a-uuid", "shop-a")
    assert (await client.list_jobs("shop-b")).jobs == []
    page = await client.list_jobs("shop-a", limit=2)
    with pytest.raises(NotFound):
        await client.list_jobs("shop-b", cursor=page.next_cursor)
    assert (await client.get_job(job_id, None)).id == job_id  # the operator's view


async def test_cursor_pages_neither_skip_nor_repeat_while_inserting(client):
    await client.enqueue("shop-a", keyword_jobs(25))
    before = {j.id for j in (await client.list_jobs("shop-a", limit=200)).jobs}
    seen: list[str] = []
    cursor = None
    while True:
        page = await client.list_jobs("shop-a", limit=7, cursor=cursor)
        seen += [j.id for j in page.jobs]
        await client.enqueue("shop-a", keyword_jobs(3))  # new work arrives between pages
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 25
    assert set(seen) == before


async def test_list_filters_by_status_and_batch(client):
    a = await client.enqueue("shop-a", keyword_jobs(3))
    await client.enqueue("shop-a", keyword_jobs(2))
    await client.stop_job(a.jobs[0].id, "shop-a")
    assert len((await client.list_jobs("shop-a", batch_id=a.batch_id)).jobs) == 3
    cancelled = (await client.list_jobs("shop-a", status="cancelled")).jobs
    assert [j.id for j in cancelled] == [a.jobs[0].id]
    with pytest.raises(InvalidInput):
        await client.list_jobs("shop-a", status="sleeping")


async def test_stop_queued_job_batch_and_tenant(client):
    a = await client.enqueue("shop-a", keyword_jobs(4))
    b = await client.enqueue("shop-a", keyword_jobs(3))
    other = await client.enqueue("shop-b", keyword_jobs(2))
    one = await client.stop_job(a.jobs[0].id, "shop-a")
    assert one.cancelled == 1 and one.job.status == "cancelled"
    assert (await client.stop_job(a.jobs[0].id, "shop-a")).cancelled == 0  # already stopped
    assert (await client.stop_batch(a.batch_id, "shop-a")).cancelled == 3
    batch = await client.get_batch(a.batch_id, "shop-a")
    assert batch.counts["cancelled"] == 4 and batch.finished
    assert (await client.stop_tenant("shop-a")).cancelled == 3
    assert (await client.get_batch(b.batch_id, "shop-a")).counts["cancelled"] == 3
    assert (await client.get_batch(other.batch_id, "shop-b")).counts["queued"] == 2
