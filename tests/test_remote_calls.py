"""Library-level calls to the fake third parties: TMDb lists and filters, webhook error classes."""

import uuid

import pytest

from blogqueue.app import App
from blogqueue.errors import FatalError, RateLimited, RetryableError
from blogqueue.publishers import webhook
from blogqueue.publishers.webhook import WebhookConfig
from blogqueue.settings import Settings
from blogqueue.testing.fake_tmdb import FakeTMDb, sample
from blogqueue.testing.fake_webhook import FakeWebhookReceiver

KEY = "fedcba9876543210fedcba9876543210"
SECRET = "whsec-unit-0123456789"


@pytest.mark.parametrize("media", ["movie", "tv"])
@pytest.mark.parametrize("name, path", [("popular", "/3/{m}/popular"), ("top_rated", "/3/{m}/top_rated"),
                                        ("trending", "/3/trending/{m}/week"), ("now_playing", None)])
async def test_tmdb_lists_and_filters(media, name, path):
    expected = path.format(m=media) if path else ("/3/movie/now_playing" if media == "movie" else "/3/tv/on_the_air")
    with FakeTMDb(KEY) as tmdb:
        s = Settings(tmdb_base_url=tmdb.url, tmdb_api_key=KEY)
        src = App().validate_source("blog_post", {"type": "tmdb", "list": name, "media": media, "min_rating": 7,
                                             "year_from": 2000, "adult": False, "count": 20})
        out = await App().fetch_source(src, s, "t1")
        assert tmdb.calls[("GET", expected)] == 2  # 30 entries: two pages read to look for 20 matches
    want = [e for e in sample(media) if e["vote_average"] >= 7 and not e["adult"]
            and int((e.get("release_date") or e.get("first_air_date"))[:4]) >= 2000]
    assert [i["id"] for i in out["items"]] == [e["id"] for e in want]
    assert out["source"] == "tmdb" and out["topic"].startswith(f"{len(want)} ")


async def test_tmdb_adult_filter_and_v4_token():
    token = "eyJhbGciOiJIUzI1NiJ9.test.token"
    with FakeTMDb(token) as tmdb:
        s = Settings(tmdb_base_url=tmdb.url, tmdb_api_key=token)
        src = App().validate_source("blog_post", {"type": "tmdb", "adult": True, "count": 20})
        out = await App().fetch_source(src, s, "t1")
        sent = tmdb.requests[0]
    assert sent.headers["authorization"] == f"Bearer {token}" and "api_key" not in sent.query
    assert any(int(i["title"].split()[-1]) % 7 == 6 for i in out["items"])  # adult titles allowed now


def _job():
    return {"id": uuid.uuid4(), "tenant_id": "t1", "kind": "blog_post", "spec": {"metadata": {}}}


@pytest.mark.parametrize("status, error", [(500, RetryableError), (503, RetryableError), (408, RetryableError),
                                           (429, RateLimited), (400, FatalError), (404, FatalError),
                                           (410, FatalError)])
async def test_webhook_answers_are_classified(status, error):
    with FakeWebhookReceiver(SECRET) as receiver:
        receiver.fail_next(status)
        s = WebhookConfig(receiver.url, SECRET)
        with pytest.raises(error):
            await webhook.publish(_job(), {"title": "t", "body": "b", "image_url": None}, {}, s)
        ok = await webhook.publish(_job(), {"title": "t", "body": "b", "image_url": None}, {}, s)
    assert ok["status"] == 200 and len(receiver.deliveries) == 1


async def test_webhook_signature_is_over_the_exact_body_and_a_wrong_secret_is_refused():
    with FakeWebhookReceiver(SECRET) as receiver:
        good = WebhookConfig(receiver.url, SECRET)
        await webhook.publish(_job(), {"title": "t", "body": "b", "image_url": None}, {}, good)
        req = receiver.requests[0]
        assert webhook.verify(req.body, SECRET, req.headers["x-blogqueue-signature"])
        assert not webhook.verify(req.body + b" ", SECRET, req.headers["x-blogqueue-signature"])
        bad = WebhookConfig(receiver.url, "not-the-secret")
        with pytest.raises(FatalError) as err:
            await webhook.publish(_job(), {"title": "t", "body": "b", "image_url": None}, {}, bad)
    assert receiver.bad_signatures == 1 and len(receiver.deliveries) == 1
    assert "not-the-secret" not in err.value.message


async def test_unreachable_webhook_is_retryable_and_missing_config_fatal():
    with FakeWebhookReceiver(SECRET) as receiver:
        url = receiver.url
    with pytest.raises(RetryableError):
        await webhook.publish(_job(), {"title": "t", "body": "b"}, {}, WebhookConfig(url, SECRET))
    with pytest.raises(FatalError):
        await webhook.publish(_job(), {"title": "t", "body": "b"}, {}, WebhookConfig())
