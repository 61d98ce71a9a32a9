"""Settings of sources, publishers and credits; publisher refusals that need no worker."""

import uuid

import pytest

from blogqueue.errors import FatalError
from blogqueue.publishers import wix as wix_publisher
from blogqueue.settings import Settings, SettingsError
from blogqueue.testing.fake_wix import FakeWix


def test_credit_defaults_and_parsing():
    s = Settings.from_env({})
    assert s.credits_enabled is False and s.credit_costs == {"blog_post": 25, "product_optimization": 5}
    assert s.wix_base_url == "https://www.wixapis.com" and s.tmdb_base_url == "https://api.themoviedb.org"
    s = Settings.from_env({"BLOGQUEUE_CREDITS_ENABLED": "true", "BLOGQUEUE_CREDIT_COSTS": "product_optimization=2"})
    assert s.credits_enabled and s.credit_costs == {"blog_post": 25, "product_optimization": 2}
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(("var", "value"), [
    ("BLOGQUEUE_CREDITS_ENABLED", "maybe"),
    ("BLOGQUEUE_CREDIT_COSTS", "essay=3"),
    ("BLOGQUEUE_CREDIT_COSTS", "blog_post=-1"),
    ("BLOGQUEUE_CREDIT_COSTS", "blog_post=many"),
    ("BLOGQUEUE_HTTP_TIMEOUT_SECONDS", "0"),
])
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({var: value})
    assert var in str(err.value)


def test_tokens_and_keys_stay_out_of_repr():
    s = Settings(wix_api_token="wix-secret-token", tmdb_api_key="tmdb-secret-key")
    assert "wix-secret-token" not in repr(s) and "tmdb-secret-key" not in repr(s)


async def test_wix_refusals_are_fatal_and_clear(redis_url):
    job = {"id": uuid.uuid4(), "tenant_id": "store-1"}
    rewrite = {"title": "t", "description": "d", "seo_title": "s", "seo_description": "sd"}
    with pytest.raises(FatalError) as err:
        await wix_publisher.write_back(job, rewrite, {"product": {"name": "inline"}}, Settings(wix_api_token="x"))
    assert err.value.code == "no_wix_product"
    with pytest.raises(FatalError) as err:
        await wix_publisher.publish(job, {"title": "t", "body": "b"}, {}, Settings())
    assert err.value.code == "missing_api_key"
    with FakeWix("right-token") as wix:
        with pytest.raises(FatalError) as err:
            await wix_publisher.publish(job, {"title": "t", "body": "b"}, {},
                                        Settings(wix_base_url=wix.url, wix_api_token="wrong-token",
                                                 redis_url=redis_url))
        assert wix.drafts == {}
    assert err.value.code == "unauthorized" and "wrong-token" not in err.value.message
