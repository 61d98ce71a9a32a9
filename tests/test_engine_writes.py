"""The engine's merged writes (issue #14), fenced like single ones: checked against PostgreSQL.

Batched claims, several checkpoints in one statement, the last checkpoint written by the
finish: each row is decided by its own attempt and state, and a stale attempt writes nothing.
"""

import uuid
from typing import Any

from blogqueue.db import Q

from .conftest import keyword_jobs


async def jobs_in(client: Any, pool: Any, n: int, status: str, attempt: int = 1) -> list[uuid.UUID]:
    out = await client.enqueue("shop-w", keyword_jobs(n))
    ids = [uuid.UUID(j.id) for j in out.jobs]
    await pool.execute("UPDATE bq_jobs SET status = $2, attempt = $3, worker_id = 'w', lease_until = "
                       "now() + interval '30 seconds' WHERE id = ANY($1::uuid[])", ids, status, attempt)
    return ids


async def events(pool: Any, jid: uuid.UUID) -> list[tuple[str, Any]]:
    rows = await pool.fetch("SELECT event, detail FROM bq_job_events WHERE job_id = $1 AND event <> 'enqueued' "
                            "ORDER BY id", jid)
    return [(r["event"], r["detail"]) for r in rows]


async def stages(pool: Any, jid: uuid.UUID) -> dict[str, Any]:
    rows = await pool.fetch("SELECT stage, output FROM bq_job_stages WHERE job_id = $1", jid)
    return {r["stage"]: r["output"] for r in rows}


async def finish(pool: Any, jid: uuid.UUID, attempt: int, status: str, names: list[str],
                 outputs: list[dict[str, Any]], following: str | None = None) -> Any:
    return await pool.fetchrow(Q["finish_attempt"], jid, attempt, status, 0, 0.0, None, None,
                               {"ok": True} if status == "done" else None, status, None, names, outputs, following)


async def test_a_batch_claim_takes_only_the_attempts_it_may(client, pool):
    fresh = await jobs_in(client, pool, 2, "dispatched", attempt=1)
    (newer,) = await jobs_in(client, pool, 1, "dispatched", attempt=2)
    (running,) = await jobs_in(client, pool, 1, "running", attempt=1)
    ids = [*fresh, newer, running]
    rows = await pool.fetch(Q["claim_attempts"], ids, [1, 1, 1, 1], "w2", 30.0)
    # The stale attempt (the job is at attempt 2) and the already running one are left alone.
    assert sorted(r["id"] for r in rows) == sorted(fresh)
    statuses = {r["id"]: (r["status"], r["worker_id"]) for r in await pool.fetch(
        "SELECT id, status, worker_id FROM bq_jobs WHERE id = ANY($1::uuid[])", ids)}
    assert statuses == {fresh[0]: ("running", "w2"), fresh[1]: ("running", "w2"),
                        newer: ("dispatched", "w"), running: ("running", "w")}
    assert [e for e, _ in await events(pool, fresh[0])] == ["started"]
    assert await events(pool, newer) == [] and await events(pool, running) == []
    # Claimed once: the same batch again claims nothing.
    assert await pool.fetch(Q["claim_attempts"], fresh, [1, 1], "w3", 30.0) == []


async def test_several_checkpoints_in_one_write_keep_stage_order(client, pool):
    (jid,) = await jobs_in(client, pool, 1, "running")
    owned = await pool.fetchval(Q["save_stages"], jid, 1, ["source", "content"], [{"s": 1}, {"c": 2}], "image")
    assert owned == 1
    assert await stages(pool, jid) == {"source": {"s": 1}, "content": {"c": 2}}
    assert await events(pool, jid) == [("stage_done", {"stage": "source"}), ("stage_done", {"stage": "content"})]
    assert await pool.fetchval("SELECT stage FROM bq_jobs WHERE id = $1", jid) == "image"


async def test_a_stale_attempts_checkpoints_write_nothing(client, pool):
    (jid,) = await jobs_in(client, pool, 1, "running", attempt=2)
    assert await pool.fetchval(Q["save_stages"], jid, 1, ["source", "content"], [{}, {}], "image") == 0
    assert await stages(pool, jid) == {} and await events(pool, jid) == []


async def test_the_finish_writes_the_last_checkpoints_then_its_event(client, pool):
    (jid,) = await jobs_in(client, pool, 1, "running")
    row = await finish(pool, jid, 1, "done", ["image", "publish"], [{"url": "u"}, {"kept": True}])
    assert row["status"] == "done"
    assert await stages(pool, jid) == {"image": {"url": "u"}, "publish": {"kept": True}}
    assert await events(pool, jid) == [("stage_done", {"stage": "image"}), ("stage_done", {"stage": "publish"}),
                                       ("done", None)]
    job = await pool.fetchrow("SELECT status, stage, result FROM bq_jobs WHERE id = $1", jid)
    assert (job["status"], job["stage"], job["result"]) == ("done", None, {"ok": True})


async def test_a_stale_attempts_final_checkpoint_and_finish_write_nothing(client, pool):
    # The job was reaped and handed out again: attempt 1's merged checkpoint + finish is refused whole.
    (jid,) = await jobs_in(client, pool, 1, "running", attempt=2)
    assert await finish(pool, jid, 1, "done", ["publish"], [{"kept": True}]) is None
    assert await stages(pool, jid) == {} and await events(pool, jid) == []
    job = await pool.fetchrow("SELECT status, result, finished_at FROM bq_jobs WHERE id = $1", jid)
    assert (job["status"], job["result"], job["finished_at"]) == ("running", None, None)
    # Same attempt number, but no longer running (the lease reaper put it back): refused too.
    (queued,) = await jobs_in(client, pool, 1, "queued", attempt=1)
    assert await finish(pool, queued, 1, "done", ["publish"], [{"kept": True}]) is None
    assert await stages(pool, queued) == {}


async def test_a_failed_attempt_keeps_the_free_stages_it_finished(client, pool):
    # source finished (no paid call, not written yet) and content failed: the retry's finish
    # saves source and shows content as the stage a retry resumes at.
    (jid,) = await jobs_in(client, pool, 1, "running")
    row = await finish(pool, jid, 1, "scheduled", ["source"], [{"topic": "t"}], following="content")
    assert row["status"] == "scheduled"
    assert await stages(pool, jid) == {"source": {"topic": "t"}}
    assert [e for e, _ in await events(pool, jid)] == ["stage_done", "scheduled"]
    assert await pool.fetchval("SELECT stage FROM bq_jobs WHERE id = $1", jid) == "content"


async def test_claims_started_together_share_one_statement_and_a_duplicate_gets_nothing(client, pool):
    import asyncio

    from blogqueue.worker import Claims

    ids = await jobs_in(client, pool, 3, "dispatched")
    claims = Claims(pool, "w-batch", 30.0)
    # A late arq re-run of the first attempt arrives beside it: only one of the two may run it.
    got = await asyncio.gather(*(claims.claim(i, 1) for i in [*ids, ids[0]]))
    assert claims.statements == 1
    assert [g is not None for g in got] == [True, True, True, False]
    assert [g["id"] for g in got[:3]] == ids


async def test_grouped_checkpoints_and_finishes_are_fenced_row_by_row(client, pool):
    import asyncio

    from blogqueue.worker import Writes

    ok = await jobs_in(client, pool, 3, "running")
    (stale,) = await jobs_in(client, pool, 1, "running", attempt=2)
    writes = Writes(pool)
    # The checkpoints of four attempts made at once: one write; the stale attempt's row is refused.
    saved = await asyncio.gather(*(writes.save_stages(j, 1, ["source"], [{"s": i}], "content")
                                   for i, j in enumerate([*ok, stale])))
    assert saved == [True, True, True, False] and writes.checkpoints.statements == 1
    assert await stages(pool, ok[1]) == {"source": {"s": 1}}
    assert await stages(pool, stale) == {} and await events(pool, stale) == []
    rows = await asyncio.gather(*(writes.finish(j, 1, "done", 0, 0.0, None, None, {"ok": True}, "done", None,
                                                ["content"], [{"c": 1}], None) for j in [*ok, stale]))
    assert [r["id"] if r else None for r in rows] == [*ok, None] and writes.finishes.statements == 1
    assert await stages(pool, ok[2]) == {"source": {"s": 2}, "content": {"c": 1}}
    assert [e for e, _ in await events(pool, ok[0])] == ["stage_done", "stage_done", "done"]
    job = await pool.fetchrow("SELECT status, result, attempt, finished_at FROM bq_jobs WHERE id = $1", stale)
    assert (job["status"], job["result"], job["attempt"], job["finished_at"]) == ("running", None, 2, None)


async def test_two_finishes_of_one_attempt_never_share_a_write(client, pool):
    import asyncio

    from blogqueue.worker import Writes

    (jid,) = await jobs_in(client, pool, 1, "running")
    writes = Writes(pool)
    first, second = await asyncio.gather(*(writes.finish(jid, 1, status, 0, 0.0, None, None, None, status, None,
                                                         [], [], None) for status in ("done", "failed")))
    # The second waits for the next write and finds the attempt no longer running.
    assert first is not None and first["status"] == "done" and second is None
    assert writes.finishes.statements == 2
    assert [e for e, _ in await events(pool, jid)] == ["done"]
