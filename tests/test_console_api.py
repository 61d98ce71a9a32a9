"""What the operator console reads and does over the JSON API (DESIGN §12): its figures in
`GET /v1/metrics`, an admin stopping another tenant, the metrics-only token scope, the
finished-by-outcome gauge and the HTTP latency histograms by route in `GET /metrics`."""

from __future__ import annotations

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from blogqueue import tokens
from blogqueue.settings import Settings
from tests.conftest import wait_until
from tests.http_fixtures import Api, TokenFactory, assert_error, keyword
from tests.openapi_contract import check
from tests.test_http_serve import _cli

FUTURE = "2999-01-01T00:00:00Z"


async def test_console_figures_from_real_workers(api: Api, make_token: TokenFactory, workers,
                                                 pool: asyncpg.Pool) -> None:
    shop = await api.client(await make_token("shop-a"))
    other = await api.client(await make_token("shop-b"))
    admin = await api.client(await make_token("ops", admin=True))
    ok = (await shop.post("/v1/jobs", json={"jobs": keyword(3)})).json()
    bad = (await other.post("/v1/jobs", json={"jobs": keyword(2, model="offline:refuse")})).json()
    await shop.post("/v1/jobs", json={"jobs": keyword(2, run_at=FUTURE)})  # stays in the backlog
    workers(1)

    async def settled() -> dict | None:
        m = (await admin.get("/v1/metrics")).json()
        t = {r["tenant_id"]: r for r in m["tenants"]}
        done = t.get("shop-a", {}).get("done_5m") == 3 and t.get("shop-b", {}).get("failed_5m") == 2
        return m if done and m["leader"] is not None else None

    resp = await wait_until(lambda: admin.get("/v1/metrics"), what="metrics")
    check(resp)
    m = await wait_until(settled, timeout=60, what="3 done for shop-a, 2 failed for shop-b")
    t = {r["tenant_id"]: r for r in m["tenants"]}
    a, b = t["shop-a"], t["shop-b"]
    assert (a["backlog"], a["in_flight"], a["failed_5m"], a["cancelled_5m"]) == (2, 0, 0, 0)
    assert (b["backlog"], b["done_5m"]) == (0, 0)
    started = await pool.fetch("SELECT extract(epoch FROM started_at - greatest(created_at, run_at))::float8 AS w "
                               "FROM bq_jobs WHERE tenant_id = 'shop-a' AND started_at IS NOT NULL ORDER BY 1")
    assert len(started) == 3
    assert a["first_start_wait_s"] == pytest.approx(sum(r["w"] for r in started) / 3, abs=0.001)  # the mean
    assert a["oldest_waiting_s"] == 0  # its waiting jobs are scheduled, not ready
    assert m["tenants"][0]["tenant_id"] == "shop-a"  # the largest backlog first

    failures = {f["job_id"]: f for f in m["recent_failures"]}
    assert set(failures) == {j["id"] for j in bad["jobs"]}
    f = failures[bad["jobs"][0]["id"]]
    assert f["tenant_id"] == "shop-b" and f["batch_id"] == bad["batch_id"] and f["kind"] == "blog_post"
    row = await pool.fetchrow("SELECT last_error, error_code FROM bq_jobs WHERE id = $1", f["job_id"])
    assert f["last_error"] == row["last_error"] and f["last_error"] and f["error_code"] == row["error_code"]

    batches = {r["batch_id"]: r for r in m["recent_batches"]}
    assert batches[ok["batch_id"]]["counts"] == {"queued": 0, "running": 0, "retrying": 0, "done": 3,
                                                 "failed": 0, "cancelled": 0}
    assert batches[ok["batch_id"]]["job_count"] == 3 and batches[bad["batch_id"]]["counts"]["failed"] == 2
    assert [r["batch_id"] for r in m["recent_batches"]][-1] == ok["batch_id"]  # newest first

    # This test's queue only: the database keeps other tests' lease rows (one per queue name).
    leader = await pool.fetchrow("SELECT holder, epoch FROM bq_leader WHERE queue_name = $1", api.settings.queue_name)
    assert m["leader"]["worker_id"] == leader["holder"] == m["workers"][0]["id"]
    assert m["leader"]["epoch"] == leader["epoch"] and m["leader"]["lease_left_s"] >= 0
    assert sorted((r["outcome"], r["n"]) for r in m["finished_5m"]) == [("done", 3), ("failed", 2)]

    prom = (await admin.get("/metrics")).text
    by = {(s.name, tuple(sorted(s.labels.items()))): s.value
          for fam in text_string_to_metric_families(prom) for s in fam.samples}
    assert by[("blogqueue_jobs_finished_5m", (("kind", "blog_post"), ("outcome", "done")))] == 3
    assert by[("blogqueue_jobs_finished_5m", (("kind", "blog_post"), ("outcome", "failed")))] == 2
    assert by[("blogqueue_jobs_finished_5m", (("kind", "blog_post"), ("outcome", "cancelled")))] == 0


async def test_latency_histograms_are_labelled_by_route_template(api: Api, make_token: TokenFactory) -> None:
    admin = await api.client(await make_token("ops", admin=True))
    job = (await admin.post("/v1/jobs", json=keyword(1)[0])).json()["jobs"][0]["id"]
    for _ in range(3):
        assert (await admin.get(f"/v1/jobs/{job}")).status_code == 200
    assert (await admin.get("/v1/jobs/not-a-job")).status_code == 404
    assert (await admin.get("/no/such/path")).status_code == 404
    text = (await admin.get("/metrics")).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    hist = fams["blogqueue_http_request_duration_seconds"]
    assert hist.type == "histogram"
    counts = {(s.labels["method"], s.labels["route"], s.labels["status"]): s.value
              for s in hist.samples if s.name.endswith("_count")}
    assert counts[("GET", "/v1/jobs/{job_id}", "200")] == 3
    assert counts[("GET", "/v1/jobs/{job_id}", "404")] == 1
    assert counts[("POST", "/v1/jobs", "202")] == 1
    assert counts[("GET", "unmatched", "404")] == 1
    assert not any(job in route for _, route, _ in counts)  # never a raw path
    buckets = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["route"] == "/v1/jobs/{job_id}"
               and s.labels["status"] == "200"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 3


async def test_admin_stops_another_tenant_and_a_tenant_cannot(api: Api, make_token: TokenFactory,
                                                                pool: asyncpg.Pool) -> None:
    shop = await api.client(await make_token("shop-a"))
    other = await api.client(await make_token("shop-b"))
    admin = await api.client(await make_token("ops", admin=True))
    await shop.post("/v1/jobs", json={"jobs": keyword(3, run_at=FUTURE)})
    await other.post("/v1/jobs", json={"jobs": keyword(2, run_at=FUTURE)})

    async def statuses() -> dict[str, list[str]]:
        rows = await pool.fetch("SELECT tenant_id, status FROM bq_jobs ORDER BY tenant_id, status")
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r["tenant_id"], []).append(r["status"])
        return out

    before = await statuses()
    refused = await other.post("/v1/stop", params={"tenant": "shop-a"})
    check(refused)
    assert_error(refused, 403, "forbidden")
    assert_error(await admin.post("/v1/stop", params={"tenant": "shop-a", "x": "1"}), 422, "invalid_input", "x")
    assert_error(await admin.post("/v1/stop", params={"tenant": ""}), 422, "invalid_input", "tenant")
    assert await statuses() == before  # refusals change nothing

    stopped = await admin.post("/v1/stop", params={"tenant": "shop-a"})
    check(stopped)
    assert stopped.json() == {"cancelled": 3, "stopping": 0}
    assert await statuses() == {"shop-a": ["cancelled"] * 3, "shop-b": ["scheduled"] * 2}
    own = await other.post("/v1/stop", params={"tenant": "shop-b"})  # naming one's own tenant is fine
    assert own.json() == {"cancelled": 2, "stopping": 0}


async def test_a_metrics_token_reads_metrics_and_nothing_else(api: Api, make_token: TokenFactory,
                                                              settings: Settings, pool: asyncpg.Pool) -> None:
    made = _cli(settings, "token", "create", "--tenant", "ops", "--metrics")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert "(metrics)" in made.stderr
    row = await pool.fetchrow("SELECT scope, is_admin FROM bq_tokens WHERE id = $1", token[3:15])
    assert (row["scope"], row["is_admin"]) == ("metrics", False)
    both = _cli(settings, "token", "create", "--tenant", "ops", "--metrics", "--admin")
    assert both.returncode != 0 and "not allowed with" in both.stderr

    shop_token = await make_token("shop-a")
    shop = await api.client(shop_token)
    job = (await shop.post("/v1/jobs", json={"jobs": keyword(1, run_at=FUTURE)})).json()
    scraper = await api.client(token)
    prom = await scraper.get("/metrics")
    check(prom)
    assert prom.status_code == 200 and "blogqueue_jobs" in prom.text
    job_id, batch_id = job["jobs"][0]["id"], job["batch_id"]
    for method, path in [("GET", "/v1/metrics"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"),
                         ("GET", f"/v1/jobs/{job_id}"), ("POST", f"/v1/jobs/{job_id}/stop"),
                         ("GET", f"/v1/batches/{batch_id}"), ("POST", f"/v1/batches/{batch_id}/stop"),
                         ("POST", "/v1/stop"), ("GET", "/v1/credits"), ("GET", "/v1/ai-settings"),
                         ("PUT", "/v1/ai-settings"), ("GET", "/v1/wix-installation")]:
        resp = await scraper.request(method, path, json={} if method != "GET" else None)
        assert_error(resp, 403, "forbidden")
        assert token not in resp.text
        check(resp)
    assert await pool.fetchval("SELECT status FROM bq_jobs WHERE id = $1", job_id) == "scheduled"
    assert_error(await shop.get("/metrics"), 403, "forbidden")  # a tenant token cannot scrape
    assert (await (await api.client(await make_token("ops", admin=True))).get("/metrics")).status_code == 200
    await pool.execute("UPDATE bq_tokens SET revoked_at = now() WHERE id = $1", token[3:15])
    # Verified tokens are cached per process: refused within BLOGQUEUE_TOKEN_CACHE_SECONDS (0.5 s here).

    async def refused() -> bool:
        return (await scraper.get("/metrics")).status_code == 401

    await wait_until(refused, timeout=api.settings.token_cache_seconds + 2, what="the revoked token to be refused")
    assert_error(await scraper.get("/metrics"), 401, "unauthorized")


async def test_token_scopes_in_the_library(pool: asyncpg.Pool) -> None:
    token, row = await tokens.create(pool, "ops", scope="metrics")
    assert row["scope"] == "metrics" and row["is_admin"] is False
    p = await tokens.verify(pool, token)
    assert p is not None and p.token_scope == "metrics" and not p.is_admin and p.scope == "ops"
    admin, row = await tokens.create(pool, "ops", is_admin=True)
    assert row["scope"] == "admin" and (await tokens.verify(pool, admin)).token_scope == "admin"
    for bad in ({"scope": "root"}, {"scope": "metrics", "is_admin": True}):
        try:
            await tokens.create(pool, "ops", **bad)  # type: ignore[arg-type]
        except Exception as exc:
            assert getattr(exc, "code", None) == "invalid_input"
        else:
            raise AssertionError(f"{bad} was accepted")
    try:  # the table refuses a scope that disagrees with is_admin, whatever writes it
        await pool.execute("UPDATE bq_tokens SET is_admin = true WHERE scope = 'metrics'")
    except asyncpg.CheckViolationError:
        pass
    else:
        raise AssertionError("is_admin and scope disagreed")


async def test_the_console_page_is_served_from_the_package_and_loads_nothing_else(api: Api) -> None:
    anon = await api.client()
    page = await anon.get("/ui")
    check(page)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and page.headers["referrer-policy"] == "no-referrer"
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        asset = await anon.get(f"/ui/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert "http://" not in asset.text and "https://" not in asset.text  # nothing from another origin
    assert "http://" not in page.text and "https://" not in page.text
    js = (await anon.get("/ui/console.js")).text
    assert "sessionStorage" in js and "localStorage" not in js and "innerHTML" not in js
    for bad in ("/ui/index.html.bak", "/ui/__init__.py", "/ui/..%2F__init__.py"):
        resp = await anon.get(bad)
        assert_error(resp, 404, "not_found")
