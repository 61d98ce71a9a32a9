"""The job endpoints through the real app, against real PostgreSQL."""

from __future__ import annotations

import asyncpg
import httpx

from blogqueue.settings import Settings
from tests.conftest import wait_until
from tests.http_fixtures import Api, TokenFactory, assert_error, keyword


async def count_rows(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow("SELECT (SELECT count(*) FROM bq_jobs) AS j, (SELECT count(*) FROM bq_batches) AS b,"
                              " (SELECT count(*) FROM bq_job_events) AS e")
    return row["j"], row["b"], row["e"]


async def test_enqueue_read_list_stop(api: Api, make_token: TokenFactory, pool: asyncpg.Pool) -> None:
    c = await api.client(await make_token("shop-a", user="u1"))
    resp = await c.post("/v1/jobs", json={**keyword()[0], "metadata": {"ref": 7}, "priority": 5})
    assert resp.status_code == 202, resp.text
    out = resp.json()
    job_id, batch_id = out["jobs"][0]["id"], out["batch_id"]
    assert out["jobs"][0]["status"] == "queued" and "estimated_wait_s" in out

    job = (await c.get(f"/v1/jobs/{job_id}")).json()
    assert job["id"] == job_id and job["tenant_id"] == "shop-a" and job["metadata"] == {"ref": 7}
    assert job["priority"] == 5 and job["status"] == "queued" and job["events"][0]["event"] == "enqueued"
    assert await pool.fetchval("SELECT user_id FROM bq_jobs WHERE id = $1::uuid", job_id) == "u1"

    many = await c.post("/v1/jobs", json={"jobs": keyword(3)})
    assert many.status_code == 202 and len(many.json()["jobs"]) == 3
    listed = (await c.get("/v1/jobs", params={"limit": 10})).json()
    assert [j["id"] for j in listed["jobs"]][-1] == job_id and len(listed["jobs"]) == 4
    assert listed["next_cursor"] is None
    only = (await c.get("/v1/jobs", params={"batch_id": batch_id})).json()
    assert [j["id"] for j in only["jobs"]] == [job_id]

    batch = (await c.get(f"/v1/batches/{batch_id}")).json()
    assert batch["total"] == 1 and batch["counts"]["queued"] == 1 and not batch["finished"]

    stopped = await c.post(f"/v1/jobs/{job_id}/stop")
    assert stopped.status_code == 200 and stopped.json()["cancelled"] == 1
    assert stopped.json()["job"]["status"] == "cancelled"
    again = (await c.post(f"/v1/jobs/{job_id}/stop")).json()
    assert again["cancelled"] == 0 and again["job"]["status"] == "cancelled"

    b2 = many.json()["batch_id"]
    assert (await c.post(f"/v1/batches/{b2}/stop")).json() == {"cancelled": 3, "stopping": 0}
    assert (await c.get(f"/v1/batches/{b2}")).json()["counts"]["cancelled"] == 3

    await c.post("/v1/jobs", json={"jobs": keyword(2)})
    assert (await c.post("/v1/stop")).json() == {"cancelled": 2, "stopping": 0}
    assert (await c.get("/v1/jobs", params={"status": "queued"})).json()["jobs"] == []


async def test_idempotency_replay_and_conflict(api: Api, make_token: TokenFactory, pool: asyncpg.Pool) -> None:
    c = await api.client(await make_token("shop-a"))
    first = await c.post("/v1/jobs", json={**keyword()[0], "idempotency_key": "k1"})
    replay = await c.post("/v1/jobs", json={**keyword()[0], "idempotency_key": "k1"})
    assert replay.status_code == 202 and replay.json()["jobs"][0]["replayed"] is True
    assert replay.json()["jobs"][0]["id"] == first.json()["jobs"][0]["id"]
    before = await count_rows(pool)
    conflict = await c.post("/v1/jobs", json={"jobs": [*keyword(2), {**keyword()[0], "idempotency_key": "k1",
                                                                      "priority": 9}]})
    err = assert_error(conflict, 409, "idempotency_conflict")
    assert err["details"]["idempotency_key"] == "k1"
    assert await count_rows(pool) == before


async def test_client_errors_change_nothing(api: Api, make_token: TokenFactory, pool: asyncpg.Pool) -> None:
    c = await api.client(await make_token("shop-a"))
    before = await count_rows(pool)
    assert_error(await c.post("/v1/jobs", content=b'{"source": '), 400, "malformed_json")
    assert_error(await c.post("/v1/jobs", content=b""), 400, "malformed_json")
    assert_error(await c.post("/v1/jobs", content=b"\xff\xfe"), 400, "malformed_json")
    assert_error(await c.post("/v1/jobs", json={**keyword()[0], "colour": "red"}), 422, "invalid_input",
                 "job.colour")
    assert_error(await c.post("/v1/jobs", json={"jobs": keyword(2), "extra": 1}), 422, "invalid_input", "extra")
    assert_error(await c.post("/v1/jobs", json={"jobs": {"a": 1}}), 422, "invalid_input", "jobs")
    assert_error(await c.post("/v1/jobs", json={"jobs": []}), 422, "invalid_input", "jobs")
    assert_error(await c.post("/v1/jobs", json=[1, 2]), 422, "invalid_input", "body")
    assert_error(await c.post("/v1/jobs", json={"source": {"type": "keyword", "keyword": ""}}), 422,
                 "invalid_input", "job.source")
    assert_error(await c.post("/v1/jobs", json={"source": {"type": "keyword", "keyword": "a\x00b"}}), 422,
                 "invalid_input", "job.source.keyword")
    assert_error(await c.post("/v1/jobs", content=b'{"source": {"type": "keyword", "keyword": "t"},'
                              b' "metadata": {"k": "\\ud800"}}'), 422, "invalid_input", "job.metadata.k")
    deep: dict = {}
    for _ in range(40):
        deep = {"x": deep}
    assert_error(await c.post("/v1/jobs", json={**keyword()[0], "metadata": deep}), 422, "invalid_input", "body")
    assert_error(await c.post("/v1/jobs", content=b"[" * 100_000 + b"]" * 100_000), 422, "invalid_input", "body")
    assert_error(await c.get("/v1/jobs", params={"limit": "x"}), 422, "invalid_input", "limit")
    assert_error(await c.get("/v1/jobs", params={"limit": 0}), 422, "invalid_input", "limit")
    assert_error(await c.get("/v1/jobs", params={"status": "zzz"}), 422, "invalid_input", "status")
    assert_error(await c.get("/v1/jobs", params={"sort": "asc"}), 422, "invalid_input", "sort")
    assert_error(await c.get("/v1/jobs", params={"cursor": "garbage"}), 404, "not_found", "cursor")
    assert_error(await c.get("/v1/jobs/not-a-uuid"), 404, "not_found")
    assert_error(await c.get("/v1/jobs/00000000-0000-0000-0000-000000000000"), 404, "not_found")
    assert_error(await c.post("/v1/jobs/00000000-0000-0000-0000-000000000000/stop"), 404, "not_found")
    assert_error(await c.get("/v1/batches/00000000-0000-0000-0000-000000000000"), 404, "not_found")
    assert_error(await c.post("/v1/batches/nope/stop"), 404, "not_found")
    assert_error(await c.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await c.delete("/v1/jobs"), 405, "method_not_allowed")
    assert await count_rows(pool) == before


async def test_body_too_large(api: Api, make_token: TokenFactory, settings: Settings, pool: asyncpg.Pool) -> None:
    c = await api.client(await make_token("shop-a"), settings=settings.replace(max_body_bytes=4096))
    big = {"jobs": keyword(200)}
    err = assert_error(await c.post("/v1/jobs", json=big), 413, "body_too_large")
    assert err["details"]["limit"] == 4096

    async def chunked():  # no Content-Length: the cap holds while streaming
        for _ in range(10):
            yield b" " * 1000
    assert_error(await c.post("/v1/jobs", content=chunked()), 413, "body_too_large")
    assert await count_rows(pool) == (0, 0, 0)
    assert (await c.post("/v1/jobs", json={"jobs": keyword(3)})).status_code == 202


async def test_auth(api: Api, make_token: TokenFactory, pool: asyncpg.Pool) -> None:
    from blogqueue import tokens

    anon = await api.client()
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("POST", "/v1/stop"),
                         ("GET", "/v1/batches/x"), ("GET", "/v1/metrics"), ("GET", "/metrics")]:
        resp = await anon.request(method, path)
        assert_error(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"].startswith("Bearer")
    token = await make_token("shop-a")
    for header in ("Basic abc", "Bearer", f"Token {token}", "Bearer bq_000000000000_" + "x" * 43,
                   f"Bearer {token[:-1]}{'A' if token[-1] != 'A' else 'B'}"):
        resp = await anon.get("/v1/jobs", headers={"Authorization": header})
        assert_error(resp, 401, "unauthorized")
        assert token not in resp.text
    good = await api.client(token)
    assert (await good.get("/v1/jobs")).status_code == 200
    await tokens.revoke(pool, token.split("_")[1])
    # Verified tokens are cached per process: refused within BLOGQUEUE_TOKEN_CACHE_SECONDS (0.5 s here).
    await wait_until(lambda: _refused(good), timeout=api.settings.token_cache_seconds + 2,
                     what="the revoked token to be refused")
    assert_error(await good.get("/v1/jobs"), 401, "unauthorized")


async def _refused(http: httpx.AsyncClient) -> bool:
    return (await http.get("/v1/jobs")).status_code == 401


async def test_bulk_enqueue_is_atomic(api: Api, make_token: TokenFactory, pool: asyncpg.Pool) -> None:
    c = await api.client(await make_token("shop-a"))
    jobs = keyword(1000)
    jobs[537] = {"source": {"type": "keyword", "keyword": "fine"}, "priority": "high"}
    err = assert_error(await c.post("/v1/jobs", json={"jobs": jobs}), 422, "invalid_input", "jobs[537].priority")
    assert "jobs[537].priority" in err["message"]
    assert await count_rows(pool) == (0, 0, 0)
    jobs[537] = keyword()[0]
    ok = await c.post("/v1/jobs", json={"jobs": jobs})
    assert ok.status_code == 202 and len(ok.json()["jobs"]) == 1000
    assert (await count_rows(pool))[:2] == (1000, 1)


async def test_batch_size_bounded(api: Api, make_token: TokenFactory, settings: Settings, pool: asyncpg.Pool) -> None:
    c = await api.client(await make_token("shop-a"), settings=settings.replace(max_batch_size=10))
    err = assert_error(await c.post("/v1/jobs", json={"jobs": keyword(11)}), 422, "invalid_input", "jobs")
    assert err["details"]["limit"] == 10
    assert await count_rows(pool) == (0, 0, 0)


async def test_backlog_full_answers_429_with_retry_after(api: Api, make_token: TokenFactory, settings: Settings,
                                                         pool: asyncpg.Pool) -> None:
    c = await api.client(await make_token("shop-a"), settings=settings.replace(max_tenant_backlog=5))
    assert (await c.post("/v1/jobs", json={"jobs": keyword(4)})).status_code == 202
    before = await count_rows(pool)
    resp = await c.post("/v1/jobs", json={"jobs": keyword(2)})
    err = assert_error(resp, 429, "backlog_full")
    assert int(resp.headers["retry-after"]) >= 1
    assert err["details"]["scope"] == "tenant" and err["details"]["limit"] == 5
    assert await count_rows(pool) == before
    other = await api.client(await make_token("shop-b"), settings=settings.replace(max_tenant_backlog=5))
    assert (await other.post("/v1/jobs", json={"jobs": keyword(2)})).status_code == 202


async def test_postgres_down_answers_503(api: Api, make_token: TokenFactory, settings: Settings) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = settings.replace(database_url=f"postgresql://postgres@127.0.0.1:{port}/nothing")
    c = await api.client(await make_token("shop-a"), settings=dead)
    resp = await c.get("/v1/jobs")
    err = assert_error(resp, 503, "unavailable")
    assert err["details"] == {"dependency": "postgresql"} and str(port) not in resp.text
    assert_error(await c.post("/v1/jobs", json=keyword()[0]), 503, "unavailable")
    assert (await c.get("/healthz")).status_code == 200
