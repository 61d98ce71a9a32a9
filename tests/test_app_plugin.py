"""examples/faq_plugin through HTTP: `blogqueue serve --app` and real `blogqueue worker --app` processes.

Its jobs finish, each LLM stage is paid once (the offline provider's call log),
a saved stage is not paid again after kill -9, a kind no live worker knows waits
in the queue with a reason, and a bad --app / BLOGQUEUE_APP stops the process
with a message naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from blogqueue import tokens
from blogqueue.settings import Settings
from testkit.processes import ARQ_WORKER, free_port
from tests.conftest import read_calls, wait_until
from tests.http_fixtures import assert_error

PLUGIN = "examples.faq_plugin:app"
PLUGIN_WORKER = ("-m", "blogqueue.cli", "worker", "--app", PLUGIN)


def _env(settings: Settings) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("BLOGQUEUE_")}, **settings.to_env()}


def _start_service(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "blogqueue.cli", "serve", "--port", str(port), "--app", PLUGIN],
                                env=_env(settings), stdout=out, stderr=subprocess.STDOUT)


def _read(path: str | Path) -> str:
    return Path(path).read_text()


@contextlib.asynccontextmanager
async def serving(settings: Settings, pool: asyncpg.Pool, log: Path) -> AsyncIterator[httpx.AsyncClient]:
    """`blogqueue serve --app examples.faq_plugin:app` as a process; a client with a token of shop-faq."""
    port = free_port()
    proc = _start_service(settings, port, log)
    token, _ = await tokens.create(pool, "shop-faq")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            async def up() -> bool:
                assert proc.poll() is None, _read(log)
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/healthz")).status_code == 200
                return False

            await wait_until(up, timeout=30)
            yield http
    finally:
        proc.terminate()
        proc.wait(10)


async def _post(http: httpx.AsyncClient, job: dict[str, Any]) -> str:
    resp = await http.post("/v1/jobs", json=job)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobs"][0]["id"])


async def _finished(http: httpx.AsyncClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        return job if job["status"] in ("done", "failed", "cancelled") else None

    return await wait_until(done, timeout=timeout)


def _faq(keyword: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "faq", "source": {"type": "keyword", "keyword": keyword}, **extra}


def _calls(settings: Settings, job_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in read_calls(settings):
        if c["job"] == job_id:
            counts[c["stage"]] = counts.get(c["stage"], 0) + 1
    return counts


async def test_plugin_jobs_finish_and_pay_each_stage_once(settings: Settings, pool: asyncpg.Pool, workers: Any,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pages = tmp_path / "pages"
    monkeypatch.setenv("FAQ_PAGES_DIR", str(pages))  # the plugin publisher's own configuration
    s = settings.replace(publisher="pages")
    async with serving(s, pool, tmp_path / "serve.log") as http:
        # The service validates against the loaded app: unknown kinds and sources a kind does not take are 422.
        assert_error(await http.post("/v1/jobs", json={**_faq("x"), "kind": "poem"}), 422, "invalid_input",
                     "job.kind")
        refused = assert_error(await http.post("/v1/jobs", json={"kind": "faq", "source": {
            "type": "product", "name": "Mug"}}), 422, "invalid_input", "job.source")
        assert "cannot feed a faq job" in refused["message"]
        workers(2, argv=PLUGIN_WORKER, publisher="pages")
        ids = [await _post(http, _faq(f"topic {i}")) for i in range(6)]
        post_id = await _post(http, {"source": {"type": "keyword", "keyword": "linen"}, "image": False})
        jobs = [await _finished(http, i) for i in ids]
        post = await _finished(http, post_id)
    for job in jobs:
        assert job["status"] == "done", job
        result = job["result"]
        assert set(result) == {"outline", "answers", "publish"}  # no result(): the stage outputs by name
        assert result["outline"]["prompt_version"] == "faq-1" and result["answers"]["text"]
        page = json.loads(_read(result["publish"]["path"]))
        assert page["job_id"] == job["id"] and page["body"] == result["answers"]["text"]
        assert _calls(s, job["id"]) == {"outline": 1, "answers": 1}  # each LLM stage paid exactly once
    # A built-in kind goes through the user's publisher too.
    assert post["status"] == "done" and post["result"]["publish"]["publisher"] == "pages"
    assert sorted(p.name for p in pages.iterdir()) == sorted(f"{i}.json" for i in [*ids, post_id])


async def test_a_saved_stage_is_not_paid_again_after_kill_9(settings: Settings, pool: asyncpg.Pool, workers: Any,
                                                            tmp_path: Path) -> None:
    async with serving(settings, pool, tmp_path / "serve.log") as http:
        [first] = workers(1, argv=PLUGIN_WORKER)
        job_id = await _post(http, _faq("matcha", model="offline:slow-1500"))

        async def answering() -> bool:  # outline is saved and the answers call is under way
            return _calls(settings, job_id).get("answers", 0) == 1

        await wait_until(answering, timeout=60)
        assert await pool.fetchval("SELECT attempt FROM bq_job_stages WHERE job_id = $1 AND stage = 'outline'",
                                   uuid.UUID(job_id)) == 1
        first.kill()
        workers(1, argv=PLUGIN_WORKER)
        job = await _finished(http, job_id, timeout=90)
    assert job["status"] == "done", job
    assert job["attempts"] == 2 and job["stages"]["outline"]["attempt"] == 1
    assert job["stages"]["answers"]["attempt"] == 2
    # The saved outline call was not made again; the answers call that died unsaved was.
    assert _calls(settings, job_id) == {"outline": 1, "answers": 2}


async def test_a_kind_no_live_worker_knows_waits_queued_with_a_reason(settings: Settings, pool: asyncpg.Pool,
                                                                      workers: Any, tmp_path: Path) -> None:
    async with serving(settings, pool, tmp_path / "serve.log") as http:
        workers(1)  # the built-in app: no faq
        faq_id = await _post(http, _faq("sencha"))
        post_id = await _post(http, {"source": {"type": "keyword", "keyword": "kettles"}})
        assert (await _finished(http, post_id))["status"] == "done"  # the dispatcher has run past the faq job
        waiting = (await http.get(f"/v1/jobs/{faq_id}")).json()
        assert waiting["status"] == "queued" and waiting["attempts"] == 0 and waiting["failures"] == 0
        assert "no live worker knows the kind 'faq'" in waiting["wait_reason"]
        assert [e["event"] for e in waiting["events"]] == ["enqueued"]
        # arq's own command reads BLOGQUEUE_APP the same way.
        workers(1, argv=ARQ_WORKER, app=PLUGIN)
        job = await _finished(http, faq_id)
    assert job["status"] == "done" and job["failures"] == 0 and job["wait_reason"] is None, job


@pytest.mark.parametrize(("argv", "env", "names"), [
    (("-m", "blogqueue.cli", "worker", "--app", "no_such_plugin:app"), {}, "--app=no_such_plugin:app"),
    (("-m", "blogqueue.cli", "serve", "--app", "tests.apps:not_an_app"), {}, "not a blogqueue.App"),
    (ARQ_WORKER, {"BLOGQUEUE_APP": "no_such_plugin:app"}, "BLOGQUEUE_APP=no_such_plugin:app"),
    (("-m", "blogqueue.cli", "worker"), {"BLOGQUEUE_PUBLISHER": "pages"}, "BLOGQUEUE_PUBLISHER"),
])
def test_a_bad_app_stops_the_process_naming_it(  # App.check's other refusals: tests/test_settings_credits.py
settings: Settings, argv: tuple[str, ...], env: dict[str, str],
                                               names: str) -> None:
    proc = subprocess.run([sys.executable, *argv], env={**_env(settings), **env}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert names in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _enqueue_cli(settings: Settings, job: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blogqueue.cli", "enqueue", "--tenant", "shop-cli", "-"],
                          input=json.dumps(job), env=_env(settings), capture_output=True, text=True, timeout=60)


async def test_the_enqueue_command_validates_against_blogqueue_app(settings: Settings, pool: asyncpg.Pool) -> None:
    plain = _enqueue_cli(settings, _faq("rooibos"))
    assert plain.returncode == 1 and "job.kind must be one of blog_post" in plain.stderr  # the built-in App()
    with_app = _enqueue_cli(settings.replace(app=PLUGIN), _faq("rooibos"))
    assert with_app.returncode == 0, with_app.stderr
    job_id = uuid.UUID(json.loads(with_app.stdout)["jobs"][0]["id"])
    assert await pool.fetchval("SELECT kind FROM bq_jobs WHERE id = $1", job_id) == "faq"


async def test_a_worker_handed_a_kind_it_lacks_gives_it_back_unpaid(settings: Settings, pool: asyncpg.Pool,
                                                                     workers: Any) -> None:
    """Workers share one arq queue: one whose app lacks the kind releases the attempt, no failure counted."""
    from blogqueue.client import Client
    from examples.faq_plugin import app as plugin

    workers(1)  # the built-in app only
    # A worker that says it knows faq (its heartbeat kept fresh below), so the dispatcher hands faq out.
    await pool.execute("INSERT INTO bq_workers (id, queue_name, hostname, pid, concurrency, prefetch, kinds) "
                       "VALUES ('knows-faq', $1, 'h', 1, 1, 0, $2)", settings.queue_name, ["faq"])
    out = await Client(settings, pool, app=plugin).enqueue("shop-faq", _faq("hojicha"))
    job_id = uuid.UUID(out.jobs[0].id)

    async def released() -> list[Any] | None:
        await pool.execute("UPDATE bq_workers SET heartbeat_at = now() WHERE id = 'knows-faq'")
        rows = await pool.fetch("SELECT detail FROM bq_job_events WHERE job_id = $1 AND event = 'released'", job_id)
        return rows or None

    rows = await wait_until(released, timeout=60)
    assert "does not know the kind 'faq'" in rows[0]["detail"]["reason"]
    job = await pool.fetchrow("SELECT failures, bq_public_status(status, failures) AS s FROM bq_jobs WHERE id = $1",
                              job_id)
    assert job["failures"] == 0 and job["s"] in ("queued", "running")
    assert _calls(settings, str(job_id)) == {}  # nothing was paid for
