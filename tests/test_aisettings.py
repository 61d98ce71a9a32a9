"""Per-user AI settings through the Client: masked write-only keys, validation, resolution, rotation."""

from __future__ import annotations

import json

import pytest

from blogqueue import aisettings, secrets
from blogqueue.app import App
from blogqueue.errors import FatalError, InvalidInput, Unavailable
from blogqueue.resolve import resolve

KEY = "sk-proj-USERSECRET-0123456789abcd"
APP = App()


@pytest.fixture
async def ai(settings, pool, client):
    await pool.execute("TRUNCATE bq_ai_settings, bq_provider_keys")
    client.settings = settings.replace(secret_key="test-secret-key-one")
    return client


async def test_keys_are_write_only_and_masked(ai, pool):
    out = await ai.put_ai_settings("shop-a", "u1", {"model": "openai:gpt-4o-mini", "keys": {"openai": KEY}})
    assert out["model"] == "openai:gpt-4o-mini"
    assert out["keys"]["openai"]["masked"] == "sk-…abcd"
    assert KEY not in json.dumps(out) and KEY not in json.dumps(await ai.get_ai_settings("shop-a", "u1"))
    stored = await pool.fetchval("SELECT ciphertext FROM bq_provider_keys WHERE tenant_id = 'shop-a'")
    assert KEY not in stored and stored.startswith("v1.")
    # another user of the same tenant sees nothing of it
    assert (await ai.get_ai_settings("shop-a", "u2"))["keys"] == {}


async def test_null_deletes_and_absent_fields_are_kept(ai):
    await ai.put_ai_settings("shop-a", "u1", {"model": "anthropic:claude-3-5-haiku-latest",
                                               "keys": {"openai": KEY, "anthropic": "sk-ant-0000000000wxyz"}})
    out = await ai.put_ai_settings("shop-a", "u1", {"keys": {"openai": None}})
    assert out["model"] == "anthropic:claude-3-5-haiku-latest" and list(out["keys"]) == ["anthropic"]
    out = await ai.put_ai_settings("shop-a", "u1", {"model": None})
    assert out["model"] is None and list(out["keys"]) == ["anthropic"]


@pytest.mark.parametrize("body, field", [
    ({"model": "mystery:x"}, "model"),
    ({"model": 3}, "model"),
    ({"keys": {"openai": "short"}}, "keys.openai"),
    ({"keys": {"openai": "sk has spaces in it"}}, "keys.openai"),
    ({"keys": {"offline": "sk-0123456789"}}, "keys.offline"),
    ({"keys": ["sk-0123456789"]}, "keys"),
    ({"colour": "blue"}, "colour"),
    ("nope", "body"),
])
async def test_bad_input_is_refused_and_changes_nothing(ai, body, field):
    await ai.put_ai_settings("shop-a", "u1", {"model": "openai:gpt-4o-mini"})
    # alone, and beside valid fields that must not be written either
    bodies = [body, {"model": "openai:o3-mini", "keys": {"anthropic": KEY}} | body] if isinstance(body, dict) \
        else [body]
    for b in bodies:
        with pytest.raises(InvalidInput) as info:
            await ai.put_ai_settings("shop-a", "u1", b)
        assert info.value.to_dict()["error"]["details"]["field"] == field
        assert KEY not in json.dumps(info.value.to_dict())
    after = await ai.get_ai_settings("shop-a", "u1")
    assert after["model"] == "openai:gpt-4o-mini" and after["keys"] == {}


async def test_storing_a_key_without_secret_key_is_a_clear_error(ai):
    ai.settings = ai.settings.replace(secret_key=None)
    with pytest.raises(Unavailable) as info:
        await ai.put_ai_settings("shop-a", "u1", {"keys": {"openai": KEY}})
    assert info.value.code == "secret_key_missing" and "SECRET_KEY" in info.value.message
    await ai.put_ai_settings("shop-a", "u1", {"model": "openai:gpt-4o-mini"})  # a model needs no secret


def _job(tenant, user, model=None):
    return {"tenant_id": tenant, "user_id": user, "model": model}


async def test_resolution_order(ai, pool):
    s = ai.settings.replace(openai_api_key="sk-platform-0000000000", default_model="offline:template")
    # nothing stored: default model, then platform key
    r = await resolve(_job("shop-r", "u1"), s, pool, APP)
    assert r.full_model == "offline:template"
    r = await resolve(_job("shop-r", "u1", "openai:gpt-4o"), s, pool, APP)
    assert r.api_key == "sk-platform-0000000000"
    # the user's preferred model beats the default; the job's model beats both
    await ai.put_ai_settings("shop-r", "u1", {"model": "openai:gpt-4o-mini", "keys": {"openai": KEY}})
    r = await resolve(_job("shop-r", "u1"), s, pool, APP)
    assert (r.full_model, r.api_key) == ("openai:gpt-4o-mini", KEY)
    r = await resolve(_job("shop-r", "u1", "offline:template"), s, pool, APP)
    assert r.full_model == "offline:template"
    # the user's stored key for another provider is not used; no platform key -> missing_api_key
    with pytest.raises(FatalError) as info:
        await resolve(_job("shop-r", "u1", "anthropic:claude-3-5-haiku-latest"), s, pool, APP)
    assert info.value.code == "missing_api_key"
    # a tenant-level setting (no user) is separate from the user's
    r = await resolve(_job("shop-r", None), s, pool, APP)
    assert r.full_model == "offline:template"


async def test_rotation_with_previous_secret(ai, pool):
    await ai.put_ai_settings("shop-k", "u1", {"keys": {"openai": KEY}})
    rotated = ai.settings.replace(secret_key="test-secret-key-two", secret_key_previous="test-secret-key-one")
    # before rotating, reads fall back to the previous secret
    assert (await resolve(_job("shop-k", "u1", "openai:gpt-4o"), rotated, pool, APP)).api_key == KEY
    assert await aisettings.rotate(pool, rotated) == {"rotated": 1, "current": 0, "unreadable": 0}
    only_new = rotated.replace(secret_key_previous=None)
    assert (await resolve(_job("shop-k", "u1", "openai:gpt-4o"), only_new, pool, APP)).api_key == KEY
    # a server with a different secret cannot read it: fatal, with advice, without the key
    with pytest.raises(FatalError) as info:
        await resolve(_job("shop-k", "u1", "openai:gpt-4o"), ai.settings.replace(secret_key="other"), pool, APP)
    assert info.value.code == "bad_api_key" and KEY not in info.value.message


def test_ciphertext_is_bound_to_its_owner(settings):
    s = settings.replace(secret_key="k1")
    sealed = secrets.encrypt(s, KEY, "a")
    assert secrets.decrypt(s, sealed, "a") == KEY
    with pytest.raises(secrets.DecryptError):
        secrets.decrypt(s, sealed, "b")


@pytest.mark.parametrize("key, masked", [("sk-proj-abcdefghijklmnop1234", "sk-…1234"),
                                         ("r8_abcdefghijklmnopWXYZ", "r8_…WXYZ"),
                                         ("AIzaSyabcdefghijkl9876", "AI…9876"), ("shortkey", "…")])
def test_mask(key, masked):
    assert secrets.mask(key) == masked


@pytest.mark.parametrize("model", ["mystery:x", "openai:llama-3", "anthropic:gpt-4o", "replicate:flux"])
async def test_unknown_models_are_refused_at_enqueue(client, pool, model):
    with pytest.raises(InvalidInput) as info:
        await client.enqueue("shop-m", {"source": {"type": "keyword", "keyword": "tea"}, "model": model})
    assert info.value.code == "invalid_input" and info.value.details == {"field": "job.model"}
    assert await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE tenant_id = 'shop-m'") == 0
