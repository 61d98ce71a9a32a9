"""blogqueue.App: the registry, validation against it, loading it, and what it changes at run time
(a replaced built-in prompt reaches the provider; an added provider gets keys and the shared limiter)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel, Field

import blogqueue
from blogqueue import ratelimit
from blogqueue.app import App, AppLoadError, load
from blogqueue.errors import InvalidInput
from blogqueue.jobs import parse_job
from blogqueue.settings import RateLimit, Settings
from blogqueue.testing.fake_openai import FakeOpenAI
from tests import apps
from tests.conftest import wait_until
from tests.http_fixtures import Api, TokenFactory, assert_error

SECRET = "test-secret-key-for-the-app-tests-0123456789"
USER_KEY = "sk-acme-user-key-0123456789"
PLATFORM_KEY = "sk-acme-platform-key-987654"


def worker_argv(app: str) -> tuple[str, ...]:
    return ("-m", "blogqueue.cli", "worker", "--app", app)


async def finished(client: blogqueue.Client, job_id: str, timeout: float = 60) -> blogqueue.JobDetail:
    async def done() -> blogqueue.JobDetail | None:
        job = await client.get_job(job_id)
        return job if job.status in ("done", "failed", "cancelled") else None

    return await wait_until(done, timeout=timeout)


def test_builtins_are_what_app_starts_with() -> None:
    app = App()
    assert {n: k.stage_names for n, k in app.kinds.items()} == {
        "blog_post": ("source", "content", "image", "publish"),
        "product_optimization": ("product", "rewrite", "write_back")}
    assert app.kinds["blog_post"].sources == ("keyword", "product", "tmdb")
    assert app.kinds["product_optimization"].sources == ("product",)
    assert {n: k.credit_cost for n, k in app.kinds.items()} == {"blog_post": 25, "product_optimization": 5}
    assert set(app.publishers) == {"none", "webhook", "wix"}
    assert set(app.providers) == {"offline", "openai", "anthropic", "gemini", "replicate"}
    assert app.key_providers == ("anthropic", "gemini", "openai", "replicate")
    assert app.providers["offline"].limit_dimensions == () and app.providers["openai"].limit_dimensions
    assert {p.version for p in app.prompts.values()} == {blogqueue.prompts.VERSION}
    assert App(builtins=False).kinds == {}
    with pytest.raises(TypeError):
        app.kinds["poem"] = app.kinds["blog_post"]  # type: ignore[index]


def test_source_schemas_list_every_accepted_field() -> None:
    """What the OpenAPI `Source` is generated from: tmdb and the Wix product_id included."""
    app = App()
    props = {n: set(s.json_schema()["properties"]) for n, s in app.sources.items()}
    assert props["keyword"] == {"type", "keyword", "tone", "language"}
    assert props["product"] == {"type", "name", "description", "brand", "category", "price", "attributes",
                                "product_id", "store"}
    assert props["tmdb"] == {"type", "list", "media", "min_rating", "year_from", "year_to", "adult", "count",
                             "language", "tone"}
    assert app.sources["tmdb"].json_schema()["properties"]["type"] == {"const": "tmdb"}
    assert app.sources["keyword"].json_schema()["required"] == ["type", "keyword"]
    assert issubclass(app.sources["product"].fields, BaseModel)


@pytest.mark.parametrize(("job", "message"), [
    ({"source": {"type": "keyword", "keyword": " "}},
     "job.source.keyword must be a non-empty string of at most 300 characters"),
    ({"source": {"type": "keyword", "keyword": 5}}, "job.source.keyword must be a non-empty string"),
    ({"source": {"type": "keyword", "keyword": "x", "colour": "red"}}, "job.source has an unknown field 'colour'"),
    ({"source": {"type": "rss"}}, "job.source.type must be one of keyword, product, tmdb"),
    ({"source": {"type": "tmdb", "count": 21}}, "job.source.count must be an integer from 1 to 20"),
    ({"source": {"type": "tmdb", "count": 2.0}}, "job.source.count must be an integer from 1 to 20"),
    ({"kind": "product_optimization", "source": {"type": "tmdb"}},
     "job.source.type 'tmdb' cannot feed a product_optimization job (it takes product)"),
    ({"kind": "poem", "source": {"type": "keyword", "keyword": "x"}},
     "job.kind must be one of blog_post, product_optimization"),
])
def test_invalid_jobs_get_clear_messages(job: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_job(job, App())
    assert err.value.message.startswith(message), err.value.message
    assert err.value.details["field"] in ("job.source", "job.kind")


def test_a_users_source_kind_and_publisher() -> None:
    class Feed(BaseModel):
        url: str = Field(pattern=r"^https://")

    async def fetch(source: dict[str, Any], config: Any, tenant_id: str) -> dict[str, Any]:
        return {"topic": source["url"], "config": config}

    async def stage(run: blogqueue.Run) -> dict[str, Any]:
        return {}

    app = App()
    app.source("feed", fetch, fields=Feed, kinds=["blog_post"], config=lambda s: s.queue_name)
    assert app.kinds["blog_post"].sources == ("keyword", "product", "tmdb", "feed")
    spec = parse_job({"source": {"type": "feed", "url": "https://x.test/rss"}}, app)
    assert spec.source == {"type": "feed", "url": "https://x.test/rss"}
    with pytest.raises(InvalidInput) as err:
        parse_job({"source": {"type": "feed", "url": "ftp://x"}}, app)
    assert err.value.message.startswith("job.source.url is invalid: String should match pattern")

    app.kind("digest", [("one", stage), ("two", stage)], sources=["feed"])
    assert parse_job({"kind": "digest", "source": {"type": "feed", "url": "https://a"}}, app).kind == "digest"
    assert app.credit_cost("digest", Settings()) == 0
    with pytest.raises(InvalidInput, match="cannot feed a digest job"):
        parse_job({"kind": "digest", "source": {"type": "keyword", "keyword": "x"}}, app)

    for bad in (lambda: app.kind("Digest", [("one", stage)]), lambda: app.kind("d", []),
                lambda: app.kind("d", [("one", stage), ("one", stage)]),
                lambda: app.kind("d", [("one", stage)], sources=["rss"]),
                lambda: app.kind("d", [("one", stage)], credit_cost=-1),
                lambda: app.source("s", fetch, fields=dict),  # type: ignore[arg-type]
                lambda: app.publisher("p", object())):
        with pytest.raises(ValueError):
            bad()


def test_loading_an_app_names_where_it_came_from() -> None:
    assert isinstance(load(None), App)
    assert load("tests.apps:prompt_app") is apps.prompt_app
    for spec, where, words in (("no_such_module_x:app", "--app", "cannot import 'no_such_module_x'"),
                               ("tests.apps:missing", "BLOGQUEUE_APP", "has no attribute 'missing'"),
                               ("tests.apps:not_an_app", "BLOGQUEUE_APP", "not a blogqueue.App"),
                               ("tests.apps", "--app", "must look like MODULE:ATTR")):
        with pytest.raises(AppLoadError) as err:
            load(spec, where=where)
        assert str(err.value).startswith(where) and words in str(err.value), err.value


async def test_a_replaced_builtin_prompt_is_what_the_provider_receives(client: blogqueue.Client, workers: Any,
                                                                       settings: Settings) -> None:
    with FakeOpenAI() as fake:
        workers(1, argv=worker_argv("tests.apps:prompt_app"), openai_base_url=fake.base_url,
                openai_api_key=PLATFORM_KEY)
        out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "oolong"},
                                              "model": "openai:gpt-4o-mini", "image": False})
        job = await finished(client, out.jobs[0].id)
        calls = [c for c in fake.calls if c["path"] == "/v1/chat/completions"]
    assert job.status == "done", job
    assert [c["subject"] for c in calls] == [f"{apps.MARKER} oolong"]  # the new template's text, sent once
    assert job.result["prompt_version"] == "test-replaced-1"
    assert job.result["title"] == f"A fake post about {apps.MARKER} oolong"


async def test_an_added_provider_gets_stored_keys_a_platform_key_and_the_limiter(
        api: Api, make_token: TokenFactory, client: blogqueue.Client, workers: Any, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    keyed = settings.replace(secret_key=SECRET, app="tests.apps:provider_app",
                             rate_limits={"acme": RateLimit(rpm=1000, tpm=1_000_000)})
    ann = await api.client(await make_token("shop-a", user="ann"), settings=keyed)
    bob = await api.client(await make_token("shop-b", user="bob"), settings=keyed)
    put = await ann.put("/v1/ai-settings", json={"keys": {"acme": USER_KEY}})
    assert put.status_code == 200 and put.json()["keys"]["acme"]["masked"].endswith(USER_KEY[-4:]), put.text
    assert_error(await ann.put("/v1/ai-settings", json={"keys": {"offline": USER_KEY}}), 422, "invalid_input",
                 "keys.offline")  # needs no key: none can be stored
    assert_error(await ann.post("/v1/jobs", json={"source": {"type": "keyword", "keyword": "x"},
                                                  "model": "acme:claude-x"}), 422, "invalid_input", "job.model")
    with FakeOpenAI() as fake:
        monkeypatch.setenv("ACME_BASE_URL", fake.base_url)
        monkeypatch.setenv("ACME_PLATFORM_KEY", PLATFORM_KEY)
        workers(1, argv=worker_argv("tests.apps:provider_app"), secret_key=SECRET,
                rate_limits=keyed.rate_limits)
        ids = []
        for who in (ann, bob):
            resp = await who.post("/v1/jobs", json={"source": {"type": "keyword", "keyword": "tea"},
                                                    "model": "acme:gpt-4o-mini", "image": False})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["jobs"][0]["id"])
        jobs = [await finished(client, i) for i in ids]
        by_key = fake.calls_by_key()
    assert [j.status for j in jobs] == ["done", "done"], jobs
    assert all(j.result["usage"]["model"].endswith(":gpt-4o-mini") for j in jobs)
    # ann's stored key and the platform key (for bob, who stored none), one call each...
    assert by_key == {ratelimit.key_hash(USER_KEY)[:12]: 1, ratelimit.key_hash(PLATFORM_KEY)[:12]: 1}
    # ...each through its own bucket of the shared limiter.
    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        buckets = await ratelimit.bucket_stats(redis, keyed)
    finally:
        await redis.aclose()
    assert sorted(b["key_hash"] for b in buckets if b["provider"] == "acme") == sorted(
        ratelimit.key_hash(k) for k in (USER_KEY, PLATFORM_KEY))


async def test_a_stage_that_returns_no_dict_fails_clearly(client: blogqueue.Client, pool: Any) -> None:
    from blogqueue.pipeline import Run, run_pipeline

    async def bad(run: Run) -> dict[str, Any]:
        return "text"  # type: ignore[return-value]

    app = App()
    app.kind("broken", [("bad", bad)])
    job = {"id": uuid.uuid4(), "tenant_id": "t", "kind": "broken", "attempt": 1, "spec": {"source": {}}}
    with pytest.raises(blogqueue.FatalError) as err:
        await run_pipeline(Run(job, app=app, settings=client.settings, pool=pool), lambda: False)
    assert err.value.code == "bad_stage_output" and "'bad'" in err.value.message


def test_the_readme_example_is_the_example_that_runs() -> None:
    """README's extension example is examples/faq_plugin, line for line (tests/test_app_plugin.py runs it)."""
    from pathlib import Path

    readme = Path("README.md").read_text()
    block = readme.split("This is [examples/faq_plugin]", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    source = Path("examples/faq_plugin/__init__.py").read_text()
    lines = [line.split("  #")[0].rstrip() for line in block.splitlines() if line.strip()]
    missing = [line for line in lines if line not in source]
    assert not missing and len(lines) >= 30, missing
