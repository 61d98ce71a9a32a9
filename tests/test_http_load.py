"""The load benchmark's client loop, small and in-process: correctness under concurrency, no timing.

20 clients of 5 tenants enqueue, poll, list and stop for 3 s against the real
app (lifespan and all) while a real worker process runs the jobs; then every
answer must be a non-5xx HTTP answer and every job a client was told about must
be stored and readable by its own tenant, and only by it.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from blogqueue.settings import Settings
from testkit.load import ENDPOINTS, Mix, Recorder, run_clients
from tests.http_fixtures import Api, TokenFactory

TENANTS = 5


async def _listed(http: httpx.AsyncClient, token: str) -> set[str]:
    """Every job id the tenant's token can list, page by page."""
    ids: set[str] = set()
    cursor = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        resp = await http.get("/v1/jobs", params=params, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        ids.update(j["id"] for j in body["jobs"])
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


async def test_client_loop_answers_no_5xx_and_loses_no_job(api: Api, make_token: TokenFactory, settings: Settings,
                                                          pool: asyncpg.Pool, workers) -> None:
    workers(1, offline_latency_ms=5.0)
    tokens = {f"load-{i}": await make_token(f"load-{i}") for i in range(TENANTS)}
    app = await api.app(settings)
    rec = Recorder()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bq.test",
                                 timeout=30) as http:
        await run_clients(http, tokens, clients=20, seconds=3, rec=rec,
                          mix=Mix(bulk_share=0.2, list_share=0.5, stop_share=0.3))

        by = rec.by_endpoint()
        assert all(by[e] for e in ENDPOINTS), {e: len(s) for e, s in by.items()}
        assert [s for s in rec.samples if s.status is None] == [], "transport errors"
        assert rec.count_5xx() == 0, [(s.endpoint, s.status) for s in rec.samples if s.status >= 500]
        # The loop only asks for its own, existing jobs: nothing may be refused.
        assert {s.status for s in by["enqueue"]} == {202}
        assert {s.status for s in by["poll"] + by["list"] + by["stop"]} == {200}
        assert rec.jobs and rec.stopped

        # Stored, under the right tenant, and nothing else was stored.
        rows = await pool.fetch("SELECT id::text, tenant_id FROM bq_jobs")
        assert dict((r["id"], r["tenant_id"]) for r in rows) == rec.jobs

        # Readable through the API by its own tenant, each tenant seeing exactly its own jobs.
        listed = await asyncio.gather(*(_listed(http, tokens[t]) for t in sorted(tokens)))
        for tenant, ids in zip(sorted(tokens), listed, strict=True):
            assert ids == {j for j, t in rec.jobs.items() if t == tenant}, tenant
        some_job, owner = next(iter(rec.jobs.items()))
        other = next(t for t in tokens if t != owner)
        assert (await http.get(f"/v1/jobs/{some_job}",
                               headers={"Authorization": f"Bearer {tokens[other]}"})).status_code == 404
        # A stopped job is cancelled or finished, never still waiting.
        stopped = await pool.fetch("SELECT status FROM bq_jobs WHERE id = ANY($1::uuid[])",
                                   [uuid.UUID(j) for j in rec.stopped])
        assert len(stopped) == len(rec.stopped)
        assert {r["status"] for r in stopped} <= {"cancelled", "done", "failed", "running"}
