"""`blogqueue serve` and `blogqueue token` as real processes: the operator's view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def _start_serve(settings: Settings, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "blogqueue.cli", "serve", "--host", "127.0.0.1",
                                 "--port", str(port)],
                                env=_env(settings, BLOGQUEUE_LOG_FORMAT="json"), stdout=log, stderr=subprocess.STDOUT)


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
            async def up() -> bool:
                try:
                    return (await http.get("/healthz")).json() == {"status": "ok"}
                except httpx.TransportError:
                    assert proc.poll() is None, log_path.read_text()
                    return False

            await wait_until(up, timeout=30, what="blogqueue serve to answer /healthz")
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
