"""The event stream's machinery (blogqueue/events.py) through the library: order, resume, and ids
that commit out of order. The HTTP stream with real processes: tests/test_http_events.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from blogqueue import db
from blogqueue.client import Client
from blogqueue.db import Q
from blogqueue.errors import NotFound
from blogqueue.events import Feed
from blogqueue.models import StreamEvent
from blogqueue.settings import Settings
from testkit.processes import WorkerProcess
from tests.apps_flaky import app as flaky_app
from tests.conftest import keyword_jobs, wait_until


async def _take(feed: Feed, n: int, timeout: float = 10) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    while len(out) < n:
        ev = await feed.get(timeout=timeout)
        assert ev is not None, f"only {len(out)} of {n} events arrived: {out}"
        out.append(ev)
    return out


async def _polls_after(client: Client, n: int) -> None:
    """Until the hub has polled `n` more times (so it has seen whatever is committed now)."""
    hub = client._events
    assert hub is not None
    start = hub.polls
    await wait_until(lambda: asyncio.sleep(0, hub.polls >= start + n), timeout=10, what=f"{n} polls")


async def test_an_id_that_commits_late_is_not_skipped(settings: Settings, pool: asyncpg.Pool) -> None:
    """Event id N is taken by a transaction that stays open while N+1 commits: the stream holds
    N+1 back and delivers N, then N+1, once N commits. A rolled-back id does not stall it."""
    async with Client(settings, pool) as client:
        feed = await client.event_feed("shop-a")
        jobs = [j.id for j in (await client.enqueue("shop-a", keyword_jobs(4))).jobs]
        assert [e.event for e in await _take(feed, 4)] == ["enqueued"] * 4
        late = await db.connect(settings)
        try:
            tx = late.transaction()
            await tx.start()
            await late.fetch(Q["stop_jobs"], [jobs[0]])  # takes id N, not committed
            await client.stop_job(jobs[1], "shop-a")  # id N+1, committed
            await _polls_after(client, 3)
            assert feed.queue.qsize() == 0, "N+1 was emitted while N could still commit"
            await tx.commit()
            first, second = await _take(feed, 2)
            assert (first.job_id, second.job_id) == (jobs[0], jobs[1])
            assert second.event_id > first.event_id and first.status == second.status == "cancelled"

            tx = late.transaction()  # an id taken and rolled back: a gap that never fills
            await tx.start()
            await late.fetch(Q["stop_jobs"], [jobs[2]])
            await client.stop_job(jobs[3], "shop-a")
            await _polls_after(client, 3)
            assert feed.queue.qsize() == 0
            await tx.rollback()
            (after_gap,) = await _take(feed, 1)
            assert after_gap.job_id == jobs[3]
        finally:
            await late.close()
        feed.close()
        # Everything the live reader got is what a resuming reader reads from PostgreSQL.
        replay = await client.event_feed("shop-a", after=0)
        got = await _take(replay, 7)
        assert [(e.job_id, e.event) for e in got] == [
            *[(j, "enqueued") for j in jobs], (jobs[0], "cancelled"), (jobs[1], "cancelled"), (jobs[3], "cancelled")]
        assert await replay.get(timeout=0.3) is None
        replay.close()


async def test_concurrent_writers_lose_nothing(settings: Settings, pool: asyncpg.Pool) -> None:
    """Many transactions writing events at once (ids committing in any order): a reader sees each
    event exactly once, in id order, and so does one that resumes half way."""
    async with Client(settings, pool) as client:
        feed = await client.event_feed(None)

        async def enqueue(i: int) -> None:
            for _ in range(5):
                await client.enqueue(f"shop-{i % 3}", keyword_jobs(3))

        await asyncio.gather(*(enqueue(i) for i in range(8)))
        expected = [r["id"] for r in await pool.fetch("SELECT id FROM bq_job_events ORDER BY id")]
        assert len(expected) == 8 * 5 * 3
        got = await _take(feed, len(expected))
        assert [e.event_id for e in got] == expected
        assert await feed.get(timeout=0.5) is None
        feed.close()
        half = expected[len(expected) // 2]
        resumed = await client.event_feed("shop-1", after=half)
        mine = [r["id"] for r in await pool.fetch(
            "SELECT e.id FROM bq_job_events e JOIN bq_jobs j ON j.id = e.job_id "
            "WHERE j.tenant_id = 'shop-1' AND e.id > $1 ORDER BY e.id", half)]
        assert [e.event_id for e in await _take(resumed, len(mine))] == mine
        resumed.close()


async def test_library_iterator_filters_by_tenant_and_batch(settings: Settings, pool: asyncpg.Pool) -> None:
    async with Client(settings, pool) as client:
        first = await client.enqueue("shop-a", keyword_jobs(2))
        with pytest.raises(NotFound):
            await client.event_feed("shop-b", batch_id=first.batch_id)  # another tenant's batch
        seen: list[StreamEvent] = []

        async def follow() -> None:
            async for ev in client.events("shop-a", batch_id=first.batch_id, after=0):
                seen.append(ev)
                if len(seen) == 3:
                    return

        task = asyncio.create_task(follow())
        await client.enqueue("shop-b", keyword_jobs(2))
        await client.enqueue("shop-a", keyword_jobs(1))  # another batch of the same tenant
        await client.stop_batch(first.batch_id, "shop-a")
        await asyncio.wait_for(task, 10)
        assert [(e.event, e.status) for e in seen] == [("enqueued", "queued")] * 2 + [("cancelled", "cancelled")]
        assert {e.batch_id for e in seen} == {first.batch_id} and {e.tenant_id for e in seen} == {"shop-a"}
        assert seen[0].kind == "blog_post" and seen[0].stage == "source" and seen[0].attempt == 0
        assert client._events is not None and client._events.readers == 0  # the reader left with the loop


async def test_statuses_in_the_stream_follow_a_retry(settings: Settings, pool: asyncpg.Pool,
                                                     workers: Callable[..., list[WorkerProcess]]) -> None:
    """A retryable failure shows as `retrying`, then the next attempt runs: every status change
    is an event, with the status after it (a real worker)."""
    s = settings.replace(app="tests.apps_flaky:app")
    async with Client(s, pool, app=flaky_app) as client:
        feed = await client.event_feed("shop-a")
        job = (await client.enqueue("shop-a", [{"kind": "wobbly", "source": {"type": "keyword", "keyword": "x"}}]))
        workers(1, app="tests.apps_flaky:app")
        got = await _take(feed, 6, timeout=30)
        feed.close()
    assert [(e.event, e.status, e.attempt, e.stage) for e in got] == [
        ("enqueued", "queued", 0, "wobble"), ("started", "running", 1, "wobble"),
        ("retry_scheduled", "retrying", 1, "wobble"), ("started", "running", 2, "wobble"),
        ("stage_done", "running", 2, "wobble"), ("done", "done", 2, None)]
    assert {e.job_id for e in got} == {job.jobs[0].id}
    assert got[2].detail is not None and got[2].detail["error"] == "the provider timed out"
