"""Fixtures: a fresh PostgreSQL database and a private Redis server per test session.

Nothing here is a stand-in: tests talk to real PostgreSQL (the server at
BLOGQUEUE_DATABASE_URL, in a database of their own) and to a redis-server this
session starts itself, so a test may FLUSHALL it without touching anyone else's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from blogqueue import credits, db
from blogqueue.client import Client
from blogqueue.settings import Settings
from testkit import waiting
from testkit.databases import fresh_database, with_database
from testkit.processes import BLOGQUEUE_WORKER, RedisServer, WorkerProcess, free_port, redis_binary

# HTTP service fixtures (api, make_token) live in their own module.
pytest_plugins = ["tests.http_fixtures"]

BASE = Settings.from_env()
TABLES = ("bq_job_events, bq_job_stages, bq_jobs, bq_batches, bq_workers, bq_tenants, bq_credit_ledger, "
          "bq_tokens, bq_ai_settings, bq_provider_keys, bq_wix_installations, bq_provider_batches")


def _free_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this session's own; the configured one (db 13) if none can be started."""
    if redis_binary() is None:
        yield with_database(BASE.redis_url, "13")  # a db number of its own
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url() -> AsyncIterator[str]:
    async with fresh_database(BASE, f"bq_test_{os.getpid()}") as url:
        yield url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(BASE.replace(database_url=database_url), max_size=8)
    yield p
    await p.close()


@pytest_asyncio.fixture(loop_scope="session")
async def settings(database_url: str, redis_url: str, pool: asyncpg.Pool,
                   tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for one test: clean tables, a queue of its own, fast leases and retries.

    After the test (its workers are killed first), the credit ledger must be
    consistent: see blogqueue.credits and the `credit_violations` query.
    """
    await pool.execute(f"TRUNCATE {TABLES} CASCADE")
    yield BASE.replace(
        database_url=database_url, redis_url=redis_url, queue_name=f"test-{uuid.uuid4().hex[:8]}",
        worker_concurrency=4, heartbeat_seconds=0.5, lease_seconds=4.0, dispatch_poll_seconds=0.2,
        retry_schedule=(0.3, 0.3, 0.3), status_log_seconds=2.0, shutdown_grace_seconds=2,
        offline_latency_ms=0.0, offline_call_log=str(tmp_path / "calls.jsonl"), db_pool_size=5,
        max_backlog=100_000, max_tenant_backlog=10_000, max_inflight_per_tenant=20,
        token_cache_seconds=0.5,  # a revoked token is refused within this (blogqueue.tokens.TokenCache)
    )
    assert await credits.violations(pool) == [], "the credit ledger is inconsistent"


@pytest_asyncio.fixture(loop_scope="session")
async def client(settings: Settings, pool: asyncpg.Pool) -> Client:
    return Client(settings, pool)


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., list[WorkerProcess]]]:
    """Starts real `blogqueue worker` processes; all are killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(n: int = 1, argv: tuple[str, ...] = BLOGQUEUE_WORKER, **overrides: Any) -> list[WorkerProcess]:
        procs = []
        for _ in range(n):
            log = tmp_path / f"worker-{len(started)}.log"
            w = WorkerProcess(settings.replace(**overrides), log, argv).start()
            started.append(w)
            procs.append(w)
        return procs

    yield start
    for w in started:
        w.kill()
    for log in sorted(tmp_path.glob("worker-*.log")):
        print(f"--- {log.name} (last lines)")
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


wait_until = waiting.wait_until  # tests import it from here


def read_calls(settings: Settings) -> list[dict[str, Any]]:
    """The offline provider's call log: one entry per (would-be paid) provider call."""
    import json

    path = Path(settings.offline_call_log or "")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def keyword_jobs(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"source": {"type": "keyword", "keyword": f"topic {i}"}, **extra} for i in range(n)]
