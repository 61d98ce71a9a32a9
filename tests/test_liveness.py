"""Liveness (issue #17): a frozen leader, a partitioned worker, a PostgreSQL restart.

Each case runs real worker processes against real PostgreSQL and Redis and breaks
them the way a bad day would: SIGSTOP (a host that stops answering and keeps its
sockets), a network namespace whose veth goes down (a real partition), `pg_ctl
restart -m fast`. The short versions run in `make test`; the long ones (`chaos`
mark) in `make chaos`. Every case checks that nothing finished or was published
twice (the webhook receiver counts deliveries by Idempotency-Key) and that the
broken process came back without a restart.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from arq.connections import ArqRedis

from blogqueue import db, tokens
from blogqueue.client import Client
from blogqueue.db import Q
from blogqueue.dispatcher import Dispatcher
from blogqueue.redisconn import arq_redis
from blogqueue.settings import Settings
from blogqueue.testing.fake_webhook import FakeWebhookReceiver
from testkit.processes import NetNamespace, PostgresCluster, RedisServer, WorkerProcess, postgres_bindir

from .conftest import keyword_jobs, wait_until
from .http_fixtures import Api

SECRET = "whsec-liveness-0123456789"


# -- helpers ---------------------------------------------------------------------------

async def registered(pool: asyncpg.Pool, proc: WorkerProcess, timeout: float = 90) -> str:
    """The worker id a worker process registered under."""
    async def row() -> str | None:
        return await pool.fetchval("SELECT id FROM bq_workers WHERE pid = $1 AND stopped_at IS NULL "
                                   "ORDER BY started_at DESC LIMIT 1", proc.pid)
    return await wait_until(row, timeout=timeout, what=f"worker {proc.pid} to register")


async def current_id(pool: asyncpg.Pool, proc: WorkerProcess) -> str | None:
    """The id a process runs under now: `blogqueue worker` registers anew when it restarts its arq loop."""
    return await pool.fetchval("SELECT id FROM bq_workers WHERE pid = $1 AND stopped_at IS NULL "
                               "ORDER BY started_at DESC LIMIT 1", proc.pid)


async def follows_again(pool: asyncpg.Pool, proc: WorkerProcess, since: float) -> bool:
    """The process heartbeats again after `since`, and not as the leader."""
    return bool(await pool.fetchval("SELECT heartbeat_at > to_timestamp($2) AND NOT is_leader FROM bq_workers "
                                    "WHERE pid = $1 AND stopped_at IS NULL ORDER BY started_at DESC LIMIT 1",
                                    proc.pid, since))


async def leads(pool: asyncpg.Pool, queue: str, worker_id: str) -> asyncpg.Record | None:
    row = await pool.fetchrow("SELECT epoch, holder, lease_until > now() AS live FROM bq_leader "
                              "WHERE queue_name = $1", queue)
    return row if row is not None and row["holder"] == worker_id and row["live"] else None


async def count_done(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'done'")


def deliveries_by_key(receiver: FakeWebhookReceiver) -> Counter[str]:
    with receiver.lock:
        return Counter(r.headers.get("idempotency-key", "") for r in receiver.requests if r.method == "POST")


async def assert_once_each(pool: asyncpg.Pool, receiver: FakeWebhookReceiver, total: int,
                           may_redeliver: set[str]) -> None:
    """Every job done, exactly one `done` each, every post delivered under its own key.

    A redelivery (same key, dropped by the receiver) is allowed only for a job whose
    request was in flight on the broken worker when it broke: the retry cannot know
    whether the first request arrived, and the key is what makes sending it again safe.
    """
    assert await count_done(pool) == total
    done_events = await pool.fetch("SELECT job_id, count(*) AS n FROM bq_job_events WHERE event = 'done' "
                                   "GROUP BY job_id")
    assert len(done_events) == total and {r["n"] for r in done_events} == {1}
    ids = {str(r["id"]) for r in await pool.fetch("SELECT id FROM bq_jobs")}
    posts = deliveries_by_key(receiver)
    assert set(posts) == ids and set(receiver.deliveries) == ids
    assert receiver.bad_signatures == 0
    twice = {k for k, n in posts.items() if n > 1}
    assert twice <= may_redeliver, f"published again without having been in flight: {twice - may_redeliver}"


async def running_on(pool: asyncpg.Pool, worker_id: str) -> set[str]:
    rows = await pool.fetch("SELECT id FROM bq_jobs WHERE status = 'running' AND worker_id = $1", worker_id)
    return {str(r["id"]) for r in rows}


async def first_dispatch_after(pool: asyncpg.Pool, t: float) -> float | None:
    return await pool.fetchval("SELECT extract(epoch FROM min(dispatched_at))::float8 FROM bq_jobs "
                               "WHERE dispatched_at > to_timestamp($1)", t)


async def started_by(pool: asyncpg.Pool, worker_id: str, batch_id: str) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM bq_job_events e JOIN bq_jobs j ON j.id = e.job_id "
        "WHERE e.event = 'started' AND e.detail->>'worker' = $1 AND j.batch_id = $2::uuid", worker_id, batch_id)


def _print_tails(directory: Path, pattern: str) -> None:
    for log in sorted(directory.glob(pattern)):
        print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))


def logged(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


# -- fencing, without processes ------------------------------------------------------------

async def test_a_stale_epoch_changes_nothing(client: Client, pool: asyncpg.Pool, settings: Settings) -> None:
    """The leader of an old term hands out, promotes and reaps nothing; its renewal is refused."""
    s = settings
    await pool.execute(Q["register_worker"], "w", s.queue_name, "h", 1, 50, 0, ["blog_post"])
    out = await client.enqueue("shop-a", keyword_jobs(10))
    await pool.execute("UPDATE bq_jobs SET status = 'scheduled', run_at = now() - interval '1 s' "
                       "WHERE id = $1::uuid", out.jobs[0].id)
    redis: ArqRedis = arq_redis(s)
    try:
        old, new = Dispatcher(s, pool, redis, holder="old"), Dispatcher(s, pool, redis, holder="new")
        first = await pool.fetchrow(Q["leader_acquire"], s.queue_name, old.holder, 30.0)
        assert await pool.fetchrow(Q["leader_acquire"], s.queue_name, new.holder, 30.0) is None  # live lease
        old.epoch = first["epoch"]
        # The old leader froze; its lease lapsed and the other worker took over.
        await pool.execute("UPDATE bq_leader SET lease_until = now() - interval '1 s' WHERE queue_name = $1",
                           s.queue_name)
        second = await pool.fetchrow(Q["leader_acquire"], s.queue_name, new.holder, 30.0)
        assert second["epoch"] == first["epoch"] + 1 and second["previous_holder"] == "old"
        new.epoch = second["epoch"]

        assert await old.cycle() is False and old.dispatched == 0  # woke up: fenced
        assert await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = 'scheduled'") == 1
        assert await pool.fetchval(Q["leader_renew"], s.queue_name, old.epoch, 30.0) is None
        await new.cycle()
        assert new.dispatched == 10 and await redis.zcard(s.queue_name) == 10

        # A lapsed job lease is reaped by the current term only.
        await pool.execute("UPDATE bq_jobs SET lease_until = now() - interval '1 s' WHERE id = $1::uuid",
                           out.jobs[1].id)
        assert await pool.fetch(Q["reap_leases"], 4, 100, s.queue_name, old.epoch) == []
        assert len(await pool.fetch(Q["reap_leases"], 4, 100, s.queue_name, new.epoch)) == 1
    finally:
        await redis.delete(s.queue_name)
        await redis.aclose()


# -- dead-peer bounds ---------------------------------------------------------------------

async def test_connections_carry_dead_peer_bounds(settings: Settings) -> None:
    """Both ends of every PostgreSQL connection, and every Redis client, give up on a silent peer."""
    import socket

    s = settings.replace(lease_seconds=12.0, heartbeat_seconds=2.0)
    conn = await db.connect(s, "bounds check")
    try:
        shown = {name: await conn.fetchval(f"SHOW {name}") for name in
                 ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout",
                  "application_name")}
        sock = conn._transport.get_extra_info("socket")  # type: ignore[attr-defined]
        client_side = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                       sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
    finally:
        await conn.close()
    assert shown == {"tcp_keepalives_idle": "6", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3",
                     "tcp_user_timeout": "12000", "application_name": "bounds check"}
    assert client_side == (1, 6, 12000)
    redis = arq_redis(s)
    try:
        kw = redis.connection_pool.connection_kwargs
        assert kw["socket_timeout"] == 6.0 and kw["socket_connect_timeout"] == 5.0 and kw["socket_keepalive"]
        assert await redis.ping()
    finally:
        await redis.aclose()


# -- 1. the leader frozen --------------------------------------------------------------------

@pytest.mark.parametrize(("lease", "freeze_s", "jobs"), [
    pytest.param(3.0, 10.0, 80, id="short"),
    pytest.param(15.0, 60.0, 400, id="60s", marks=pytest.mark.chaos),
])
async def test_frozen_leader_is_replaced_within_a_lease(lease: float, freeze_s: float, jobs: int,
                                                        client: Client, pool: asyncpg.Pool, settings: Settings,
                                                        workers: Any, tmp_path: Path) -> None:
    q = settings.queue_name
    with FakeWebhookReceiver(SECRET) as receiver:
        conf = dict(publisher="webhook", webhook_url=receiver.url, webhook_secret=SECRET, lease_seconds=lease,
                    heartbeat_seconds=0.5, offline_latency_ms=100.0)
        (a,) = workers(1, **conf)
        a_id = await registered(pool, a)
        before = await wait_until(lambda: leads(pool, q, a_id), what="the first worker to lead")
        (b,) = workers(1, **conf)
        b_id = await registered(pool, b)
        out = await client.enqueue("shop-a", keyword_jobs(jobs, image=False))
        await wait_until(lambda: _at_least(pool, 20), what="the first jobs to finish")

        in_flight = await running_on(pool, a_id)
        frozen_at = time.time()
        a.freeze()
        try:
            # Anything dispatched more than a moment after the freeze was dispatched by B (A's
            # last statement, sent before SIGSTOP, may still have been executing).
            first = await wait_until(lambda: first_dispatch_after(pool, frozen_at + 0.5), timeout=lease + 30,
                                     what="the other worker to dispatch again")
            takeover_s = first - frozen_at
            after = await leads(pool, q, b_id)
            assert after is not None and after["epoch"] > before["epoch"]
            print(f"\nTAKEOVER lease={lease}s heartbeat=0.5s: leader frozen -> other worker dispatches "
                  f"in {takeover_s:.2f} s (bound LEASE_SECONDS + 5 = {lease + 5:.0f} s)")
            assert takeover_s <= lease + 5
            # The fault lasts its full length whatever happens meanwhile.
            await asyncio.sleep(max(0.0, frozen_at + freeze_s - time.time()))
            in_flight |= await running_on(pool, a_id)  # attempts A still held when its lease lapsed
        finally:
            a.thaw()
        thawed_at = time.time()

        async def finished() -> bool:
            return (await client.get_batch(out.batch_id)).finished
        await wait_until(finished, timeout=120, what="every job to finish")

        # A woke as a stale leader: it notices, stops dispatching and follows.
        await wait_until(lambda: follows_again(pool, a, thawed_at), timeout=30,
                         what="the woken leader to heartbeat again as a follower")
        assert await leads(pool, q, b_id) is not None
        assert logged(tmp_path / "worker-0.log", "no longer the leader") or \
            logged(tmp_path / "worker-0.log", "connection failed")

        # ... and takes work again without a restart.
        more = await client.enqueue("shop-b", keyword_jobs(40, image=False))
        await wait_until(lambda: _batch_done(client, more.batch_id), timeout=60, what="work after the thaw")
        assert await started_by(pool, await current_id(pool, a) or "", more.batch_id) > 0
        assert a.alive() and b.alive()
        await assert_once_each(pool, receiver, jobs + 40, in_flight)


async def _at_least(pool: asyncpg.Pool, n: int) -> bool:
    return await count_done(pool) >= n


async def _batch_done(client: Client, batch_id: str) -> bool:
    return (await client.get_batch(batch_id)).finished


# -- private services for the partition and the restart -----------------------------------

def _free_block() -> tuple[str, str]:
    """A /30 of our own in 10.213.0.0/16 that no interface of this host uses yet."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    for n in range(os.getpid() % 200, os.getpid() % 200 + 200):
        third, fourth = 10 + n % 240, 4 * (n // 240)
        prefix = f"10.213.{third}."
        if prefix not in used:
            return f"{prefix}{fourth + 1}", f"{prefix}{fourth + 2}"
    raise RuntimeError("no free /30 in 10.213.0.0/16")


@pytest_asyncio.fixture(loop_scope="session")
async def netns() -> AsyncIterator[NetNamespace]:
    why = NetNamespace.unavailable()
    if why is not None:
        pytest.skip(f"network namespaces cannot be created here: {why}")
    host_addr, ns_addr = _free_block()
    ns = NetNamespace(f"bq{os.getpid() % 100000}", host_addr, ns_addr).create()
    try:
        yield ns
    finally:
        ns.delete()


async def _private_database(cluster: PostgresCluster, base: Settings) -> str:
    admin = await asyncpg.connect(cluster.url(), timeout=10)
    try:
        await admin.execute("CREATE DATABASE blogqueue")
    finally:
        await admin.close()
    url = cluster.url("blogqueue")
    await db.migrate(base.replace(database_url=url))
    return url


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_factory() -> AsyncIterator[Any]:
    if postgres_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) for a private cluster: "
                    "apt-get install -y postgresql, or `make services` for the embedded one")
    made: list[PostgresCluster] = []

    def make(host: str = "127.0.0.1") -> PostgresCluster:
        c = PostgresCluster(host).init().start()
        made.append(c)
        return c
    yield make
    for c in made:
        c.remove()


# -- 2. a worker cut off by a real network partition ----------------------------------------

@pytest.mark.parametrize(("lease", "jobs"), [
    pytest.param(3.0, 16, id="short"),
    pytest.param(10.0, 40, id="long", marks=pytest.mark.chaos),
])
async def test_partitioned_worker_is_fenced_and_recovers(lease: float, jobs: int, settings: Settings,
                                                         netns: NetNamespace, cluster_factory: Any,
                                                         tmp_path: Path) -> None:
    """Worker P runs in a namespace whose only link to PostgreSQL, Redis and the webhook receiver
    is its veth. The link goes down for 2 x LEASE_SECONDS while P runs attempts (and leads)."""
    host = netns.host_addr
    cluster = cluster_factory(host)
    redis = RedisServer(tmp_path, host=host).start()
    receiver = FakeWebhookReceiver(SECRET)
    receiver.host = host
    procs: list[WorkerProcess] = []
    pool: asyncpg.Pool | None = None
    try:
        receiver.start()
        url = await _private_database(cluster, settings)
        s = settings.replace(database_url=url, redis_url=redis.url, publisher="webhook", webhook_url=receiver.url,
                             webhook_secret=SECRET, lease_seconds=lease, heartbeat_seconds=0.5)
        pool = await db.create_pool(s, max_size=4)
        client = Client(s, pool)
        p = WorkerProcess(s, tmp_path / "worker-p.log", netns=netns.name).start()
        procs.append(p)
        p_id = await registered(pool, p)
        await wait_until(lambda: leads(pool, s.queue_name, p_id), what="the namespaced worker to lead")
        h = WorkerProcess(s, tmp_path / "worker-h.log").start()
        procs.append(h)
        h_id = await registered(pool, h)
        # Each content call takes longer than the partition: P is mid-call when cut off and
        # tries to checkpoint after the link is back, long after its lease lapsed.
        slow = f"offline:slow-{int(lease * 2 * 1000 + 2000)}"
        out = await client.enqueue("shop-a", keyword_jobs(jobs, image=False, model=slow))

        async def p_running() -> set[str]:
            return await running_on(pool, p_id)
        cut_off = await wait_until(p_running, what="the namespaced worker to run attempts")
        cut_at = time.time()
        netns.cut()
        try:
            first = await wait_until(lambda: first_dispatch_after(pool, cut_at + 0.5), timeout=lease + 30,
                                     what="the host worker to take over dispatching")
            print(f"\nPARTITION lease={lease}s: leader cut off -> other worker dispatches in {first - cut_at:.2f} s")
            assert first - cut_at <= lease + 5
            assert await leads(pool, s.queue_name, h_id) is not None
            await asyncio.sleep(max(0.0, cut_at + 2 * lease - time.time()))
            cut_off |= await running_on(pool, p_id)
        finally:
            netns.heal()
        healed_at = time.time()

        await wait_until(lambda: _batch_done(client, out.batch_id), timeout=jobs * 2 + 120,
                         what="every job to finish")
        # P's attempts were reaped and run again elsewhere; their late checkpoints and finishes
        # were refused: after the cut (and a second's grace for statements the server already
        # had), nothing was written under an attempt P started before the cut but the reaper's note.
        assert await pool.fetchval("SELECT count(DISTINCT job_id) FROM bq_job_events WHERE event = 'lease_expired' "
                                   "AND job_id = ANY($1::uuid[])", list(cut_off)) > 0
        late = await pool.fetchval(
            """SELECT count(*) FROM bq_job_events e
               JOIN bq_job_events s ON s.job_id = e.job_id AND s.attempt = e.attempt AND s.event = 'started'
                                   AND s.detail->>'worker' = $1 AND s.at < to_timestamp($2)
               WHERE e.at > to_timestamp($2 + 1) AND e.event <> 'lease_expired'""", p_id, cut_at)
        assert late == 0
        late_stages = await pool.fetchval(
            """SELECT count(*) FROM bq_job_stages st
               JOIN bq_job_events s ON s.job_id = st.job_id AND s.attempt = st.attempt AND s.event = 'started'
                                   AND s.detail->>'worker' = $1 AND s.at < to_timestamp($2)
               WHERE st.created_at > to_timestamp($2 + 1)""", p_id, cut_at)
        assert late_stages == 0

        # P comes back on its own: heartbeats, LISTEN, pool, arq loop; it takes work again.
        async def p_alive_again() -> bool:
            return await pool.fetchval("SELECT count(*) FROM bq_workers WHERE pid = $1 AND stopped_at IS NULL "
                                       "AND heartbeat_at > to_timestamp($2)", p.pid, healed_at + 1) > 0
        await wait_until(p_alive_again, timeout=60, what="the namespaced worker to heartbeat again")
        more = await client.enqueue("shop-b", keyword_jobs(30, image=False, model="offline:slow-200"))
        await wait_until(lambda: _batch_done(client, more.batch_id), timeout=120, what="work after healing")
        assert await started_by(pool, await current_id(pool, p) or "", more.batch_id) > 0
        assert p.alive() and h.alive()
        await assert_once_each(pool, receiver, jobs + 30, cut_off)
        assert logged(tmp_path / "worker-p.log", "refused") or logged(tmp_path / "worker-p.log", "abandoned")
    finally:
        for w in procs:
            w.kill()
        _print_tails(tmp_path, "worker-*.log")
        if pool is not None:
            await pool.close()
        receiver.close()
        redis.stop()


# -- 3. PostgreSQL restarted mid-run -----------------------------------------------------------

@pytest.mark.parametrize(("jobs", "restarts"), [
    pytest.param(200, 1, id="short"),
    pytest.param(600, 3, id="long", marks=pytest.mark.chaos),
])
async def test_postgresql_fast_restart_mid_run(jobs: int, restarts: int, settings: Settings, cluster_factory: Any,
                                               api: Api, tmp_path: Path) -> None:
    cluster = cluster_factory()
    url = await _private_database(cluster, settings)
    s = settings.replace(database_url=url, offline_latency_ms=20.0, ready_timeout_seconds=0.5)
    pool = await db.create_pool(s, max_size=4)
    procs: list[WorkerProcess] = []
    try:
        client = Client(s, pool)
        http = await api.client(settings=s)
        assert (await http.get("/readyz")).status_code == 200
        procs += [WorkerProcess(s, tmp_path / f"worker-{i}.log").start() for i in range(2)]
        ids = [await registered(pool, w) for w in procs]
        out = await client.enqueue("shop-a", keyword_jobs(jobs, image=False))
        await client.enqueue("shop-b", keyword_jobs(jobs // 2, image=False))
        total = jobs + jobs // 2

        for n in range(restarts):
            await wait_until(lambda n=n: _at_least(pool, total * (n + 1) // (restarts + 2)), timeout=120,
                             what="jobs to finish before the restart")
            statuses: list[int] = []
            restart = asyncio.create_task(asyncio.to_thread(cluster.restart))
            while not restart.done():  # probe the service all through the restart
                statuses.append((await http.get("/readyz")).status_code)
                await asyncio.sleep(0.02)
            await restart
            assert 503 in statuses, f"/readyz never said 503 during the restart: {Counter(statuses)}"

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200
            await wait_until(ready, timeout=30, what="/readyz to answer 200 after the restart")

        async def all_done() -> bool:
            return await _retry_pg(lambda: count_done(pool)) == total
        await wait_until(all_done, timeout=jobs + 120, what="every job to finish after the restart")
        done_events = await pool.fetchval("SELECT count(*) FROM bq_job_events WHERE event = 'done'")
        assert done_events == total  # nothing finished twice
        # The service recovered without a restart: it takes and reports work again.
        token, _ = await tokens.create(pool, "shop-c")
        resp = await http.post("/v1/jobs", json={"jobs": keyword_jobs(20, image=False)},
                               headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 202, resp.text
        # The workers recovered without a restart: same processes, heartbeating, one leads.
        for w, wid in zip(procs, ids, strict=True):
            assert w.alive()

            async def fresh(wid: str = wid) -> bool:
                return await pool.fetchval("SELECT heartbeat_at > now() - interval '3 s' FROM bq_workers "
                                           "WHERE id = $1", wid)
            await wait_until(fresh, timeout=30, what="heartbeats after the restart")
        await wait_until(lambda: _batch_done(client, resp.json()["batch_id"]), timeout=60,
                         what="work enqueued through the service after the restart")
        assert (await client.get_batch(out.batch_id)).counts["done"] == jobs
    finally:
        for w in procs:
            w.kill()
        _print_tails(tmp_path, "worker-*.log")
        await pool.close()


async def _retry_pg(call: Any) -> Any:
    """The test's own pool meets the restart too: a statement on a connection it ended is retried."""
    for _ in range(5):
        try:
            return await call()
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
            await asyncio.sleep(0.2)
    return await call()
