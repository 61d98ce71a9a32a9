"""Each source end to end on the offline provider, published through each publisher to its fake server."""


import pytest

from blogqueue.client import Client
from blogqueue.errors import InvalidInput
from blogqueue.testing.fake_tmdb import FakeTMDb
from blogqueue.testing.fake_webhook import FakeWebhookReceiver
from blogqueue.testing.fake_wix import FakeWix

from .conftest import wait_until

SECRET = "whsec-test-0123456789"
WIX_TOKEN = "wix-token-abcdef123456"
TMDB_KEY = "0123456789abcdef0123456789abcdef"
PRODUCT = {"id": "prod-1", "name": "Linen Apron", "description": "A heavy linen apron.", "brand": "Acme",
           "priceData": {"formatted": {"price": "$30.00"}}}


async def finished(client, job_id, timeout=30):
    async def check():
        job = await client.get_job(job_id)
        return job if job.status in ("done", "failed", "cancelled") else None
    return await wait_until(check, timeout=timeout, what=f"job {job_id} to finish")


async def stage_output(pool, job_id, stage):
    return await pool.fetchval("SELECT output FROM bq_job_stages WHERE job_id = $1::uuid AND stage = $2",
                               job_id, stage)


async def test_keyword_post_published_to_webhook_with_a_valid_signature(client, workers, settings):
    with FakeWebhookReceiver(SECRET) as receiver:
        workers(1, publisher="webhook", webhook_url=receiver.url + "/hooks/blog", webhook_secret=SECRET)
        out = await client.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "linen care"},
                                              "metadata": {"ref": 7}})
        job = await finished(client, out.jobs[0].id)
    assert job.status == "done", job.last_error
    assert receiver.bad_signatures == 0 and receiver.redeliveries == 0
    assert list(receiver.deliveries) == [job.id]
    payload = receiver.deliveries[job.id]
    assert payload["post"]["title"] == job.result["title"] and payload["metadata"] == {"ref": 7}
    assert payload["tenant_id"] == "shop-a" and payload["kind"] == "blog_post"
    assert receiver.calls[("POST", "/hooks/blog")] == 1
    assert job.result["publish"] == {"publisher": "webhook", "status": 200, "idempotency_key": job.id}
    assert job.result["prompt_version"] == "2026-11-v2"


async def test_tmdb_roundup_published_as_a_wix_draft(client, workers, settings, pool):
    with FakeTMDb(TMDB_KEY) as tmdb, FakeWix(WIX_TOKEN) as wix:
        workers(1, publisher="wix", wix_base_url=wix.url, wix_api_token=WIX_TOKEN,
                tmdb_base_url=tmdb.url, tmdb_api_key=TMDB_KEY)
        source = {"type": "tmdb", "list": "top_rated", "media": "tv", "min_rating": 8, "year_from": 1995,
                  "year_to": 2015, "count": 4}
        out = await client.enqueue("store-1", {"source": source})
        job = await finished(client, out.jobs[0].id)
        tmdb_calls = tmdb.count("GET", "/3/tv/top_rated")
    assert job.status == "done", job.last_error
    src = await stage_output(pool, job.id, "source")
    items = src["items"]
    assert 1 <= len(items) <= 4 and src["source"] == "tmdb"
    assert all(i["rating"] >= 8 and 1995 <= int(i["year"]) <= 2015 for i in items)
    # The sample marks every 7th entry adult; none may pass without adult=true.
    assert all(int(i["title"].split()[-1]) % 7 != 6 for i in items)
    assert tmdb_calls >= 1
    (draft,) = wix.drafts.values()
    assert draft["title"] == job.result["title"] and draft["siteId"] == "store-1"
    assert job.result["publish"]["draft_post_id"] == draft["id"]


async def test_wix_product_post_and_rewrite_written_back(client, workers, settings, pool):
    with FakeWix(WIX_TOKEN, {"store-9": {"prod-1": dict(PRODUCT)}}) as wix:
        workers(1, publisher="wix", wix_base_url=wix.url, wix_api_token=WIX_TOKEN)
        source = {"type": "product", "product_id": "prod-1", "store": "store-9"}
        post = await client.enqueue("tenant-x", {"source": source})
        # One after the other: the rewrite renames the product the post reads.
        post_job = await finished(client, post.jobs[0].id)
        rewrite = await client.enqueue("tenant-x", {"kind": "product_optimization", "source": source})
        rw_job = await finished(client, rewrite.jobs[0].id)
    assert post_job.status == "done" and rw_job.status == "done", (post_job, rw_job)
    src = await stage_output(pool, post_job.id, "source")
    assert src["product"]["name"] == "Linen Apron" and src["product"]["price"] == "$30.00"
    (draft,) = wix.drafts.values()
    assert draft["siteId"] == "store-9"
    ((site, pid, patch),) = wix.updates
    assert (site, pid) == ("store-9", "prod-1")
    assert patch["name"] == rw_job.result["title"][:80] and patch["description"] == rw_job.result["description"]
    assert wix.products["store-9"]["prod-1"]["description"] == rw_job.result["description"]
    assert rw_job.result["write_back"] == {"publisher": "wix", "product_id": "prod-1", "site_id": "store-9"}
    assert wix.count("GET", "/stores/v1/products/prod-1") == 2


async def test_inline_product_rewrite_is_sent_to_the_webhook(client, workers, settings):
    with FakeWebhookReceiver(SECRET) as receiver:
        workers(1, publisher="webhook", webhook_url=receiver.url, webhook_secret=SECRET)
        out = await client.enqueue("shop-a", {"kind": "product_optimization",
                                              "source": {"type": "product", "name": "Tea Tin"}})
        job = await finished(client, out.jobs[0].id)
    assert job.status == "done", job.last_error
    payload = receiver.deliveries[job.id]
    assert payload["product"]["name"] == "Tea Tin" and payload["rewrite"]["title"] == job.result["title"]


async def test_unknown_product_and_empty_tmdb_list_fail_fatally(settings, pool, workers):
    bq = Client(settings.replace(credits_enabled=True), pool)
    await bq.grant_credits("store-1", 50)
    with FakeTMDb(TMDB_KEY) as tmdb, FakeWix(WIX_TOKEN, {"store-1": {}}) as wix:
        workers(1, wix_base_url=wix.url, wix_api_token=WIX_TOKEN, tmdb_base_url=tmdb.url, tmdb_api_key=TMDB_KEY)
        missing = await bq.enqueue("store-1", {"source": {"type": "product", "product_id": "nope"}})
        empty = await bq.enqueue("store-1", {"source": {"type": "tmdb", "min_rating": 9.99, "year_to": 1991}})
        gone = await finished(bq, missing.jobs[0].id)
        none = await finished(bq, empty.jobs[0].id)
        product_calls = wix.count("GET")
    assert gone.status == "failed" and gone.error_code == "not_found" and gone.attempts == 1
    assert "'nope' does not exist" in gone.last_error
    assert none.status == "failed" and none.error_code == "source_empty" and none.attempts == 1
    assert "no title matches the filters" in none.last_error
    assert product_calls == 1
    assert (await bq.credit_balance("store-1"))["balance"] == 50  # both released


async def test_bad_tmdb_key_fails_without_leaking_it(client, workers, settings, tmp_path):
    with FakeTMDb("the-right-key") as tmdb:
        workers(1, tmdb_base_url=tmdb.url, tmdb_api_key=TMDB_KEY, log_level="DEBUG")
        out = await client.enqueue("shop-a", {"source": {"type": "tmdb"}})
        job = await finished(client, out.jobs[0].id)
        sent = tmdb.requests[0].query.get("api_key")
    assert job.status == "failed" and job.error_code == "unauthorized"
    assert sent == TMDB_KEY  # the key did travel, as the v3 api_key parameter...
    assert TMDB_KEY not in job.model_dump_json()  # ...and shows neither in the job
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert "HTTP" in logs or "started" in logs
    assert TMDB_KEY not in logs  # nor in the worker's log, even at DEBUG


@pytest.mark.parametrize("source, message", [
    ({"type": "tmdb", "list": "upcoming"}, "list must be one of"),
    ({"type": "tmdb", "media": "book"}, "media must be one of"),
    ({"type": "tmdb", "year_from": 2020, "year_to": 2010}, "year_from must not be after year_to"),
    ({"type": "tmdb", "min_rating": 11}, "min_rating must be a number from 0 to 10"),
    ({"type": "tmdb", "adult": "yes"}, "adult must be true or false"),
    ({"type": "product", "product_id": "../etc"}, "product_id must be"),
    ({"type": "product", "product_id": "p1", "name": "x"}, "cannot take"),
    ({"type": "product"}, "name is required"),
])
async def test_invalid_sources_are_refused_at_enqueue(client, pool, source, message):
    with pytest.raises(InvalidInput) as err:
        await client.enqueue("shop-a", {"source": source})
    assert message in err.value.message and err.value.details == {"field": "job.source"}
    assert await pool.fetchval("SELECT count(*) FROM bq_jobs") == 0
