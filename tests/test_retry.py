"""Batch retry (`Client.retry_batch`, `POST /v1/batches/{id}/retry`, `blogqueue retry`) with a real
worker: failed jobs run again from their first unsaved stage, tenant-scoped, within the backlog
limits and the credits."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from blogqueue.client import Client
from blogqueue.errors import BacklogFull, InsufficientCredits, NotFound
from blogqueue.settings import Settings
from testkit.processes import WorkerProcess
from tests.apps_flaky import app as flaky_app
from tests.conftest import read_calls, wait_until
from tests.http_fixtures import Api, TokenFactory
from tests.test_http_serve import _cli

APP = "tests.apps_flaky:app"


def _jobs(n: int, flag: Path | None, **extra: object) -> list[dict[str, object]]:
    return [{"kind": "flaky", "source": {"type": "keyword", "keyword": f"topic {i}"},
             "metadata": {"fail_while": str(flag)} if flag else {}, **extra} for i in range(n)]


async def _statuses(pool: asyncpg.Pool, batch_id: str) -> Counter[str]:
    rows = await pool.fetch("SELECT status FROM bq_jobs WHERE batch_id = $1", batch_id)
    return Counter(r["status"] for r in rows)


async def test_retry_reruns_a_batchs_failed_jobs_from_the_first_unsaved_stage(
        settings: Settings, pool: asyncpg.Pool, workers: Callable[..., list[WorkerProcess]], api: Api,
        make_token: TokenFactory, tmp_path: Path) -> None:
    s = settings.replace(app=APP, credits_enabled=True)
    refuse = tmp_path / "refuse"
    refuse.touch()
    async with Client(s, pool, app=flaky_app) as client:
        await client.grant_credits("shop-a", 100)
        made = await client.enqueue("shop-a", _jobs(3, refuse) + _jobs(1, None))
        batch = made.batch_id
        workers(1, app=APP)
        await wait_until(lambda: _finished(pool, batch, 4), timeout=60, what="the batch to finish")
        assert await _statuses(pool, batch) == {"failed": 3, "done": 1}
        assert (await client.credit_balance("shop-a"))["balance"] == 97  # 3 released, 1 charged
        failed = {str(r["id"]) for r in await pool.fetch(
            "SELECT id FROM bq_jobs WHERE batch_id = $1 AND status = 'failed'", batch)}

        # Refusals change nothing: another tenant's batch, a full backlog, too few credits.
        with pytest.raises(NotFound):
            await client.retry_batch(batch, "shop-b")
        with pytest.raises(BacklogFull):
            await Client(s.replace(max_tenant_backlog=2), pool, app=flaky_app).retry_batch(batch, "shop-a")
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        held = await client.enqueue("shop-a", _jobs(30, None, run_at=later))  # reserves 90 of 97
        with pytest.raises(InsufficientCredits):
            await client.retry_batch(batch, "shop-a")
        await client.stop_batch(held.batch_id, "shop-a")
        assert await _statuses(pool, batch) == {"failed": 3, "done": 1}

        # Through HTTP, by the batch's tenant: the failed jobs, and only those, go again.
        shop_a = await api.client(await make_token("shop-a"), settings=s)
        shop_b = await api.client(await make_token("shop-b"), settings=s)
        assert (await shop_b.post(f"/v1/batches/{batch}/retry")).status_code == 404
        refuse.unlink()
        answer = await shop_a.post(f"/v1/batches/{batch}/retry")
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["batch_id"] == batch and body["retried"] == 3 and set(body["job_ids"]) == failed
        await wait_until(lambda: _finished(pool, batch, 4), timeout=60, what="the retried jobs to finish")
        assert await _statuses(pool, batch) == {"done": 4}

        # The saved stage (a paid call) was not made again: one draft call per job, in its first attempt.
        drafts = Counter(c["job"] for c in read_calls(s) if c["stage"] == "draft")
        assert {j: drafts[j] for j in failed} == {j: 1 for j in failed}
        for job_id in failed:
            job = await client.get_job(job_id, "shop-a")
            assert job.attempts == 2 and job.failures == 0 and job.last_error is None
            events = [(e.event, e.attempt) for e in job.events]
            assert events[-4:] == [("retried", 1), ("started", 2), ("stage_done", 2), ("done", 2)]
            assert ("failed", 1) in events and [e.event for e in job.events].count("stage_done") == 2
            retried = next(e for e in job.events if e.event == "retried")
            assert retried.detail == {"round": 1, "previous_error_code": "publish_refused", "previous_failures": 1}
        stream = await client.event_feed("shop-a", batch_id=batch, after=0)
        replay = [await stream.get(timeout=5) for _ in range(6 * 3 + 4)]
        stream.close()
        assert {(e.event, e.status, e.stage) for e in replay if e and e.event == "retried"} == {
            ("retried", "queued", "publish")}
        # Charged once each; the failed round was released (the fixture checks the whole ledger after).
        assert (await client.credit_balance("shop-a"))["balance"] == 88
        assert (await client.retry_batch(batch)).retried == 0  # nothing failed any more

    cli = await asyncio.to_thread(_cli, s, "retry", batch, "--tenant", "shop-b")
    assert cli.returncode == 1 and json.loads(cli.stderr)["error"]["code"] == "not_found"
    cli = await asyncio.to_thread(_cli, s, "retry", batch, "--tenant", "shop-a")
    assert cli.returncode == 0 and json.loads(cli.stdout) == {"batch_id": batch, "retried": 0, "job_ids": []}


async def _finished(pool: asyncpg.Pool, batch: str, n: int) -> bool:
    done = await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE batch_id = $1 "
                               "AND status IN ('done', 'failed', 'cancelled')", batch)
    return bool(done == n)
