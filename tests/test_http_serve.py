"""`blogqueue serve` and `blogqueue token` as real processes: the operator's view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx

from blogqueue.settings import Settings
from tests.conftest import _free_port, wait_until


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGQUEUE_")}
    env.update(settings.to_env())
    env.update(extra)
    return env


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blogqueue.cli", *args], env=_env(settings),
                          capture_output=True, text=True, timeout=60)


def _start_serve(settings: Settings, port: int, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "blogqueue.cli", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), *extra],
                                env=_env(settings, BLOGQUEUE_LOG_FORMAT="json"), stdout=log, stderr=subprocess.STDOUT)


async def _wait_up(http: httpx.AsyncClient, proc: subprocess.Popen[bytes], log_path: Path,
                   timeout: float = 60) -> None:
    """Until the started `blogqueue serve` answers /healthz (failing at once, with its log, if it died)."""
    async def up() -> bool:
        try:
            return (await http.get("/healthz")).json() == {"status": "ok"}
        except httpx.TransportError:
            assert proc.poll() is None, log_path.read_text()  # noqa: ASYNC240 (only on failure)
            return False

    await wait_until(up, timeout=timeout, what="blogqueue serve to answer /healthz")


@contextlib.asynccontextmanager
async def served(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A `blogqueue serve` process on a free port, up: yields its base URL and log path; stopped after."""
    port = _free_port()
    log_path = tmp_path / "serve.log"
    proc = _start_serve(settings, port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            await _wait_up(http, proc, log_path)
        yield base, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_token_cli_create_list_revoke(settings: Settings, pool: asyncpg.Pool) -> None:
    made = _cli(settings, "token", "create", "--tenant", "shop-cli", "--user", "ann")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("bq_") and "\n" not in token and "shown once" in made.stderr
    token_id, secret = token[3:15], token[16:]
    row = await pool.fetchrow("SELECT * FROM bq_tokens WHERE id = $1", token_id)
    assert row["tenant_id"] == "shop-cli" and row["user_id"] == "ann" and not row["is_admin"]
    assert secret not in json.dumps({k: str(v) for k, v in dict(row).items()})  # only a hash is stored

    from blogqueue import tokens

    assert row["last_used_at"] is None
    assert (await tokens.verify(pool, token)).tenant_id == "shop-cli"
    assert await pool.fetchval("SELECT last_used_at IS NOT NULL FROM bq_tokens WHERE id = $1", token_id)
    assert await tokens.verify(pool, token[:-2]) is None

    admin = _cli(settings, "token", "create", "--tenant", "shop-cli", "--admin")
    listed = _cli(settings, "token", "list", "--tenant", "shop-cli")
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [token_id, admin.stdout.strip()[3:15]]
    assert [r["is_admin"] for r in rows] == [False, True]
    assert secret not in listed.stdout and "secret_hash" not in listed.stdout

    revoked = _cli(settings, "token", "revoke", token_id[:6])
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["id"] == token_id
    assert await pool.fetchval("SELECT revoked_at IS NOT NULL FROM bq_tokens WHERE id = $1", token_id)
    again = _cli(settings, "token", "revoke", token_id)
    assert again.returncode == 1 and json.loads(again.stderr)["error"]["code"] == "not_found"


async def test_serve_answers_and_logs_without_secrets(settings: Settings, tmp_path: Path) -> None:
    token = _cli(settings, "token", "create", "--tenant", "shop-live").stdout.strip()
    port = _free_port()
    log_path = tmp_path / "serve.log"
    proc = _start_serve(settings, port, log_path)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            await _wait_up(http, proc, log_path, timeout=30)
            auth = {"Authorization": f"Bearer {token}"}
            made = await http.post("/v1/jobs", json={"source": {"type": "keyword", "keyword": "tea"}}, headers=auth)
            assert made.status_code == 202
            assert (await http.get("/v1/jobs", headers=auth)).json()["jobs"][0]["tenant_id"] == "shop-live"
            assert (await http.get("/readyz")).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    requests = [e for e in lines if e.get("event") == "request"]
    posted = next(e for e in requests if e["method"] == "POST")
    assert posted["path"] == "/v1/jobs" and posted["status"] == 202 and posted["tenant"] == "shop-live"
    assert posted["duration_ms"] >= 0 and posted["level"] == "info" and "timestamp" in posted
    assert {e["path"] for e in requests} >= {"/healthz", "/v1/jobs", "/readyz"}
    assert token not in text and token[16:] not in text


def _urllib_post(url: str, token: str, body: bytes | list[bytes]) -> tuple[int, dict]:
    """POST with the standard library, which sends the whole body before it reads the answer.

    A list is sent chunked (no Content-Length), bytes with a Content-Length.
    """
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if isinstance(body, list):
        headers["Transfer-Encoding"] = "chunked"
    req = urllib.request.Request(url, data=body if isinstance(body, bytes) else iter(body), headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_oversized_body_gets_the_413_even_while_the_client_is_still_sending(
        settings: Settings, tmp_path: Path) -> None:
    """The service reads and discards an oversized body (up to a bound) before it answers 413 and
    closes, so a client that sends everything first (urllib) sees the 413, not a reset."""
    # 12 MiB of body outgrow the loopback socket buffers: the client is still sending when the
    # server has its answer (without draining, urllib saw "connection reset" here).
    limit = 4 * 1024 * 1024
    token = _cli(settings, "token", "create", "--tenant", "shop-big").stdout.strip()
    port = _free_port()
    log_path = tmp_path / "serve.log"
    proc = _start_serve(settings.replace(max_body_bytes=limit), port, log_path)
    url = f"http://127.0.0.1:{port}/v1/jobs"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            await _wait_up(http, proc, log_path, timeout=60)
        big = b"{\"jobs\": [" + b" " * (3 * limit) + b"]}"
        for body in (big, [big[i:i + 65536] for i in range(0, len(big), 65536)]):
            status, answer = await asyncio.to_thread(_urllib_post, url, token, body)
            assert status == 413, answer
            assert answer == {"error": {"code": "body_too_large", "details": {"limit": limit},
                                        "message": f"request body is larger than {limit} bytes"}}
        ok_status, ok = await asyncio.to_thread(
            _urllib_post, url, token, json.dumps({"source": {"type": "keyword", "keyword": "tea"}}).encode())
        assert ok_status == 202 and len(ok["jobs"]) == 1  # the service still serves after refusing
    finally:
        proc.terminate()
        proc.wait(15)


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_serve_workers_share_the_port_with_an_app(settings: Settings, tmp_path: Path) -> None:
    """`serve --workers 2 --app ...`: two processes answer on one port, each validating against the
    app (a kind only the plugin registers is accepted); SIGTERM to the parent stops them all."""
    token = _cli(settings, "token", "create", "--tenant", "shop-w").stdout.strip()
    port = _free_port()
    log_path = tmp_path / "serve.log"
    proc = _start_serve(settings, port, log_path, "--workers", "2", "--app", "examples.faq_plugin:app")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            await _wait_up(http, proc, log_path)
            workers = _children(proc.pid)
            assert len(workers) == 2
            # Both listen: each worker has its own socket on the port (SO_REUSEPORT).
            async def both_listen() -> bool:
                inodes = []
                for pid in workers:
                    inodes += [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")
                               if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")]
                return len(inodes) >= 2
            await wait_until(both_listen, timeout=30, what="both workers' sockets")
            auth = {"Authorization": f"Bearer {token}"}
            for _ in range(6):  # new connections: the kernel spreads them over both
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as one:
                    made = await one.post("/v1/jobs", headers=auth,
                                          json={"kind": "faq", "source": {"type": "keyword", "keyword": "why"}})
                    assert made.status_code == 202, made.text  # "faq" is the plugin's kind
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0, log_path.read_text()
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False
