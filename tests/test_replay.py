"""Per-call replay (blogqueue/replay.py): a stage's paid calls are not paid again when it reruns."""

from __future__ import annotations

from typing import Any

import asyncpg

import blogqueue
from blogqueue.settings import Settings
from blogqueue.testing.fake_openai import FakeOpenAI
from tests import apps
from tests.conftest import wait_until

KEY = "sk-replay-platform-key-123456"


def _argv(app: str) -> tuple[str, ...]:
    return ("-m", "blogqueue.cli", "worker", "--app", app)


async def _finished(client: blogqueue.Client, job_id: str) -> blogqueue.JobDetail:
    async def done() -> blogqueue.JobDetail | None:
        job = await client.get_job(job_id)
        return job if job.status in ("done", "failed", "cancelled") else None

    return await wait_until(done, timeout=60)


async def test_a_worker_killed_during_the_second_call_does_not_pay_the_first_again(
        settings: Settings, pool: asyncpg.Pool, workers: Any) -> None:
    client = blogqueue.Client(settings, pool, app=apps.two_call_app)
    # Each call takes 0.8 s at the provider: long enough to kill the worker during the second.
    with FakeOpenAI(latency_ms=800) as fake:
        env = {"openai_base_url": fake.base_url, "openai_api_key": KEY}
        [first_worker] = workers(1, argv=_argv("tests.apps:two_call_app"), **env)
        out = await client.enqueue("shop-a", {"kind": "two_calls", "model": "openai:gpt-4o-mini",
                                              "source": {"type": "keyword", "keyword": "kettles"}})
        job_id = out.jobs[0].id

        # Call 1's answer is written just before call 2 is sent: then call 2 is under way.
        async def first_call_kept() -> bool:
            return bool(await pool.fetchval(
                "SELECT count(*) FROM bq_call_responses WHERE job_id = $1 AND call_no = 1", job_id))

        await wait_until(first_call_kept, timeout=30)
        first_worker.kill()
        workers(1, argv=_argv("tests.apps:two_call_app"), **env)
        job = await _finished(client, job_id)
        subjects = [c["subject"] for c in fake.calls if c["path"] == "/v1/chat/completions"]
    assert job.status == "done", job
    assert job.attempts >= 2  # it did run again
    assert subjects.count("first kettles") == 1, subjects  # paid once, replayed on the second attempt
    assert subjects.count("second kettles") >= 1, subjects
    assert job.result is not None and job.result["both"]["first"].startswith("# A fake post about first kettles")
