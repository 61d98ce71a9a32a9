"""The job view cache (blogqueue.jobviews) through the real app and real PostgreSQL: a change is
visible within the documented bound, own writes at once, tenants stay apart, memory is bounded."""

from __future__ import annotations

import time

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from blogqueue import jobviews
from blogqueue.client import Client
from blogqueue.settings import Settings, SettingsError
from tests.conftest import wait_until
from tests.http_fixtures import Api, TokenFactory, keyword


def _http(api: Api, app: Starlette, token: str) -> httpx.AsyncClient:
    c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bq.test",
                          headers={"Authorization": f"Bearer {token}"})
    api._stack.append(c)
    return c


async def _open(api: Api, settings: Settings, token: str) -> tuple[httpx.AsyncClient, Client]:
    """An HTTP client on an app of its own (one service process) and that app's library client."""
    app = await api.app(settings)
    client: Client = app.state.client
    return _http(api, app, token), client


async def _cached_view(c: httpx.AsyncClient, client: Client, job_id: str) -> dict[str, object]:
    """Reads the job until a read is answered from the cache (the event stream's poller is live)."""
    async def served_from_cache() -> bool:
        before = client._views.hits if client._views else 0
        assert (await c.get(f"/v1/jobs/{job_id}")).status_code == 200
        return client._views is not None and client._views.hits > before

    await wait_until(served_from_cache, timeout=15, interval=0.05, what="a view served from the cache")
    view: dict[str, object] = (await c.get(f"/v1/jobs/{job_id}")).json()
    return view


async def _enqueue(c: httpx.AsyncClient, n: int = 1) -> list[str]:
    resp = await c.post("/v1/jobs", json={"jobs": keyword(n)})
    assert resp.status_code == 202, resp.text
    return [j["id"] for j in resp.json()["jobs"]]


async def test_another_process_change_is_visible_within_the_bound(
        api: Api, make_token: TokenFactory, settings: Settings, pool: asyncpg.Pool) -> None:
    # A long age bound: only the event stream can make the change visible in time.
    s = settings.replace(job_cache_seconds=60)
    c, _client = await _open(api, s, await make_token("shop-a"))
    [job_id] = await _enqueue(c)
    assert (await _cached_view(c, _client, job_id))["status"] == "queued"

    # Another process (its own client, so its own cache) stops the job.
    other = Client(s, pool)
    await other.stop_job(job_id, "shop-a")
    stopped_at = time.monotonic()

    async def cancelled() -> bool:
        return (await c.get(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"

    await wait_until(cancelled, timeout=10, interval=0.02, what="the stop to show")
    bound = s.events_poll_seconds + jobviews.LIVE_SLACK_S
    assert time.monotonic() - stopped_at <= bound, "a change with an event showed later than documented"
    events = (await c.get(f"/v1/jobs/{job_id}")).json()["events"]
    assert [e["event"] for e in events][-1] == "cancelled"


async def test_own_stop_shows_at_once(api: Api, make_token: TokenFactory, settings: Settings) -> None:
    s = settings.replace(job_cache_seconds=60)
    c, client = await _open(api, s, await make_token("shop-a"))
    ids = await _enqueue(c, 3)
    for job_id in ids:
        assert (await _cached_view(c, client, job_id))["status"] == "queued"
    assert (await c.post(f"/v1/jobs/{ids[0]}/stop")).status_code == 200
    assert (await c.get(f"/v1/jobs/{ids[0]}")).json()["status"] == "cancelled"
    assert (await c.post("/v1/stop")).json() == {"cancelled": 2, "stopping": 0}
    assert [(await c.get(f"/v1/jobs/{i}")).json()["status"] for i in ids[1:]] == ["cancelled"] * 2


async def test_a_change_without_an_event_shows_within_the_age_bound(
        api: Api, make_token: TokenFactory, settings: Settings, pool: asyncpg.Pool) -> None:
    ttl = 1.0
    s = settings.replace(job_cache_seconds=ttl)
    c, client = await _open(api, s, await make_token("shop-a"))
    [job_id] = await _enqueue(c)
    assert (await _cached_view(c, client, job_id))["attempts"] == 0
    # What a dispatch changes without writing an event: the attempt number.
    await pool.execute("UPDATE bq_jobs SET attempt = attempt + 1 WHERE id = $1::uuid", job_id)
    changed_at = time.monotonic()

    async def seen() -> bool:
        return (await c.get(f"/v1/jobs/{job_id}")).json()["attempts"] == 1

    await wait_until(seen, timeout=10, interval=0.02, what="the new attempt number")
    assert time.monotonic() - changed_at <= ttl + 0.5


async def test_tenants_stay_apart_and_admins_read_all(
        api: Api, make_token: TokenFactory, settings: Settings) -> None:
    app = await api.app(settings)
    client: Client = app.state.client
    a = _http(api, app, await make_token("shop-a"))
    [job_id] = await _enqueue(a)
    await _cached_view(a, client, job_id)
    for token, status in ((await make_token("shop-b"), 404), (await make_token("ops", admin=True), 200)):
        other = _http(api, app, token)
        hits = client._views.hits if client._views else 0
        resp = await other.get(f"/v1/jobs/{job_id}")
        assert resp.status_code == status, resp.text
        assert client._views is not None and client._views.hits == hits + 1  # the same cached entry
        if status == 404:
            assert resp.json()["error"]["code"] == "not_found" and "shop-a" not in resp.text


async def test_memory_is_bounded(api: Api, make_token: TokenFactory, settings: Settings) -> None:
    budget = 65_536
    c, client = await _open(api, settings.replace(job_cache_bytes=budget), await make_token("shop-a"))
    ids = await _enqueue(c, 200)  # ~700 bytes a view: more than the budget holds
    await _cached_view(c, client, ids[0])
    for job_id in ids:
        assert (await c.get(f"/v1/jobs/{job_id}")).status_code == 200
    assert client._views is not None
    assert 0 < client._views.bytes <= budget
    assert 0 < len(client._views) < len(ids)
    assert client._views.bytes == sum(len(v.body) for v in client._views._entries.values()
                                      if isinstance(v, jobviews.View))


def test_settings_fail_early_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="BLOGQUEUE_JOB_CACHE_BYTES"):
        Settings.from_env({"BLOGQUEUE_JOB_CACHE_BYTES": "1000"})
    with pytest.raises(SettingsError, match="BLOGQUEUE_JOB_CACHE_SECONDS"):
        Settings.from_env({"BLOGQUEUE_JOB_CACHE_SECONDS": "-1"})


async def test_a_stopped_poller_still_keeps_the_bound(
        api: Api, make_token: TokenFactory, settings: Settings, pool: asyncpg.Pool) -> None:
    s = settings.replace(job_cache_seconds=60)
    c, client = await _open(api, s, await make_token("shop-a"))
    [job_id] = await _enqueue(c)
    await _cached_view(c, client, job_id)
    # The poller stops (as when its queries fail): nothing invalidates any more.
    assert client._events is not None
    await client._events.close()
    await Client(s, pool).stop_job(job_id, "shop-a")
    stopped_at = time.monotonic()

    async def cancelled() -> bool:
        return (await c.get(f"/v1/jobs/{job_id}")).json()["status"] == "cancelled"

    await wait_until(cancelled, timeout=10, interval=0.02, what="the stop to show without the poller")
    assert time.monotonic() - stopped_at <= s.events_poll_seconds + jobviews.LIVE_SLACK_S + 0.2
