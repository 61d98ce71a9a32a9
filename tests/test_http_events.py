"""`GET /v1/events` against a real `blogqueue serve` and real worker processes (DESIGN §12)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from blogqueue.settings import Settings
from testkit.processes import WorkerProcess
from testkit.sse import HTTPRefused, SSEClient, SSEEvent
from tests.conftest import wait_until
from tests.http_fixtures import TokenFactory, keyword
from tests.test_http_serve import served

FINAL = {"done", "failed", "cancelled"}


async def _collect(stream: SSEClient, until: Callable[[list[SSEEvent]], bool], *, into: list[SSEEvent],
                   timeout: float = 60) -> None:
    async def run() -> None:
        while not until(into):
            ev = await stream.next_event()
            assert ev is not None, "the stream ended"
            into.append(ev)
    await asyncio.wait_for(run(), timeout)


def _all_final(job_ids: set[str]) -> Callable[[list[SSEEvent]], bool]:
    def check(events: list[SSEEvent]) -> bool:
        final = {e.data["job_id"] for e in events if e.data["status"] in FINAL}
        return job_ids <= final
    return check


async def _db_events(pool: asyncpg.Pool, tenant: str) -> list[tuple[int, str, str]]:
    rows = await pool.fetch("SELECT e.id, e.job_id::text AS job_id, e.event FROM bq_job_events e "
                            "JOIN bq_jobs j ON j.id = e.job_id WHERE j.tenant_id = $1 ORDER BY e.id", tenant)
    return [(r["id"], r["job_id"], r["event"]) for r in rows]


async def test_a_follower_sees_every_change_in_order_resumes_without_gaps_and_never_another_tenants(
        settings: Settings, pool: asyncpg.Pool, make_token: TokenFactory,
        workers: Callable[..., list[WorkerProcess]], tmp_path: Path) -> None:
    s = settings.replace(offline_latency_ms=60.0, events_heartbeat_seconds=0.5)
    a, b, admin = await make_token("shop-a"), await make_token("shop-b"), await make_token("ops", admin=True)
    async with served(s, tmp_path) as (base, _), httpx.AsyncClient(base_url=base, timeout=10) as http:
        follow_a = await SSEClient.open(base, "/v1/events", token=a)
        follow_b = await SSEClient.open(base, "/v1/events?tenant=shop-b", token=admin)
        for stream in (follow_a, follow_b):
            assert stream.headers["content-type"].startswith("text/event-stream")
            await stream.wait_ping()
        made_a = (await http.post("/v1/jobs", json={"jobs": keyword(4)}, headers={"Authorization": f"Bearer {a}"}))
        made_b = (await http.post("/v1/jobs", json={"jobs": keyword(3)}, headers={"Authorization": f"Bearer {b}"}))
        assert made_a.status_code == made_b.status_code == 202
        jobs_a = {j["id"] for j in made_a.json()["jobs"]}
        jobs_b = {j["id"] for j in made_b.json()["jobs"]}
        workers(1, offline_latency_ms=60.0)

        got: list[SSEEvent] = []
        await _collect(follow_a, lambda evs: len(evs) >= 10, into=got)  # part of the run...
        follow_a.close()  # ...then the client goes away while the jobs go on
        async def missed() -> bool:  # events happen while it is away: what it must not miss
            return bool(await pool.fetchval(
                "SELECT count(*) FROM bq_job_events e JOIN bq_jobs j ON j.id = e.job_id "
                "WHERE j.tenant_id = 'shop-a' AND e.id > $1", got[-1].id) >= 3)

        await wait_until(missed, timeout=30, what="events while the follower is away")
        resumed = await SSEClient.open(base, "/v1/events", token=a, last_event_id=got[-1].id)
        await _collect(resumed, _all_final(jobs_a), into=got)
        got_b: list[SSEEvent] = []
        await _collect(follow_b, _all_final(jobs_b), into=got_b)
        for stream in (resumed, follow_b):
            stream.close()
        assert follow_a.pings >= 1

    # Every state change of the tenant's jobs, each once, in order: exactly the job events table.
    want_a = await _db_events(pool, "shop-a")
    assert [(e.id, e.data["job_id"], e.data["event"]) for e in got] == want_a
    assert [(e.id, e.data["job_id"], e.data["event"]) for e in got_b] == await _db_events(pool, "shop-b")
    assert {e.data["tenant_id"] for e in got} == {"shop-a"} and {e.data["job_id"] for e in got} == jobs_a
    assert {e.data["tenant_id"] for e in got_b} == {"shop-b"}
    for job in jobs_a:
        mine = [e.data for e in got if e.data["job_id"] == job]
        assert [m["event"] for m in mine][:2] == ["enqueued", "started"] and mine[-1]["event"] == "done"
        assert [m["status"] for m in mine] == ["queued"] + ["running"] * (len(mine) - 2) + ["done"]
        assert all(m["event"] == "stage_done" for m in mine[2:-1]) and len(mine) > 3
        assert mine[-1]["batch_id"] == made_a.json()["batch_id"] and mine[-1]["kind"] == "blog_post"
    first = got[0]
    assert first.event == "job" and set(first.data) == {
        "event_id", "job_id", "tenant_id", "batch_id", "kind", "event", "status", "stage", "attempt", "at", "detail"}
    assert first.data["event_id"] == first.id


async def test_refusals_and_narrowing(settings: Settings, make_token: TokenFactory, tmp_path: Path) -> None:
    a, b, admin = await make_token("shop-a"), await make_token("shop-b"), await make_token("ops", admin=True)
    async with served(settings, tmp_path) as (base, _), httpx.AsyncClient(base_url=base, timeout=10) as http:
        batch = (await http.post("/v1/jobs", json={"jobs": keyword(2)},
                                 headers={"Authorization": f"Bearer {a}"})).json()["batch_id"]
        refusals: dict[str, tuple[str, str | None]] = {
            "/v1/events": (None, None),  # no token
            "/v1/events?tenant=shop-a": (b, None),  # a tenant token asking for another tenant
            f"/v1/events?batch_id={batch}": (b, None),  # another tenant's batch
            "/v1/events?batch_id=nope": (a, None),
            "/v1/events?since=1": (a, None),
            "/v1/events?last_event_id=-3": (a, None),
        }
        statuses = []
        for path, (token, _) in refusals.items():
            with pytest.raises(HTTPRefused) as refused:
                await SSEClient.open(base, path, token=token)
            statuses.append(refused.value.status)
            assert b'"error"' in refused.value.body
        assert statuses == [401, 403, 404, 404, 422, 422]
        # Narrowed to a batch, resumed from the start by query parameter: just that batch's events.
        other = (await http.post("/v1/jobs", json={"jobs": keyword(1)},
                                 headers={"Authorization": f"Bearer {a}"})).json()["batch_id"]
        narrowed = await SSEClient.open(base, f"/v1/events?batch_id={batch}&last_event_id=0", token=admin)
        seen = [await narrowed.next_event(10) for _ in range(2)]
        await http.post(f"/v1/batches/{other}/stop", headers={"Authorization": f"Bearer {a}"})
        await http.post(f"/v1/batches/{batch}/stop", headers={"Authorization": f"Bearer {a}"})
        seen += [await narrowed.next_event(10) for _ in range(2)]
        narrowed.close()
        assert [(e.data["batch_id"], e.data["event"]) for e in seen if e] == \
            [(batch, "enqueued")] * 2 + [(batch, "cancelled")] * 2


async def test_a_reader_that_cannot_keep_up_is_disconnected_and_resumes(
        settings: Settings, pool: asyncpg.Pool, make_token: TokenFactory, tmp_path: Path) -> None:
    """A client that stops reading is cut off once it is EVENTS_BUFFER events behind (its kernel
    buffers full): the server holds a bounded queue for it, not every event since. A client
    reading at the same time gets everything; the slow one resumes from its last id."""
    # Enough ~330-byte events to outgrow the stalled reader's socket buffers: the server's send
    # buffer grows to tcp_wmem's maximum (4 MiB here: 8,000 jobs, enqueued then stopped).
    jobs = max(8000, -(-int(_send_buffer_max() * 1.2 / 660) // 2000) * 2000)
    s = settings.replace(events_buffer=100, max_tenant_backlog=jobs, max_backlog=jobs)
    a = await make_token("shop-a")
    async with served(s, tmp_path) as (base, log_path):
        slow = await SSEClient.open(base, "/v1/events", token=a, rcvbuf=4096)
        fast = await SSEClient.open(base, "/v1/events", token=a)
        await slow.wait_ping()
        await fast.wait_ping()
        fast_got: list[SSEEvent] = []
        async with httpx.AsyncClient(base_url=base, timeout=60, headers={"Authorization": f"Bearer {a}"}) as http:
            for _ in range(jobs // 2000):
                assert (await http.post("/v1/jobs", json={"jobs": keyword(2000)})).status_code == 202
            assert (await http.post("/v1/stop")).json()["cancelled"] == jobs
        total = 2 * jobs
        await _collect(fast, lambda evs: len(evs) >= total, into=fast_got)
        assert len({e.id for e in fast_got}) == total
        await wait_until(lambda: asyncio.to_thread(lambda: "fell behind" in log_path.read_text()), timeout=30,
                         what="the service to cut the slow reader off")
        # Now the slow client reads: what was buffered for it, then the end of the stream.
        slow_got: list[SSEEvent] = []
        while (ev := await slow.next_event(30)) is not None:
            slow_got.append(ev)
        assert 0 < len(slow_got) < total
        assert [e.id for e in slow_got] == [e.id for e in fast_got[: len(slow_got)]]  # no gap in what it got
        resumed = await SSEClient.open(base, "/v1/events", token=a, last_event_id=slow_got[-1].id)
        rest: list[SSEEvent] = []
        await _collect(resumed, lambda evs: len(slow_got) + len(evs) >= total, into=rest)
        assert [e.id for e in slow_got + rest] == [e.id for e in fast_got]
        resumed.close()
        fast.close()


def _send_buffer_max() -> int:
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
