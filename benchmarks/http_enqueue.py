"""Enqueue rate through the HTTP service: `blogqueue serve` as a real process, real PostgreSQL.

Runs in a database of its own (created and dropped here), so it never touches
another deployment's jobs. Prints a table and writes benchmarks/results/http_enqueue.json.

    make bench-http        # or: python benchmarks/http_enqueue.py --requests 200 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from blogqueue import db, tokens
from blogqueue.settings import Settings
from testkit.databases import drop_database, recreate_database

RESULTS = Path(__file__).parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_serve(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGQUEUE_")} | settings.to_env()
    return subprocess.Popen([sys.executable, "-m", "blogqueue.cli", "serve", "--port", str(port)], env=env)


async def _scenario(http: httpx.AsyncClient, name: str, batch: int, requests: int, concurrency: int,
                    token: str) -> dict[str, float | int | str]:
    body = {"jobs": [{"source": {"type": "keyword", "keyword": f"topic {i}"}} for i in range(batch)]}
    if batch == 1:
        body = body["jobs"][0]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            t0 = time.perf_counter()
            resp = await http.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {token}"})
            latencies.append(time.perf_counter() - t0)
            assert resp.status_code == 202, resp.text

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"scenario": name, "jobs_per_request": batch, "requests": requests, "concurrency": concurrency,
            "requests_per_s": round(requests / elapsed, 1), "jobs_per_s": round(requests * batch / elapsed, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 1)}


async def main(args: argparse.Namespace) -> None:
    base = Settings.from_env()
    name = f"bq_bench_http_{os.getpid()}"
    settings = base.replace(database_url=await recreate_database(base, name), max_backlog=10_000_000,
                            max_tenant_backlog=10_000_000, log_level="WARNING")
    port = _free_port()
    proc = None
    try:
        pool = await db.create_pool(settings, max_size=2)
        token, _ = await tokens.create(pool, "bench")
        await pool.close()
        proc = _start_serve(settings, port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for _ in range(200):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            rows = [
                await _scenario(http, "single job", 1, args.requests * 5, args.concurrency, token),
                await _scenario(http, "bulk 100", 100, args.requests, args.concurrency, token),
                await _scenario(http, "bulk 1000", 1000, max(1, args.requests // 5), args.concurrency, token),
            ]
    finally:
        if proc:
            proc.terminate()
            proc.wait(15)
        await drop_database(base, name)
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http_enqueue.json").write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    asyncio.run(main(parser.parse_args()))
