"""Metrics over HTTP with real workers: JSON figures and a Prometheus exposition that parses."""

from __future__ import annotations

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.http_fixtures import Api, TokenFactory, keyword


async def test_metrics_json_and_prometheus(api: Api, make_token: TokenFactory, workers, pool: asyncpg.Pool) -> None:
    shop = await api.client(await make_token("shop-a"))
    admin = await api.client(await make_token("ops", admin=True))
    # Future jobs stay queued in the backlog; the rest run to the end on a real worker.
    await shop.post("/v1/jobs", json={"jobs": keyword(3, run_at="2999-01-01T00:00:00Z")})
    await (await api.client(await make_token("shop-b"))).post("/v1/jobs", json={"jobs": keyword(1)})
    await pool.execute("UPDATE bq_jobs SET created_at = now() - interval '30 seconds',"
                       " run_at = now() - interval '30 seconds' WHERE tenant_id = 'shop-b'")
    lagging = (await admin.get("/v1/metrics")).json()
    assert lagging["dispatcher"]["ready"] == 1 and lagging["dispatcher"]["lag_s"] >= 29
    assert lagging["backlog_by_tenant"][0] == {"tenant_id": "shop-a", "backlog": 3, "in_flight": 0}

    await shop.post("/v1/jobs", json={"jobs": keyword(4)})
    workers(1)

    async def settled() -> dict | None:
        m = (await admin.get("/v1/metrics")).json()
        w = m["workers"][0] if m["workers"] else {}
        return m if m["counts"]["done"] == 5 and w.get("jobs_done") == 5 and w.get("in_flight") == 0 else None

    m = await wait_until(settled, timeout=60, what="5 jobs done and a heartbeat")
    assert m["counts"]["queued"] == 3 and m["counts"]["failed"] == 0
    assert m["throughput"]["finished_1m"] == 5 and m["throughput"]["finished_5m"] == 5
    assert m["throughput"]["per_second_1m"] == round(5 / 60, 3)
    assert m["dispatcher"] == {"lag_s": 0.0, "ready": 0}
    w = m["workers"][0]
    assert w["is_leader"] is True and 0 <= w["heartbeat_age_s"] < 10
    assert m["database_pool"]["size"] >= 1 and m["database_pool"]["max"] == api.settings.db_pool_size
    assert m["database_pool"]["waiting"] == 0
    assert m["buckets"] == []

    resp = await admin.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("blogqueue_jobs", (("status", "done"),))] == 5
    assert samples[("blogqueue_tenant_backlog_jobs", (("tenant", "shop-a"),))] == 3
    assert samples[("blogqueue_finished_jobs", (("window", "5m"),))] == 5
    assert samples[("blogqueue_workers", ())] == 1
    assert samples[("blogqueue_worker_jobs_done_total", (("hostname", w["hostname"]), ("worker", w["id"])))] == 5
    assert families["blogqueue_worker_jobs_done"].type == "counter"
    assert ("blogqueue_db_pool_connections", (("state", "max"),)) in samples
    assert "blogqueue_dispatcher_lag_seconds" in families
