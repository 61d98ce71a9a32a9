"""Wix's App Instance Installed/Removed webhooks: verified with the app's public key, then applied."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from blogqueue.client import Client
from blogqueue.settings import Settings, SettingsError
from blogqueue.testing.fake_wix import FakeWix
from tests.http_fixtures import Api, assert_error
from tests.openapi_contract import check

from .conftest import keyword_jobs, wait_until

APP_ID = "5f7c1e2a-0b1d-4e3f-9a8b-7c6d5e4f3a2b"
APP_SECRET = "wixsecret-webhook-test-0123456789"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], sig: bytes = b"x" * 256) -> bytes:
    head, body = b64(json.dumps(header).encode()), b64(json.dumps(claims).encode())
    return f"{head}.{body}.{b64(sig)}".encode()


@pytest.fixture
def wix() -> Any:
    with FakeWix(app_id=APP_ID, app_secret=APP_SECRET) as fake:
        yield fake


async def post(api: Api, settings: Settings, body: bytes) -> Any:
    anon = await api.client(settings=settings)
    return await anon.post("/v1/wix/webhooks", content=body, headers={"Content-Type": "text/plain"})


async def test_installed_links_the_instance_and_removed_unlinks_it(api: Api, settings: Settings, wix: FakeWix,
                                                                    pool: asyncpg.Pool) -> None:
    conf = settings.replace(wix_public_key=wix.public_key_pem)
    inst = str(uuid.uuid4())
    first = await post(api, conf, wix.webhook("AppInstalled", inst))
    check(first)
    assert first.status_code == 200 and first.json() == {"event": "AppInstalled", "action": "linked"}
    again = await post(api, conf, wix.webhook("AppInstalled", inst, stringify=False))  # a redelivery
    assert again.json()["action"] == "already_linked"
    row = await pool.fetchrow("SELECT tenant_id, instance_id, source FROM bq_wix_installations")
    assert dict(row) == {"tenant_id": inst, "instance_id": inst, "source": "webhook"}
    other = await post(api, conf, wix.webhook("SomethingElse", inst))
    assert other.json()["action"] == "ignored"
    removed = await post(api, conf, wix.webhook("AppRemoved", inst))
    assert removed.json() == {"event": "AppRemoved", "action": "unlinked"}
    assert await pool.fetchval("SELECT count(*) FROM bq_wix_installations") == 0


async def test_a_link_made_by_the_platform_is_left_alone(api: Api, settings: Settings, wix: FakeWix,
                                                         pool: asyncpg.Pool) -> None:
    conf = settings.replace(wix_public_key=wix.public_key_pem)
    inst = str(uuid.uuid4())
    await Client(conf, pool).put_wix_installation("merchant-42", {"instance_id": inst})
    resp = await post(api, conf, wix.webhook("AppInstalled", inst))
    assert resp.json()["action"] == "already_linked"
    assert [dict(r) for r in await pool.fetch("SELECT tenant_id, source FROM bq_wix_installations")] == [
        {"tenant_id": "merchant-42", "source": "api"}]


async def test_forgeries_are_refused_and_change_nothing(api: Api, settings: Settings, wix: FakeWix,
                                                        pool: asyncpg.Pool) -> None:
    conf = settings.replace(wix_public_key=wix.public_key_pem)
    inst = str(uuid.uuid4())
    good = wix.webhook("AppInstalled", inst)
    head, _payload, sig = good.split(b".")
    claims = {"data": {"eventType": "AppInstalled", "instanceId": inst}, "exp": time.time() + 60}
    # Another key's signature: a second fake app signs the same event.
    with FakeWix(app_id=APP_ID, app_secret=APP_SECRET) as impostor:
        other_key = impostor.webhook("AppInstalled", inst)
    pem = wix.public_key_pem.encode()
    hs = forged({"alg": "HS256"}, claims)
    h, p, _ = hs.split(b".")
    hs = h + b"." + p + b"." + b64(hmac.new(pem, h + b"." + p, hashlib.sha256).digest()).encode()
    bodies = {
        "another key": other_key,
        "alg none": forged({"alg": "none"}, claims, b""),
        "HS256 keyed with the public key": hs,
        "payload swapped": head + b"." + b64(json.dumps(claims).encode()).encode() + b"." + sig,
        "expired": wix.webhook("AppInstalled", inst, ttl_s=-10),
        "not a JWT": b"hello",
        "empty": b"",
    }
    for what, body in bodies.items():
        resp = await post(api, conf, body)
        check(resp)
        assert_error(resp, 401, "wix_webhook_unverified")
        assert await pool.fetchval("SELECT count(*) FROM bq_wix_installations") == 0, what
    # Without a configured public key nothing is accepted, not even a good body.
    assert_error(await post(api, settings, good), 401, "wix_webhook_unverified")
    assert await pool.fetchval("SELECT count(*) FROM bq_wix_installations") == 0


def test_the_public_key_setting_is_checked_at_start() -> None:
    with pytest.raises(SettingsError, match="BLOGQUEUE_WIX_PUBLIC_KEY"):
        Settings.from_env({"BLOGQUEUE_WIX_PUBLIC_KEY": "not a key"})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    one_line = pem.replace("\n", "\\n")  # a PEM in one environment line
    assert Settings.from_env({"BLOGQUEUE_WIX_PUBLIC_KEY": one_line}).wix_public_key == one_line


async def test_an_installation_registered_by_webhook_publishes(api: Api, settings: Settings, pool: asyncpg.Pool,
                                                               workers: Any) -> None:
    inst = str(uuid.uuid4())
    with FakeWix(app_id=APP_ID, app_secret=APP_SECRET, instances={inst: "site-hooked"}) as wix:
        conf = settings.replace(wix_public_key=wix.public_key_pem)
        assert (await post(api, conf, wix.webhook("AppInstalled", inst))).json()["action"] == "linked"
        workers(1, publisher="wix", wix_base_url=wix.url, wix_app_id=APP_ID, wix_app_secret=APP_SECRET)
        bq = Client(conf, pool)
        out = await bq.enqueue(inst, keyword_jobs(1, image=False))
        job_id = out.jobs[0].id

        async def finished() -> dict[str, Any] | None:
            job = await bq.get_job(job_id)
            return job if job.status in ("done", "failed") else None
        job = await wait_until(finished, what="the job to finish")
        assert job.status == "done", job.last_error
        assert wix.drafts[job_id]["siteId"] == "site-hooked"
