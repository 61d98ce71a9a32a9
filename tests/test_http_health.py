"""healthz, readyz, and recovery when a Redis this test owns is stopped and started again."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blogqueue.settings import Settings
from tests.conftest import _free_port, wait_until
from tests.http_fixtures import Api, assert_error


class OwnRedis:
    """A redis-server on a fixed spare port that the test may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for this test"
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server binary not found")
    r = OwnRedis(tmp_path)
    r.start()
    yield r
    r.stop()


async def test_healthz_and_readyz(api: Api) -> None:
    c = await api.client()
    assert (await c.get("/healthz")).json() == {"status": "ok"}
    ready = await c.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready",
                                                         "checks": {"postgresql": "ok", "redis": "ok"}}


async def test_readyz_names_redis_while_down_and_recovers(api: Api, settings: Settings,
                                                          own_redis: OwnRedis) -> None:
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
