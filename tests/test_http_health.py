"""healthz, readyz, and recovery when a Redis this test owns is stopped and started again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from blogqueue.settings import Settings
from testkit.processes import RedisServer
from tests.conftest import _free_port, wait_until
from tests.http_fixtures import Api, assert_error


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    r = RedisServer(tmp_path).start()
    yield r
    r.stop()


async def test_healthz_and_readyz(api: Api) -> None:
    c = await api.client()
    assert (await c.get("/healthz")).json() == {"status": "ok"}
    ready = await c.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready",
                                                         "checks": {"postgresql": "ok", "redis": "ok"}}


async def test_readyz_names_redis_while_down_and_recovers(api: Api, settings: Settings,
                                                          own_redis: RedisServer) -> None:
    c = await api.client(settings=settings.replace(redis_url=f"redis://127.0.0.1:{own_redis.port}/0",
                                                   ready_timeout_seconds=0.5))
    assert (await c.get("/readyz")).status_code == 200
    own_redis.stop()
    resp = await c.get("/readyz")
    err = assert_error(resp, 503, "unavailable")
    assert err["details"]["failing"] == ["redis"] and err["details"]["checks"]["postgresql"] == "ok"
    assert "redis" in err["message"]
    own_redis.start()

    async def ready() -> bool:
        return (await c.get("/readyz")).status_code == 200

    await wait_until(ready, timeout=15, what="readyz to recover after redis restarted")


async def test_readyz_names_postgresql_when_down(api: Api, settings: Settings) -> None:
    dead = settings.replace(database_url=f"postgresql://postgres@127.0.0.1:{_free_port()}/x",
                            ready_timeout_seconds=0.5)
    c = await api.client(settings=dead)
    err = assert_error(await c.get("/readyz"), 503, "unavailable")
    assert err["details"]["failing"] == ["postgresql"] and err["details"]["checks"]["redis"] == "ok"
