"""The OpenAPI document is true to the code: same routes, responses valid for its schemas, and a
property-based fuzz of every operation from the document finds no 5xx and no contract violation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from blogqueue import tokens
from blogqueue.service.app import ROUTES, create_app
from blogqueue.service.openapi import DOCUMENT
from blogqueue.settings import Settings
from tests.http_fixtures import Api, TokenFactory, keyword
from tests.openapi_contract import check
from tests.schema_strategies import ANY_JSON, from_schema


def test_routes_and_document_agree() -> None:
    served = {(r.path, m.lower()) for r in ROUTES for m in r.methods or () if m != "HEAD"}
    documented = {(p, m) for p, ops in DOCUMENT["paths"].items() for m in ops}
    assert served == documented
    for schema in DOCUMENT["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, ops in DOCUMENT["paths"].items():
        for method, op in ops.items():
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == set(path.replace("}", "{").split("{")[1::2]), (path, method)
            assert op["responses"], (path, method)


async def test_every_operation_answers_per_the_document(api: Api, make_token: TokenFactory,
                                                        settings: Settings) -> None:
    """Success and error responses of every operation, validated against the document's schemas."""
    shop = await api.client(await make_token("shop-a"), settings=settings.replace(max_tenant_backlog=6))
    admin = await api.client(await make_token("ops", admin=True))
    anon = await api.client()
    responses: list[httpx.Response] = []
    enq = await shop.post("/v1/jobs", json={"jobs": keyword(3, metadata={"a": [1]})})
    responses.append(enq)
    job_id, batch_id = enq.json()["jobs"][0]["id"], enq.json()["batch_id"]
    responses += [
        await shop.post("/v1/jobs", json={"source": {"type": "product", "name": "Mug", "price": 9},
                                          "kind": "product_optimization", "idempotency_key": "x"}),
        await shop.post("/v1/jobs", json={**keyword()[0], "idempotency_key": "x"}),  # 409
        await shop.post("/v1/jobs", json={"jobs": keyword(5)}),  # 429
        await shop.post("/v1/jobs", content=b"{"),  # 400
        await shop.post("/v1/jobs", json={"nope": 1}),  # 422
        await shop.get("/v1/jobs", params={"limit": 2}),
        await shop.get("/v1/jobs", params={"cursor": "abc"}),
        await shop.get(f"/v1/jobs/{job_id}"),
        await shop.get("/v1/jobs/nope"),
        await shop.post(f"/v1/jobs/{job_id}/stop"),
        await shop.get(f"/v1/batches/{batch_id}"),
        await shop.post(f"/v1/batches/{batch_id}/stop"),
        await shop.post("/v1/batches/nope/stop"),
        await shop.post("/v1/stop"),
        await shop.put("/v1/ai-settings", json={"model": "offline:template"}),
        await shop.put("/v1/ai-settings", json={"keys": {"openai": "sk-0123456789"}}),  # 503: no SECRET_KEY
        await shop.get("/v1/ai-settings"),
        await shop.get("/v1/metrics"),
        await admin.get("/v1/metrics"),
        await admin.get("/metrics"),
        await anon.get("/v1/jobs"),
        await anon.get("/healthz"),
        await anon.get("/readyz"),
        await anon.get("/openapi.json"),
    ]
    statuses = {(r.request.method, r.status_code) for r in responses}
    for expected in (202, 409, 429, 400, 422, 200, 404, 403, 401):
        assert any(s == expected for _, s in statuses), expected
    for resp in responses:
        check(resp)
    assert (await anon.get("/openapi.json")).json() == DOCUMENT


# -- fuzz -------------------------------------------------------------------------------------------

OPERATIONS = [(path, method) for path, ops in DOCUMENT["paths"].items() for method in ops]
SAFE_TEXT = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"),
                     min_size=1, max_size=40)


class LoopThread:
    """The app on an event loop of its own thread, so Hypothesis can drive it from a plain test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def fuzz_target(settings: Settings) -> Iterator[dict[str, Any]]:
    runner = LoopThread()
    # With a SECRET_KEY, so PUT /v1/ai-settings reaches its happy path (without one it is a 503 by design).
    app = create_app(settings.replace(secret_key="fuzz-secret-key-0123456789abcdef"))
    lifespan = app.router.lifespan_context(app)
    runner.run(lifespan.__aenter__())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                               base_url="http://bq.test")

    async def setup() -> dict[str, str]:
        pool = app.state.client.pool
        tenant, _ = await tokens.create(pool, "fuzz-a")
        admin, _ = await tokens.create(pool, "fuzz-ops", is_admin=True)
        out = await app.state.client.enqueue("fuzz-a", keyword(2))
        return {"tenant": tenant, "admin": admin, "job": out.jobs[0].id, "batch": out.batch_id}

    known = runner.run(setup())
    yield {"runner": runner, "client": client, **known}
    runner.run(client.aclose())
    runner.run(lifespan.__aexit__(None, None, None))
    runner.close()


@st.composite
def requests(draw: st.DrawFn, known: dict[str, Any]) -> dict[str, Any]:
    path, method = draw(st.sampled_from(OPERATIONS))
    op = DOCUMENT["paths"][path][method]
    url, query = path, {}
    for param in op.get("parameters", []):
        if param["in"] == "path":
            value = draw(st.one_of(st.sampled_from([known["job"], known["batch"]]), st.uuids().map(str), SAFE_TEXT))
            url = url.replace("{" + param["name"] + "}", value)
        elif draw(st.booleans()):
            value = draw(st.one_of(from_schema(param["schema"]), SAFE_TEXT))
            query[param["name"]] = str(value).lower() if isinstance(value, bool) else str(value)
    request: dict[str, Any] = {"method": method.upper(), "url": url, "params": query}
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        body = draw(st.one_of(from_schema(schema), ANY_JSON, st.binary(max_size=30)))
        request["content" if isinstance(body, bytes) else "json"] = body
    who = draw(st.sampled_from(["tenant", "tenant", "admin", None, "bogus"]))
    if who:
        token = known.get(who, "bq_0123456789ab_" + "z" * 43)
        request["headers"] = {"Authorization": f"Bearer {token}"}
    return request


def test_fuzz_from_openapi_document(fuzz_target: dict[str, Any]) -> None:
    runner, client = fuzz_target["runner"], fuzz_target["client"]
    seen: set[tuple[str, int]] = set()

    @hsettings(max_examples=300, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(req=requests(fuzz_target))
    def one(req: dict[str, Any]) -> None:
        resp = runner.run(client.request(**req))
        assert resp.status_code < 500, f"{req} -> {resp.status_code} {resp.text}"
        check(resp)
        seen.add((req["url"].split("/")[1], resp.status_code))

    one()
    statuses = {s for _, s in seen}
    # The fuzz reaches the happy paths as well as the refusals.
    assert {200, 202, 401, 404, 422} <= statuses, seen
