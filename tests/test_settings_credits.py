"""Settings of sources, publishers and credits; publisher refusals that need no worker."""

import uuid

import pytest

from blogqueue.app import App
from blogqueue.errors import FatalError
from blogqueue.publishers import wix as wix_publisher
from blogqueue.settings import Settings, SettingsError
from blogqueue.testing.fake_wix import FakeWix
from blogqueue.wix import WixConfig


def test_credit_defaults_and_parsing():
    app = App()
    s = Settings.from_env({})
    assert s.credits_enabled is False and s.credit_costs == {}
    assert {k: app.credit_cost(k, s) for k in app.kinds} == {"blog_post": 25, "product_optimization": 5}
    assert s.wix_base_url == "https://www.wixapis.com" and s.tmdb_base_url == "https://api.themoviedb.org"
    s = Settings.from_env({"BLOGQUEUE_CREDITS_ENABLED": "true", "BLOGQUEUE_CREDIT_COSTS": "product_optimization=2"})
    assert s.credits_enabled and s.credit_costs == {"product_optimization": 2}
    assert {k: app.credit_cost(k, s) for k in app.kinds} == {"blog_post": 25, "product_optimization": 2}
    assert Settings.from_env(s.to_env()) == s
    app.check(s)


def test_costs_and_publisher_must_name_what_the_app_registers():
    """Settings name kinds and publishers; the app they run with decides which exist, at start."""
    app = App()
    for env, var in (({"BLOGQUEUE_CREDIT_COSTS": "essay=3"}, "BLOGQUEUE_CREDIT_COSTS"),
                     ({"BLOGQUEUE_PUBLISHER": "ftp"}, "BLOGQUEUE_PUBLISHER")):
        s = Settings.from_env(env)
        with pytest.raises(SettingsError) as err:
            app.check(s)
        assert var in str(err.value)
    app.kind("essay", app.kinds["blog_post"].stages, sources=["keyword"], credit_cost=1)
    app.publisher("ftp", wix_publisher)
    app.check(Settings.from_env({"BLOGQUEUE_CREDIT_COSTS": "essay=3", "BLOGQUEUE_PUBLISHER": "ftp"}))
    assert app.credit_cost("essay", Settings.from_env({"BLOGQUEUE_CREDIT_COSTS": "essay=3"})) == 3


@pytest.mark.parametrize(("var", "value"), [
    ("BLOGQUEUE_CREDITS_ENABLED", "maybe"),
    ("BLOGQUEUE_CREDIT_COSTS", "Essay!=3"),
    ("BLOGQUEUE_PUBLISHER", "no such thing"),
    ("BLOGQUEUE_APP", "not-a-spec"),
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


async def test_wix_refusals_are_fatal_and_clear():
    job = {"id": uuid.uuid4(), "tenant_id": "store-1"}
    rewrite = {"title": "t", "description": "d", "seo_title": "s", "seo_description": "sd"}
    with pytest.raises(FatalError) as err:
        await wix_publisher.write_back(job, rewrite, {"product": {"name": "inline"}},
                                       WixConfig("https://wix.invalid", "x"))
    assert err.value.code == "no_wix_product"
    with pytest.raises(FatalError) as err:
        await wix_publisher.publish(job, {"title": "t", "body": "b"}, {}, WixConfig("https://wix.invalid"))
    assert err.value.code == "missing_api_key"
    with FakeWix("right-token") as wix:
        with pytest.raises(FatalError) as err:
            await wix_publisher.publish(job, {"title": "t", "body": "b"}, {},
                                        WixConfig(wix.url, "wrong-token"))
        assert wix.drafts == {}
    assert err.value.code == "unauthorized" and "wrong-token" not in err.value.message
