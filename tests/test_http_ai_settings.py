"""GET/PUT /v1/ai-settings through the real app: masked keys, validation, SECRET_KEY, isolation, no leaks."""

from __future__ import annotations

import json
import logging

import asyncpg
import pytest
from structlog.testing import capture_logs

from blogqueue.settings import Settings
from tests.http_fixtures import Api, TokenFactory, assert_error
from tests.openapi_contract import check

KEY = "sk-proj-Zq8wLk2mNv7Tx4RpYc1abcd"
SECRET = "test-secret-key-for-ai-settings-0123456789"


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.replace(secret_key=SECRET)


async def test_put_then_get_shows_the_key_masked_never_the_key(api: Api, make_token: TokenFactory,
                                                               keyed: Settings, pool: asyncpg.Pool,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    ann = await api.client(await make_token("shop-a", user="ann"), settings=keyed)
    empty = await ann.get("/v1/ai-settings")
    check(empty)
    assert empty.json() == {"tenant_id": "shop-a", "user_id": "ann", "model": None, "keys": {},
                            "updated_at": None}

    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        put = await ann.put("/v1/ai-settings", json={"model": "openai:gpt-4o-mini", "keys": {"openai": KEY}})
        got = await ann.get("/v1/ai-settings")
        bad = await ann.put("/v1/ai-settings", json={"keys": {"openai": KEY + " x"}})  # refused: has a space
    for resp in (put, got):
        check(resp)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == "openai:gpt-4o-mini" and body["user_id"] == "ann"
        assert body["keys"]["openai"]["masked"] == "sk-…abcd"
        assert body["updated_at"] and body["keys"]["openai"]["updated_at"]
    assert_error(bad, 422, "invalid_input", "keys.openai")
    # The key (or any long piece of it) is in no response, no log event, no log record, no plain column.
    assert any(e.get("event") == "request" for e in events), events  # the capture does see the access log
    logged = json.dumps(events, default=str) + caplog.text
    stored = json.dumps([dict(r) for r in await pool.fetch("SELECT * FROM bq_provider_keys")], default=str)
    for text in (put.text, got.text, bad.text, logged, stored):
        assert KEY not in text and KEY[3:15] not in text and KEY[-12:] not in text

    cleared = await ann.put("/v1/ai-settings", json={"model": None, "keys": {"openai": None}})
    assert cleared.status_code == 200 and cleared.json()["model"] is None and cleared.json()["keys"] == {}


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "nosuch:thing"}, "model"),
    ({"model": "openai:not-a-model"}, "model"),
    ({"model": 5}, "model"),
    ({"keys": {"mistral": "sk-12345678abc"}}, "keys.mistral"),
    ({"keys": {"openai": "short"}}, "keys.openai"),
    ({"keys": ["sk-12345678abc"]}, "keys"),
    ({"model": "openai:gpt-4o", "colour": "red"}, "colour"),
    ({"keys": {"openai": "sk-1234\u0000567890"}}, "keys.openai"),
    (["model"], "body"),
])
async def test_bad_bodies_name_the_field_and_change_nothing(api: Api, make_token: TokenFactory, keyed: Settings,
                                                            body: object, field: str) -> None:
    ann = await api.client(await make_token("shop-a", user="ann"), settings=keyed)
    assert (await ann.put("/v1/ai-settings", json={"model": "anthropic:claude-3-5-haiku"})).status_code == 200
    before = (await ann.get("/v1/ai-settings")).json()
    resp = await ann.put("/v1/ai-settings", json=body)
    check(resp)
    err = assert_error(resp, 422, "invalid_input", field)
    assert "sk-1234" not in json.dumps(err)  # the error never repeats a key
    assert (await ann.get("/v1/ai-settings")).json() == before


async def test_malformed_and_oversized_bodies(api: Api, make_token: TokenFactory, keyed: Settings) -> None:
    ann = await api.client(await make_token("shop-a", user="ann"), settings=keyed.replace(max_body_bytes=1024))
    assert_error(await ann.put("/v1/ai-settings", content=b"{"), 400, "malformed_json")
    assert_error(await ann.put("/v1/ai-settings", json={"keys": {"openai": "sk-" + "x" * 2000}}),
                 413, "body_too_large")
    assert_error(await ann.put("/v1/ai-settings", content=b'{"model": "\\ud800x"}'), 422, "invalid_input", "model")
    assert_error(await (await api.client()).get("/v1/ai-settings"), 401, "unauthorized")


async def test_without_secret_key_keys_are_refused_clearly(api: Api, make_token: TokenFactory,
                                                           settings: Settings) -> None:
    assert not settings.secret_key
    ann = await api.client(await make_token("shop-a", user="ann"))
    resp = await ann.put("/v1/ai-settings", json={"model": "openai:gpt-4o-mini", "keys": {"openai": KEY}})
    check(resp)
    err = assert_error(resp, 503, "secret_key_missing")
    assert "SECRET_KEY" in err["message"] and KEY not in resp.text
    assert (await ann.get("/v1/ai-settings")).json()["model"] is None  # nothing was written
    # A model alone needs no secret.
    ok = await ann.put("/v1/ai-settings", json={"model": "openai:gpt-4o-mini"})
    assert ok.status_code == 200 and ok.json()["model"] == "openai:gpt-4o-mini"


async def test_tenants_and_users_are_isolated(api: Api, make_token: TokenFactory, keyed: Settings) -> None:
    ann = await api.client(await make_token("shop-a", user="ann"), settings=keyed)
    bob = await api.client(await make_token("shop-a", user="bob"), settings=keyed)
    tenant_a = await api.client(await make_token("shop-a"), settings=keyed)
    admin_a = await api.client(await make_token("shop-a", admin=True), settings=keyed)
    ann_b = await api.client(await make_token("shop-b", user="ann"), settings=keyed)
    assert (await ann.put("/v1/ai-settings", json={"model": "openai:gpt-4o", "keys": {"openai": KEY}})
            ).status_code == 200
    assert (await tenant_a.put("/v1/ai-settings", json={"model": "anthropic:claude-3-5-haiku"})).status_code == 200

    for other in (bob, ann_b):
        body = (await other.get("/v1/ai-settings")).json()
        assert body["model"] is None and body["keys"] == {}
    # A token without a user (admin or not) has the tenant's own settings, not any user's.
    for own in (tenant_a, admin_a):
        body = (await own.get("/v1/ai-settings")).json()
        assert body == {**body, "tenant_id": "shop-a", "user_id": None, "model": "anthropic:claude-3-5-haiku",
                        "keys": {}}
    assert (await ann.get("/v1/ai-settings")).json()["model"] == "openai:gpt-4o"
