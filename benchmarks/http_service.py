"""The HTTP service alone under wrk: `blogqueue serve` (1 and 2 processes), no workers.

Scenarios, each for `--seconds` with `--connections` connections (wrk, 2 threads):
`GET /healthz` (the floor: no database), `GET /v1/jobs/{id}` (job status: 1,000 distinct jobs
read round robin, so the job view cache, blogqueue/jobviews.py, is measured with its misses
and not on one hot entry), `POST /v1/jobs`
with one job for one tenant, `POST /v1/jobs` with 1,000 jobs, `GET /v1/jobs` (a list
page of 50). Each reports req/s, p50, p99 and its req/s as a ratio of `/healthz` in the
same run (absolute figures vary up to 3x between runs on shared machines; ratios less).

Runs against a database of its own (created and dropped here); writes
benchmarks/results/http_service.json. (Not http.py: it would shadow the standard library's `http`
for scripts in this directory.) The requests are built
by benchmarks/wrk/request.lua from the environment (method, body file, bearer token).
Needs wrk (Debian: apt-get install wrk; `make bench-http` installs it when root).

    make bench-http
    python benchmarks/http_service.py --seconds 5 --workers 1     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from _harness import ROOT, bench_database, table, write_result

from blogqueue import db, tokens
from blogqueue.client import Client
from blogqueue.settings import Settings
from testkit.processes import free_port
from testkit.waiting import wait_until

SCRIPT = Path(__file__).parent / "wrk" / "request.lua"
# Targets (issue 14), as ratios of /healthz with 1 process and 32 connections.
TARGETS = {"job status": 0.7, "enqueue 1 job": 0.4}
STATUS_P99_MS = 50.0
BULK_CONNECTIONS = 4
STATUS_JOBS = 1000  # distinct jobs the status scenario reads, round robin


def _serve(settings: Settings, port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGQUEUE_")} | settings.to_env()
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "blogqueue.cli", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", str(workers)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def _wrk(url: str, seconds: float, connections: int, *, token: str | None = None,
         body: Path | None = None, paths: Path | None = None) -> dict[str, Any]:
    env = {**os.environ, "BQ_METHOD": "POST" if body else "GET", "BQ_TOKEN": token or "",
           "BQ_BODY": str(body) if body else "", "BQ_PATHS": str(paths) if paths else ""}
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                          "-s", str(SCRIPT), url], env=env, capture_output=True, text=True, check=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BQ_RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    r = json.loads(line.removeprefix("BQ_RESULT "))
    errors = r["non_2xx"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
    return {"requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 1),
            "p50_ms": round(r["p50_us"] / 1000, 1), "p99_ms": round(r["p99_us"] / 1000, 1),
            "requests": r["requests"], "errors": errors}


async def _run(settings: Settings, workers: int, args: argparse.Namespace, token: str, status_paths: Path,
               bodies: dict[str, Path], workdir: Path) -> list[dict[str, Any]]:
    port = free_port()
    log = workdir / f"serve-{workers}.log"
    proc = _serve(settings, port, workers, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            async def up() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False
            await wait_until(up, timeout=60, what="blogqueue serve")
        # Bulk last, with fewer connections: 32 requests of 1,000 jobs each take seconds, and the
        # server keeps working on the ones wrk left when it stopped, which would slow the next run.
        scenarios: list[tuple[str, str, Path | None, Path | None, int]] = [
            ("healthz", "/healthz", None, None, args.connections),
            ("job status", "/v1/jobs", None, status_paths, args.connections),
            ("enqueue 1 job", "/v1/jobs", bodies["one"], None, args.connections),
            ("list 50 jobs", "/v1/jobs?limit=50", None, None, args.connections),
            ("enqueue 1,000 jobs", "/v1/jobs", bodies["bulk"], None, BULK_CONNECTIONS),
        ]
        rows = []
        for name, path, body, paths, connections in scenarios:
            # A short warm-up per scenario (connections, caches, prepared statements), then the run.
            _wrk(base + path, 1, connections, token=token, body=body, paths=paths)
            r = _wrk(base + path, args.seconds, connections, token=token, body=body, paths=paths)
            rows.append({"workers": workers, "scenario": name, "connections": connections, **r})
        floor = rows[0]["requests_per_s"]
        for r in rows:
            r["vs_healthz"] = round(r["requests_per_s"] / floor, 3) if floor else None
        return rows
    finally:
        proc.terminate()
        proc.wait(30)


async def main(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("bench-http needs wrk: apt-get install wrk (Debian/Ubuntu), or see https://github.com/wg/wrk",
              file=sys.stderr)
        return 2
    base = Settings.from_env()
    async with bench_database(base) as url:
        # No limits in the way: this measures the path, not the refusal.
        settings = base.replace(database_url=url, max_backlog=100_000_000, max_tenant_backlog=100_000_000,
                                log_level="WARNING")
        pool = await db.create_pool(settings, max_size=2)
        try:
            token, _ = await tokens.create(pool, "bench")
            async with Client.open(settings, max_size=2) as client:
                out = await client.enqueue("bench", [{"source": {"type": "keyword", "keyword": f"t{i}"}}
                                                     for i in range(STATUS_JOBS)])
        finally:
            await pool.close()
        with tempfile.TemporaryDirectory(prefix="bq-bench-http-") as tmp:
            workdir = Path(tmp)
            bodies = {"one": workdir / "one.json", "bulk": workdir / "bulk.json"}
            status_paths = workdir / "status-paths.txt"
            status_paths.write_text("".join(f"/v1/jobs/{j.id}\n" for j in out.jobs))
            bodies["one"].write_text(json.dumps({"source": {"type": "keyword", "keyword": "green tea"}}))
            bodies["bulk"].write_text(json.dumps(
                {"jobs": [{"source": {"type": "keyword", "keyword": f"topic {i}"}} for i in range(1000)]}))
            rows: list[dict[str, Any]] = []
            for workers in args.workers:
                rows += await _run(settings, workers, args, token, status_paths, bodies, workdir)
    table(f"blogqueue serve alone, wrk -t2 -d{args.seconds}s (vs healthz: req/s ratio, same process count)",
          ["workers", "scenario", "conns", "req/s", "p50 ms", "p99 ms", "vs healthz", "errors"],
          [[r["workers"], r["scenario"], r["connections"], r["requests_per_s"], r["p50_ms"], r["p99_ms"],
            r["vs_healthz"], r["errors"]] for r in rows])
    checks = _checks(rows, args.connections)
    for c in checks:
        print(("PASS " if c["ok"] else "MISS ") + c["what"])
    write_result("http_service", {"connections": args.connections, "seconds": args.seconds, "rows": rows,
                          "checks": checks})
    return 0


def _checks(rows: list[dict[str, Any]], connections: int) -> list[dict[str, Any]]:
    by = {(r["workers"], r["scenario"]): r for r in rows}
    checks = []
    one = {s: by.get((1, s)) for s in TARGETS}
    for s, target in TARGETS.items():
        r = one[s]
        if r:
            checks.append({"what": f"1 process, {connections} connections: {s} {r['vs_healthz']} of /healthz "
                                   f"(target >= {target})", "ok": r["vs_healthz"] >= target})
    status = by.get((1, "job status"))
    if status:
        checks.append({"what": f"job status p99 {status['p99_ms']} ms (target <= {STATUS_P99_MS})",
                       "ok": status["p99_ms"] <= STATUS_P99_MS})
    for s in TARGETS:
        a, b = by.get((1, s)), by.get((2, s))
        if a and b:
            checks.append({"what": f"--workers 2 raises {s}: {a['requests_per_s']} -> {b['requests_per_s']} req/s",
                           "ok": b["requests_per_s"] > a["requests_per_s"]})
    return checks


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="each scenario's run (after a 1 s warm-up)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="serve --workers values to run")
    sys.exit(asyncio.run(main(parser.parse_args())))
