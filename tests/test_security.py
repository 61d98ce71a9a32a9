"""Security: hashed tokens, tenant isolation over every endpoint, hostile input, limits."""

import hmac
import json
import uuid

import pytest

from blogqueue import tokens

from .http_fixtures import api, assert_error, keyword, make_token  # noqa: F401 - fixtures

HOSTILE = [
    "'; DROP TABLE bq_jobs; --",
    "\" OR 1=1 --",
    "$1; SELECT pg_sleep(5)",
    "%s%s%s%n",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ 🧨",
    "\\x00\\u0000",
    "a" * 300,
]


async def test_tokens_are_stored_hashed_and_compared_in_constant_time(pool, monkeypatch):
    token, row = await tokens.create(pool, "shop-a")
    secret = token.split("_", 2)[2]  # bq_<id>_<secret>; the secret may contain "_"
    dump = json.dumps([dict(r) for r in await pool.fetch("SELECT * FROM bq_tokens")], default=str)
    assert secret not in dump and token not in dump
    assert "secret" not in json.dumps(row, default=str).lower().replace("secret_hash", "")

    compared = []
    real = hmac.compare_digest

    def recording(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", recording)
    assert (await tokens.verify(pool, token)).tenant_id == "shop-a"
    assert await tokens.verify(pool, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert await tokens.verify(pool, "bq_000000000000_" + secret) is None  # unknown id: still compared
    assert len(compared) == 3


async def test_tenant_b_cannot_touch_tenant_a_over_any_endpoint(api, make_token, pool):  # noqa: F811
    a = await api.client(await make_token("shop-a"))
    b = await api.client(await make_token("shop-b"))
    out = (await a.post("/v1/jobs", json={"jobs": keyword(3)})).json()
    job_id, batch_id = out["jobs"][0]["id"], out["batch_id"]
    cursor = (await a.get("/v1/jobs", params={"limit": 1})).json()["next_cursor"]
    before = await pool.fetch("SELECT id, status, updated_at FROM bq_jobs ORDER BY id")

    missing = str(uuid.uuid4())
    for ident in (job_id, missing):
        assert_error(await b.get(f"/v1/jobs/{ident}"), 404, "not_found")
        assert_error(await b.post(f"/v1/jobs/{ident}/stop"), 404, "not_found")
    # A foreign id and a missing one answer alike: nothing to enumerate.
    assert (await b.get(f"/v1/jobs/{job_id}")).json()["error"]["message"] == \
        (await b.get(f"/v1/jobs/{missing}")).json()["error"]["message"]
    for ident in (batch_id, missing):
        assert_error(await b.get(f"/v1/batches/{ident}"), 404, "not_found")
        assert_error(await b.post(f"/v1/batches/{ident}/stop"), 404, "not_found")
    for guess in ("1", "0", "-1", "' OR '1'='1", job_id.upper(), job_id.replace("-", "")):
        r = await b.get(f"/v1/jobs/{guess}")
        assert r.status_code in (404, 422), r.text
    listed = (await b.get("/v1/jobs", params={"batch_id": batch_id})).json()
    assert listed.get("jobs", []) == [] or listed["error"]["code"] == "not_found"
    assert_error(await b.get("/v1/jobs", params={"cursor": cursor}), 404, "not_found")
    assert (await b.post("/v1/stop")).status_code == 200
    after = await pool.fetch("SELECT id, status, updated_at FROM bq_jobs ORDER BY id")
    assert before == after
    assert (await a.get(f"/v1/jobs/{job_id}")).status_code == 200


@pytest.mark.parametrize("text", HOSTILE)
async def test_hostile_strings_are_data_not_sql(api, make_token, pool, text):  # noqa: F811
    c = await api.client(await make_token("shop-a"))
    job = {"source": {"type": "keyword", "keyword": text[:300], "tone": text[:50]},
           "idempotency_key": text[:200], "metadata": {text[:50]: text}}
    r = await c.post("/v1/jobs", json=job)
    assert r.status_code == 202, r.text
    got = (await c.get(f"/v1/jobs/{r.json()['jobs'][0]['id']}")).json()
    assert got["metadata"] == {text[:50]: text}
    assert got["idempotency_key"] == text[:200]
    for params in ({"status": text}, {"batch_id": text}, {"cursor": text}, {"limit": text}):
        assert (await c.get("/v1/jobs", params=params)).status_code in (404, 422)
    assert await pool.fetchval("SELECT count(*) FROM bq_jobs") == 1
    assert await pool.fetchval("SELECT to_regclass('bq_jobs') IS NOT NULL")


async def test_size_batch_and_depth_limits_hold(api, make_token, pool, settings):  # noqa: F811
    s = settings.replace(max_body_bytes=50_000, max_batch_size=100, max_json_depth=8)
    c = await api.client(await make_token("shop-a"), settings=s)
    assert_error(await c.post("/v1/jobs", json={"jobs": keyword(1000)}), 413, "body_too_large")
    assert_error(await c.post("/v1/jobs", json={"jobs": keyword(101)}), 422, "invalid_input")
    deep: dict = {"x": 1}
    for _ in range(20):
        deep = {"x": deep}
    r = await c.post("/v1/jobs", json={**keyword(1)[0], "metadata": deep})
    assert r.status_code == 422, r.text
    assert await pool.fetchval("SELECT count(*) FROM bq_jobs") == 0


async def test_credit_balance_is_the_callers_own(api, make_token, pool, client):  # noqa: F811
    await client.grant_credits("shop-a", 100)
    a = await api.client(await make_token("shop-a"))
    b = await api.client(await make_token("shop-b"))
    assert (await a.get("/v1/credits")).json()["granted"] == 100
    assert (await b.get("/v1/credits")).json()["granted"] == 0
    assert_error(await (await api.client()).get("/v1/credits"), 401, "unauthorized")
