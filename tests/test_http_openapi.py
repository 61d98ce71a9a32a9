"""The one contract test of the HTTP API against its generated OpenAPI document: the same routes,
every kind and source type the server accepts, real responses valid for its schemas, and
schemathesis (the real tool) run against a running `blogqueue serve`: no 5xx, no response outside
the document."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import httpx
from jsonschema import Draft202012Validator
from pydantic import Field

from blogqueue import App, SourceFields
from blogqueue.service.app import ROUTES, create_app
from blogqueue.settings import Settings
from tests.conftest import _free_port
from tests.http_fixtures import Api, TokenFactory, keyword
from tests.openapi_contract import DOCUMENT, check
from tests.test_http_serve import _cli, _start_serve, _wait_up


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
        await shop.post(f"/v1/batches/{batch_id}/retry"),  # 202, nothing failed
        await shop.post("/v1/batches/nope/retry"),
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


def test_document_lists_every_kind_and_source_type_the_server_accepts() -> None:
    app = App()
    schemas = DOCUMENT["components"]["schemas"]
    assert schemas["JobInput"]["properties"]["kind"]["enum"] == list(app.kinds) == ["blog_post", "product_optimization"]
    listed = {r["$ref"].rsplit("/", 1)[1]: schemas[r["$ref"].rsplit("/", 1)[1]] for r in schemas["Source"]["oneOf"]}
    assert {s["properties"]["type"]["const"] for s in listed.values()} == set(app.sources) == {"keyword", "product",
                                                                                                "tmdb"}
    # The fields the server accepts, from the sources' own models (the hand-written document lacked these).
    assert "product_id" in listed["ProductSource"]["properties"]
    assert {"list", "media", "min_rating"} <= set(listed["TmdbSource"]["properties"])
    assert all(s["additionalProperties"] is False for s in listed.values())


class TopicFields(SourceFields):
    topic: str = Field(min_length=1, max_length=80)
    audience: Literal["kids", "adults"] = "adults"


async def _fetch(source: dict[str, Any], config: Any, tenant_id: str) -> dict[str, Any]:
    return {"topic": source["topic"]}


async def _outline(run: Any) -> dict[str, Any]:
    return {"text": "outline"}


async def test_an_apps_own_kind_and_source_are_in_the_document_it_serves(settings: Settings) -> None:
    """DESIGN §10: the service lists the loaded app's kinds and sources in /openapi.json."""
    app = App()
    app.kind("faq", [("outline", _outline)], sources=["keyword"])
    app.source("topic", _fetch, fields=TopicFields, kinds=["faq"])
    service = create_app(settings, app)
    async with service.router.lifespan_context(service), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service), base_url="http://bq.test") as http:
        doc = (await http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert "faq" in schemas["JobInput"]["properties"]["kind"]["enum"]
    topic = schemas["TopicSource"]
    assert topic["properties"]["type"] == {"const": "topic"} and topic["required"][0] == "type"
    assert topic["properties"]["topic"]["maxLength"] == 80 and topic["additionalProperties"] is False
    assert "faq: keyword, topic" in schemas["Source"]["description"]
    assert doc != DOCUMENT  # the built-in document has neither


# -- schemathesis against a running service --------------------------------------------------------

# Bounded so `make test` stays short: examples per operation, one worker, a fixed seed.
MAX_EXAMPLES = 30
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


async def test_schemathesis_finds_no_5xx_and_no_response_outside_the_document(
        settings: Settings, tmp_path: Path) -> None:
    # With a SECRET_KEY, so PUT /v1/ai-settings reaches its happy path (without one it is a 503 by design).
    served = settings.replace(secret_key="contract-secret-key-0123456789abcdef")
    admin = _cli(served, "token", "create", "--tenant", "contract", "--admin").stdout.strip()
    port = _free_port()
    log_path = tmp_path / "serve.log"
    proc = _start_serve(served, port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            await _wait_up(http, proc, log_path, timeout=60)
            assert (await http.get("/openapi.json")).json() == DOCUMENT  # the served one is the tested one
        run = await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).parent / "schemathesis"), "run", f"{base}/openapi.json",
             "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES), "--seed", "20261125", "--workers", "1",
             "--header", f"Authorization: Bearer {admin}", "--request-timeout", "30",
             "--exclude-path", "/v1/events"],  # an endless stream: tests/test_events.py tests it
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        proc.terminate()
        proc.wait(15)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated.group(1)) >= 200, run.stdout[-3000:]  # enough cases to mean something
