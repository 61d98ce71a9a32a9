"""Chaos: workers killed, Redis flushed, PostgreSQL backends terminated, stops at random.

The short run is part of `make test`; `make chaos` runs the long one (10,000 jobs).
"""

import pytest

from blogqueue.testing.chaos import Chaos, ChaosPlan
from blogqueue.testing.processes import WorkerProcess


async def run_chaos(plan, settings, client, pool, tmp_path):
    worker_settings = settings.replace(lease_seconds=2.0, heartbeat_seconds=0.4, offline_latency_ms=40.0,
                                       retry_schedule=(0.2, 0.5, 1.0), max_inflight_per_tenant=4)
    spawned: list[WorkerProcess] = []

    def spawn() -> WorkerProcess:
        w = WorkerProcess(worker_settings, tmp_path / f"chaos-worker-{len(spawned)}.log").start()
        spawned.append(w)
        return w

    try:
        report = await Chaos(plan, worker_settings, client, pool, spawn).run()
    finally:
        for w in spawned:
            w.kill()
    print(report.table())
    assert report.ok, report.table()
    return report


async def test_chaos_short(settings, client, pool, tmp_path):
    plan = ChaosPlan(fault_gap_s=0.8)
    report = await run_chaos(plan, settings, client, pool, tmp_path)
    assert report.counts.get("done", 0) > 0
    # The faults hit a system with work in flight, not an idle one.
    assert all(n > 0 for n in report.unfinished_at_fault), report.unfinished_at_fault


@pytest.mark.chaos
@pytest.mark.timeout(1800)
async def test_chaos_long(settings, client, pool, tmp_path):
    plan = ChaosPlan(jobs=10_000, tenants=20, workers=4, kills=8, flushes=3, backend_storms=3, stops=6,
                     fault_gap_s=6.0, timeout_s=1200.0, seed=11)
    await run_chaos(plan, settings, client, pool, tmp_path)
