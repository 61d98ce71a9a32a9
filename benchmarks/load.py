"""The HTTP service under a bounded loopback load: many clients enqueueing, polling, listing, stopping.

`blogqueue serve` runs as a real process, two real `blogqueue worker` processes
execute the jobs on the offline provider (5 ms a call), on a database and a
redis-server of this run's own (benchmarks/_harness.py). `--clients` client
loops (benchmarks share `testkit.load` with tests/test_http_load.py)
spread over `--tenants` tenants run for `--seconds`; every request goes to
127.0.0.1 and none starts after the deadline. Prints a table per endpoint and
"5xx: N", writes benchmarks/results/load.json (load_outage.json with --outage),
and exits 1 if any 5xx was answered.

`--outage` stops the private redis-server for `--outage-seconds` in the middle
of the run: `/readyz` must answer 503 while enqueue, poll, list and stop (which
need PostgreSQL only) keep answering; then it is started again on the same port.

    make bench-load                                   # 200 clients, 60 s
    make bench-load BENCH_ARGS="--outage --seconds 30"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from _harness import Bench, bench_env, table, wait_for, write_result

from blogqueue import tokens
from testkit.load import Mix, Recorder, limits, run_clients, summarize


async def _outage(bench: Bench, http: httpx.AsyncClient, start_after: float, seconds: float) -> dict[str, Any]:
    """Stops the private redis for `seconds`, probing /readyz throughout; then restarts it."""
    assert bench.redis is not None
    await asyncio.sleep(start_after)
    probes: list[tuple[float, int | None]] = []

    async def probe() -> int | None:
        try:
            status = (await http.get("/readyz")).status_code
        except httpx.TransportError:
            status = None
        probes.append((time.monotonic(), status))
        return status

    before = await probe()
    t_stop = time.monotonic()
    await asyncio.to_thread(bench.redis.stop)
    while time.monotonic() < t_stop + seconds:
        await probe()
        await asyncio.sleep(0.25)
    await asyncio.to_thread(bench.redis.start)
    t_started = time.monotonic()
    t_ready = None
    while time.monotonic() < t_started + 15:
        if await probe() == 200:
            t_ready = time.monotonic()
            break
        await asyncio.sleep(0.1)
    during = Counter(str(s) for t, s in probes if t_stop <= t < t_started)
    return {"t_stop": t_stop, "t_started": t_started, "t_ready": t_ready or time.monotonic(),
            "readyz_before": before, "readyz_during": dict(during),
            "ready_again_after_restart_s": None if t_ready is None else round(t_ready - t_started, 2)}


async def _supervise(bench: Bench, exits: list[str]) -> None:
    """Restarts a worker process that exited, as a process supervisor would; keeps its last log lines."""
    while True:
        await asyncio.sleep(0.5)
        dead = [w for w in bench.workers if not w.alive()]
        if dead:
            exits.extend(_tail(w.log_path) for w in dead)
            bench.workers = [w for w in bench.workers if w.alive()]
            with contextlib.suppress(RuntimeError, TimeoutError):
                await bench.start_workers(len(dead))


def _tail(path: Path | None, lines: int = 6) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def main(args: argparse.Namespace) -> int:
    async with bench_env(offline_latency_ms=args.latency_ms, log_level=args.log_level) as bench:
        toks = {f"tenant-{i:02d}": (await tokens.create(bench.pool, f"tenant-{i:02d}"))[0]
                for i in range(args.tenants)}
        await bench.start_workers(args.workers)
        base_url = await bench.start_service(
            **({"db_pool_size": args.service_pool} if args.service_pool else {}))
        rec = Recorder()
        async with httpx.AsyncClient(base_url=base_url, timeout=args.timeout, limits=limits(args.clients + 2)) as http:
            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await wait_for(ready, timeout=60, interval=0.5, what="the service to be ready")
            outage_task = (asyncio.create_task(_outage(bench, http, args.seconds / 2 - args.outage_seconds / 2,
                                                       args.outage_seconds)) if args.outage else None)
            exits: list[str] = []
            supervisor = asyncio.create_task(_supervise(bench, exits))
            wall = await run_clients(http, toks, args.clients, args.seconds, rec, mix=Mix())
            outage = await outage_task if outage_task else None
        done_at_end = await bench.count("done")
        # Bounded drain: how far the workers get with what was enqueued, for the record only.
        drain_deadline = time.monotonic() + args.drain
        while time.monotonic() < drain_deadline:
            finished = await bench.pool.fetchval(
                "SELECT count(*) FROM bq_jobs WHERE status IN ('done', 'failed', 'cancelled')")
            if finished >= len(rec.jobs):
                break
            await asyncio.sleep(0.25)
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        statuses = dict(await bench.pool.fetch("SELECT status, count(*) FROM bq_jobs GROUP BY status"))
        stored = await bench.pool.fetchval(
            "SELECT count(*) FROM bq_jobs WHERE id = ANY($1::uuid[])", list(rec.jobs))
        if args.keep_logs:
            shutil.copytree(bench.logdir, args.keep_logs, dirs_exist_ok=True)

    per = {e: summarize(s) for e, s in rec.by_endpoint().items()}
    total = sum(p["requests"] for p in per.values())
    five_xx = rec.count_5xx()
    rows = [[e, p["requests"], p["p50_ms"], p["p95_ms"], p["p99_ms"], p["max_ms"], p["error_rate"],
             " ".join(f"{k}:{v}" for k, v in p["status_counts"].items())] for e, p in per.items()]
    title = (f"Load: {args.clients} clients, {args.tenants} tenants, {args.seconds:g} s, {args.workers} workers "
             f"(offline {args.latency_ms:g} ms/call){' with a Redis outage' if args.outage else ''}")
    out = [table(title, ["endpoint", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms", "error rate",
                         "statuses"], rows)]
    overall = {"wall_s": round(wall, 2), "requests": total, "requests_per_s": round(total / wall, 1),
               "jobs_enqueued": len(rec.jobs), "jobs_stored": stored, "jobs_done_at_end": done_at_end,
               "jobs_by_status_after_drain": statuses, "stops_answered": len(rec.stopped),
               "worker_exits_restarted": len(exits), "5xx": five_xx}
    out.append(table("Overall", ["measure", "value"], [[k, v if not isinstance(v, dict) else
                                                        " ".join(f"{a}:{b}" for a, b in sorted(v.items()))]
                                                       for k, v in overall.items()]))
    result: dict[str, Any] = {"params": vars(args), "endpoints": per, "overall": overall}
    if outage:
        window = (outage["t_stop"], outage["t_ready"])
        in_win = rec.by_endpoint(*window)
        orows = [[e, len(s), sum(1 for x in s if x.status is not None and x.status >= 500),
                  " ".join(f"{k}:{v}" for k, v in summarize(s)["status_counts"].items())]
                 for e, s in in_win.items()]
        orows.append(["readyz", sum(outage["readyz_during"].values()),
                      sum(v for k, v in outage["readyz_during"].items() if k.startswith("5")),
                      " ".join(f"{k}:{v}" for k, v in sorted(outage["readyz_during"].items()))])
        out.append(table(f"During the Redis outage ({window[1] - window[0]:.1f} s, stop to ready again)",
                         ["endpoint", "requests", "5xx", "statuses"], orows))
        print(f"readyz before: {outage['readyz_before']}; ready again "
              f"{outage['ready_again_after_restart_s']} s after redis restarted")
        result["outage"] = {k: v for k, v in outage.items() if not k.startswith("t_")} | {
            "window_s": round(window[1] - window[0], 2),
            "by_endpoint": {e: summarize(s) for e, s in in_win.items()}}
    for tail in exits:
        print("last log lines of a worker that exited (restarted):\n    " + tail.replace("\n", "\n    "))
    result["worker_exit_log_tails"] = exits
    print(f"\n5xx: {five_xx}")
    result["tables"] = out
    write_result("load_outage" if args.outage else "load", result)
    return 1 if five_xx else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=5.0, help="offline provider latency per call")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request client timeout (s)")
    parser.add_argument("--drain", type=float, default=20.0, help="at most this long to wait for jobs to finish")
    parser.add_argument("--log-level", default="INFO", help="service and worker log level")
    parser.add_argument("--service-pool", type=int, help="the service's DB_POOL_SIZE (default: the setting)")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the service and worker logs here")
    parser.add_argument("--outage", action="store_true", help="stop the private redis-server mid-run")
    parser.add_argument("--outage-seconds", type=float, default=5.0)
    a = parser.parse_args()
    if a.clients < 1 or a.seconds <= 0 or a.tenants < 1:
        parser.error("--clients, --seconds and --tenants must be positive")
    sys.exit(asyncio.run(main(a)))
