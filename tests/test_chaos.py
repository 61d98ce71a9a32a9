"""Chaos: workers killed, Redis flushed, PostgreSQL backends terminated, stops at random,
against the fake OpenAI server misbehaving (5xx, 429, timeouts), publishing to a webhook
receiver, with credits on.

The short runs are part of `make test`; `make chaos` runs the long one (10,000 jobs).
"""

import pytest

from blogqueue.testing.fake_openai import FakeOpenAI
from blogqueue.testing.fake_webhook import FakeWebhookReceiver
from testkit.chaos import OWN_KEY, Chaos, ChaosPlan, Stack
from testkit.processes import WorkerProcess

PLATFORM_KEY = "sk-chaos-platform-key-4d8e1b6a"
WEBHOOK_SECRET = "whsec-chaos-9b2c7e1f"
SECRET_KEY = "chaos-secret-key-for-stored-provider-keys"


async def run_chaos(plan, settings, client, pool, tmp_path, *, full_stack: bool):
    worker_settings = settings.replace(lease_seconds=2.0, heartbeat_seconds=0.4, offline_latency_ms=40.0,
                                       retry_schedule=(0.2, 0.5, 1.0), max_inflight_per_tenant=4)
    stack = Stack()
    if full_stack:
        stack.fake_openai = FakeOpenAI(latency_ms=20, error_5xx_rate=0.05, error_429_rate=0.10,
                                       retry_after_s=0.2, timeout_rate=0.003, hang_s=3.0, seed=plan.seed).start()
        stack.receiver = FakeWebhookReceiver(WEBHOOK_SECRET).start()
        stack.secrets = [PLATFORM_KEY, OWN_KEY, WEBHOOK_SECRET, SECRET_KEY]
        worker_settings = worker_settings.replace(
            openai_api_key=PLATFORM_KEY, openai_base_url=stack.fake_openai.base_url, provider_timeout_seconds=1.0,
            publisher="webhook", webhook_url=stack.receiver.url, webhook_secret=WEBHOOK_SECRET,
            credits_enabled=True, secret_key=SECRET_KEY, worker_concurrency=8)
    spawned: list[WorkerProcess] = []

    def spawn() -> WorkerProcess:
        log = tmp_path / f"chaos-worker-{len(spawned)}.log"
        stack.logs.append(log)
        w = WorkerProcess(worker_settings.replace(log_level="DEBUG"), log).start()
        spawned.append(w)
        return w

    from blogqueue.client import Client

    chaos_client = Client(worker_settings, pool)
    try:
        report = await Chaos(plan, worker_settings, chaos_client, pool, spawn, stack).run()
    finally:
        for w in spawned:
            w.kill()
        if stack.fake_openai is not None:
            stack.fake_openai.stop()
        if stack.receiver is not None:
            stack.receiver.close()
    print(report.table())
    assert report.ok, report.table()
    return report


async def test_chaos_short_offline(settings, client, pool, tmp_path):
    report = await run_chaos(ChaosPlan(fault_gap_s=0.8), settings, client, pool, tmp_path, full_stack=False)
    assert report.counts.get("done", 0) > 0
    # The faults hit a system with work in flight, not an idle one.
    assert all(n > 0 for n in report.unfinished_at_fault), report.unfinished_at_fault


async def test_chaos_short_full_stack(settings, client, pool, tmp_path):
    plan = ChaosPlan(jobs=600, fault_gap_s=1.0, model="openai:gpt-4o-mini", own_key_tenant=True)
    report = await run_chaos(plan, settings, client, pool, tmp_path, full_stack=True)
    assert report.counts.get("done", 0) > 0
    assert {"no publish delivered twice", "ledger balances", "no secret in logs or events"} <= set(report.checks)
    assert all(n > 0 for n in report.unfinished_at_fault), report.unfinished_at_fault


@pytest.mark.chaos
@pytest.mark.timeout(2400)
async def test_chaos_long(settings, client, pool, tmp_path):
    plan = ChaosPlan(jobs=10_000, tenants=20, workers=4, kills=8, flushes=3, backend_storms=3, stops=6,
                     fault_gap_s=8.0, timeout_s=1800.0, seed=11, model="openai:gpt-4o-mini", own_key_tenant=True)
    await run_chaos(plan, settings, client, pool, tmp_path, full_stack=True)
