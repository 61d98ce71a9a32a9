"""Tenant isolation and admin scope over HTTP: a foreign id is a 404 that reveals nothing."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.http_fixtures import Api, TokenFactory, assert_error, keyword


async def test_tenant_b_cannot_see_or_stop_tenant_a(api: Api, make_token: TokenFactory,
                                                    pool: asyncpg.Pool) -> None:
    a = await api.client(await make_token("shop-a"))
    b = await api.client(await make_token("shop-b"))
    out = (await a.post("/v1/jobs", json={"jobs": keyword(3)})).json()
    job_id, batch_id = out["jobs"][0]["id"], out["batch_id"]
    page = (await a.get("/v1/jobs", params={"limit": 1})).json()
    assert page["next_cursor"]

    missing = "00000000-0000-0000-0000-000000000000"
    for path, method in [(f"/v1/jobs/{job_id}", "GET"), (f"/v1/jobs/{job_id}/stop", "POST"),
                         (f"/v1/batches/{batch_id}", "GET"), (f"/v1/batches/{batch_id}/stop", "POST")]:
        foreign = await b.request(method, path)
        unknown = await b.request(method, path.replace(job_id, missing).replace(batch_id, missing))
        assert_error(foreign, 404, "not_found")
        assert_error(unknown, 404, "not_found")
        # The same answer as for an id that does not exist, apart from echoing the id asked for.
        assert foreign.text.replace(job_id, missing).replace(batch_id, missing) == unknown.text
        assert "shop-a" not in foreign.text

    assert (await b.get("/v1/jobs")).json() == {"jobs": [], "next_cursor": None}
    assert (await b.get("/v1/jobs", params={"batch_id": batch_id})).json()["jobs"] == []
    assert_error(await b.get("/v1/jobs", params={"cursor": page["next_cursor"]}), 404, "not_found", "cursor")
    assert (await b.post("/v1/stop")).json() == {"cancelled": 0, "stopping": 0}
    statuses = await pool.fetch("SELECT DISTINCT status FROM bq_jobs WHERE tenant_id = 'shop-a'")
    assert [r["status"] for r in statuses] == ["queued"]


async def test_admin_sees_every_tenant_and_metrics(api: Api, make_token: TokenFactory) -> None:
    a = await api.client(await make_token("shop-a"))
    admin = await api.client(await make_token("ops", admin=True))
    job_id = (await a.post("/v1/jobs", json=keyword()[0])).json()["jobs"][0]["id"]
    await (await api.client(await make_token("shop-b"))).post("/v1/jobs", json=keyword()[0])

    assert (await admin.get(f"/v1/jobs/{job_id}")).json()["tenant_id"] == "shop-a"
    tenants = {j["tenant_id"] for j in (await admin.get("/v1/jobs")).json()["jobs"]}
    assert tenants == {"shop-a", "shop-b"}
    assert (await admin.get("/v1/metrics")).status_code == 200
    assert (await admin.get("/metrics")).status_code == 200
    assert_error(await a.get("/v1/metrics"), 403, "forbidden")
    assert_error(await a.get("/metrics"), 403, "forbidden")
    stopped = await admin.post(f"/v1/jobs/{job_id}/stop")
    assert stopped.json()["job"]["status"] == "cancelled"


async def test_cursor_paging_while_inserting(api: Api, make_token: TokenFactory) -> None:
    """Pages cover exactly the jobs that existed when paging began, while new ones keep arriving."""
    a = await api.client(await make_token("shop-a"))
    for _ in range(5):
        assert (await a.post("/v1/jobs", json={"jobs": keyword(10)})).status_code == 202
    first = (await a.get("/v1/jobs", params={"limit": 7})).json()
    seen = [j["id"] for j in first["jobs"]]
    cursor = first["next_cursor"]

    async def insert_more() -> None:
        for _ in range(10):
            await a.post("/v1/jobs", json={"jobs": keyword(3)})

    inserter = asyncio.create_task(insert_more())
    while cursor:
        page = (await a.get("/v1/jobs", params={"limit": 7, "cursor": cursor})).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
    await inserter
    assert len(seen) == len(set(seen)) == 50
