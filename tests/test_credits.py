"""Credits: reserved at enqueue, charged once when done, released on failure or cancel."""

import dataclasses
import os
import subprocess
import sys

import pytest

from blogqueue import credits
from blogqueue.client import Client
from blogqueue.errors import InsufficientCredits, InvalidInput

from .conftest import keyword_jobs, wait_until


@pytest.fixture
def bq(settings, pool):
    return Client(settings.replace(credits_enabled=True), pool)


async def movements(pool, tenant):
    rows = await pool.fetch("SELECT movement, count(*) AS n, sum(amount) AS amount FROM bq_credit_ledger "
                            "WHERE tenant_id = $1 GROUP BY 1", tenant)
    return {r["movement"]: (r["n"], r["amount"]) for r in rows}


async def test_short_balance_is_refused_with_402_and_writes_nothing(bq, pool):
    await bq.grant_credits("shop-a", 60)
    with pytest.raises(InsufficientCredits) as err:
        await bq.enqueue("shop-a", keyword_jobs(3))  # 75 > 60
    assert err.value.code == "insufficient_credits"
    assert err.value.to_dict()["error"] == {"code": "insufficient_credits",
                                            "message": "not enough credits: these jobs cost 75, the balance is 60",
                                            "details": {"required": 75, "balance": 60}}
    assert await pool.fetchval("SELECT count(*) FROM bq_jobs") == 0
    assert await pool.fetchval("SELECT count(*) FROM bq_batches") == 0
    assert await movements(pool, "shop-a") == {"grant": (1, 60)}
    mug = {"kind": "product_optimization", "source": {"type": "product", "name": "Mug"}}
    out = await bq.enqueue("shop-a", [*keyword_jobs(2), mug])
    assert len(out.jobs) == 3
    assert await bq.credit_balance("shop-a") == {"tenant_id": "shop-a", "balance": 5, "reserved": 55,
                                                 "granted": 60, "charged": 0}


async def test_replayed_job_is_not_reserved_twice(bq, pool):
    await bq.grant_credits("shop-a", 30)
    job = {"source": {"type": "keyword", "keyword": "tea"}, "idempotency_key": "k1"}
    first = await bq.enqueue("shop-a", job)
    again = await bq.enqueue("shop-a", job)  # balance is 5 now: a replay must not need credits
    assert again.jobs[0] == dataclasses.replace(first.jobs[0], replayed=True)
    assert (await bq.credit_balance("shop-a"))["balance"] == 5


async def test_credits_disabled_needs_no_grant_and_writes_no_ledger(client, pool):
    await client.enqueue("shop-a", keyword_jobs(2))
    assert await pool.fetchval("SELECT count(*) FROM bq_credit_ledger") == 0


async def test_done_charges_once_failure_and_cancel_release(bq, pool, workers, settings):
    await bq.grant_credits("shop-a", 100)
    done = await bq.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "ok"}})
    bad = await bq.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "no"}, "model": "offline:refuse"})
    later = await bq.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "later"},
                                        "run_at": "2099-01-01T00:00:00Z"})
    assert (await bq.credit_balance("shop-a"))["balance"] == 25
    await bq.stop_job(later.jobs[0].id, "shop-a")
    assert (await bq.credit_balance("shop-a"))["balance"] == 50  # cancelled while waiting: released at once
    workers(1)

    async def settled():
        return await pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status IN ('done', 'failed')") == 2
    await wait_until(settled, what="both jobs to finish")
    assert await movements(pool, "shop-a") == {"grant": (1, 100), "reserve": (3, 75), "charge": (1, 25),
                                               "release": (2, 50)}
    assert await bq.credit_balance("shop-a") == {"tenant_id": "shop-a", "balance": 75, "reserved": 0,
                                                 "granted": 100, "charged": 25}
    charged = await pool.fetchval("SELECT job_id FROM bq_credit_ledger WHERE movement = 'charge'")
    assert str(charged) == done.jobs[0].id
    assert bad.jobs[0].id != str(charged)


async def test_stopping_a_running_job_releases_its_credits(bq, pool, workers):
    await bq.grant_credits("shop-a", 25)
    out = await bq.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "slow"}, "model": "offline:slow-5000"})
    job_id = out.jobs[0].id
    workers(1)

    async def running():
        return (await bq.get_job(job_id)).status == "running"
    await wait_until(running, what="the job to run")
    await bq.stop_job(job_id, "shop-a")

    async def cancelled():
        return (await bq.get_job(job_id)).status == "cancelled"
    await wait_until(cancelled, what="the running job to be cancelled")
    assert await movements(pool, "shop-a") == {"grant": (1, 25), "reserve": (1, 25), "release": (1, 25)}


async def test_lease_reaper_terminal_failure_releases(bq, pool, workers, settings):
    """A job whose worker vanished on its last attempt ends failed by the reaper: released, in SQL."""
    await bq.grant_credits("shop-a", 25)
    out = await bq.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "x"}, "model": "offline:slow-60000"})
    job_id = out.jobs[0].id
    # Pretend the job is on its last attempt and its worker vanished: the reaper decides.
    await pool.execute("UPDATE bq_jobs SET status = 'running', attempt = 4, failures = 3, "
                       "lease_until = now() - interval '1 second' WHERE id = $1::uuid", job_id)
    workers(1)

    async def failed():
        return (await bq.get_job(job_id)).status == "failed"
    await wait_until(failed, what="the reaper to fail the job")
    assert (await bq.get_job(job_id)).error_code == "worker_lost"
    assert await movements(pool, "shop-a") == {"grant": (1, 25), "reserve": (1, 25), "release": (1, 25)}


async def test_violations_query_catches_a_broken_ledger(bq, pool):
    """The invariant check itself can fail: a charge without a finished job is reported."""
    await bq.grant_credits("shop-a", 25)
    out = await bq.enqueue("shop-a", {"source": {"type": "keyword", "keyword": "x"}})
    await pool.execute("INSERT INTO bq_credit_ledger (tenant_id, job_id, movement, amount) "
                       "VALUES ('shop-a', $1::uuid, 'charge', 25)", out.jobs[0].id)
    problems = {p["problem"] for p in await credits.violations(pool)}
    assert problems == {"charged but not done, or done but released"}
    await pool.execute("DELETE FROM bq_credit_ledger WHERE movement = 'charge'")


async def test_grant_rejects_bad_amounts(bq):
    for amount in (0, -5, 1.5, True):
        with pytest.raises(InvalidInput):
            await bq.grant_credits("shop-a", amount)


def test_cli_grant_and_balance(settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGQUEUE_")}
    env.update(settings.to_env())

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "blogqueue.cli", "credits", *args], env=env,
                              capture_output=True, text=True, timeout=60)
    grant = cli("grant", "--tenant", "shop-cli", "--amount", "40")
    assert grant.returncode == 0, grant.stderr
    assert '"balance": 40' in grant.stdout
    bal = cli("balance", "--tenant", "shop-cli")
    assert bal.returncode == 0 and '"granted": 40' in bal.stdout
    bad = cli("grant", "--tenant", "shop-cli", "--amount", "0")
    assert bad.returncode == 1 and '"code": "invalid_input"' in bad.stderr
