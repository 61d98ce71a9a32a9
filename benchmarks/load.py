"""The HTTP service under an open-loop load: the highest arrival rate it holds.

`blogqueue serve` runs as a real process, two real `blogqueue worker` processes
execute the jobs on the offline provider (5 ms a call), on a database and a
redis-server of this run's own (benchmarks/_harness.py). Requests arrive at a fixed
rate whatever the latency (testkit.load.open_loop, paced by aiolimiter; latency
counted from each arrival's scheduled time, so a slow service cannot slow the load
down and hide it: no coordinated omission), spread over `--tenants` tenants: one-job
enqueues, reads of a recent job, list pages, bulks of 20, stops.

The rate starts at `--start-rate` and is multiplied by `--factor` every
`--step-seconds` until a step fails: p99 over all requests above `--p99-ms` (250),
or any 5xx, transport error or dropped arrival. Reports the highest rate held and a
table per step; writes benchmarks/results/load.json; exits 1 if nothing was held.

`--outage` runs one step at `--rate` for `--seconds` instead and stops the private
redis-server for `--outage-seconds` in the middle: `/readyz` must answer 503 while
enqueue, poll, list and stop (which need PostgreSQL only) keep answering; then it is
started again on the same port. Writes load_outage.json; exits 1 on any 5xx.

    make bench-load                                   # stepped, 20 s a step
    make bench-load BENCH_ARGS="--outage --seconds 30 --rate 50"
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
from testkit.load import OpenLoopResult, Recorder, Send, aiohttp_sender, aiohttp_session, limits, open_loop, summarize


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
        exits: list[str] = []
        supervisor = asyncio.create_task(_supervise(bench, exits))
        # httpx for the harness's own probes (/readyz); aiohttp sends the load (testkit.load.aiohttp_sender).
        async with httpx.AsyncClient(base_url=base_url, timeout=args.timeout,
                                     limits=limits(args.max_in_flight)) as http, \
                aiohttp_session(base_url, args.max_in_flight, args.timeout) as session:
            send = aiohttp_sender(session)
            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await wait_for(ready, timeout=60, interval=0.5, what="the service to be ready")
            if args.outage:
                result = await _outage_run(bench, http, send, toks, args)
            else:
                result = await _stepped(send, toks, args)
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        result["jobs_by_status"] = dict(await bench.pool.fetch("SELECT status, count(*) FROM bq_jobs GROUP BY status"))
        if args.keep_logs:
            shutil.copytree(bench.logdir, args.keep_logs, dirs_exist_ok=True)
    for tail in exits:
        print("last log lines of a worker that exited (restarted):\n    " + tail.replace("\n", "\n    "))
    result["worker_exit_log_tails"] = exits
    result["params"] = vars(args)
    write_result("load_outage" if args.outage else "load", result)
    if args.outage:
        return 1 if result["5xx"] else 0
    return 0 if result["highest_rate_held"] else 1


def _step_row(step: OpenLoopResult, rec: Recorder, p99_bound: float) -> dict[str, Any]:
    every = [s for ss in rec.by_endpoint().values() for s in ss]
    overall = summarize(every)
    five_xx = rec.count_5xx()
    transport = sum(1 for s in every if s.status is None)
    held = (overall["p99_ms"] is not None and overall["p99_ms"] <= p99_bound and not five_xx and not transport
            and not step.dropped)
    return {"rate": step.rate, "sent": step.scheduled - step.dropped, "dropped": step.dropped,
            "answered_per_s": round(len(every) / step.seconds, 1), "p50_ms": overall["p50_ms"],
            "p99_ms": overall["p99_ms"], "max_ms": overall["max_ms"], "5xx": five_xx, "transport_errors": transport,
            "pacer_lag_s": step.lag_s, "held": held,
            "endpoints": {e: summarize(s) for e, s in rec.by_endpoint().items()}}


async def _stepped(send: Send, toks: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    rate = args.start_rate
    misses = 0
    while rate <= args.max_rate:
        rec = Recorder()
        step = await open_loop(send, toks, rate, args.step_seconds, rec, max_in_flight=args.max_in_flight)
        row = _step_row(step, rec, args.p99_ms)
        steps.append(row)
        print(f"rate {rate:g}/s: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, 5xx {row['5xx']}, "
              f"transport errors {row['transport_errors']}, dropped {row['dropped']}: "
              f"{'held' if row['held'] else 'NOT held'}", flush=True)
        # One failed step may be noise on a shared machine: stop after two in a row.
        misses = 0 if row["held"] else misses + 1
        if misses >= 2:
            break
        rate = round(rate * args.factor, 1)
        await asyncio.sleep(args.pause)
    held = [r["rate"] for r in steps if r["held"]]
    highest = max(held) if held else None
    table(f"Open loop: {args.tenants} tenants, {args.workers} workers (offline {args.latency_ms:g} ms/call), "
          f"{args.step_seconds:g} s a step; held = p99 <= {args.p99_ms:g} ms, no 5xx, no transport error",
          ["rate/s", "sent", "answered/s", "p50 ms", "p99 ms", "max ms", "5xx", "errors", "dropped", "held"],
          [[r["rate"], r["sent"], r["answered_per_s"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["5xx"],
            r["transport_errors"], r["dropped"], "yes" if r["held"] else "no"] for r in steps])
    print(f"\nhighest rate held: {highest} requests/s")
    return {"steps": steps, "highest_rate_held": highest, "p99_bound_ms": args.p99_ms}


async def _outage_run(bench: Bench, http: httpx.AsyncClient, send: Send, toks: dict[str, str],
                      args: argparse.Namespace) -> dict[str, Any]:
    rec = Recorder()
    outage_task = asyncio.create_task(_outage(bench, http, args.seconds / 2 - args.outage_seconds / 2,
                                              args.outage_seconds))
    step = await open_loop(send, toks, args.rate, args.seconds, rec, max_in_flight=args.max_in_flight)
    outage = await outage_task
    row = _step_row(step, rec, args.p99_ms)
    per = row.pop("endpoints")
    rows = [[e, p["requests"], p["p50_ms"], p["p95_ms"], p["p99_ms"], p["max_ms"], p["error_rate"],
             " ".join(f"{k}:{v}" for k, v in p["status_counts"].items())] for e, p in per.items()]
    table(f"Open loop at {args.rate:g}/s for {args.seconds:g} s with a Redis outage",
          ["endpoint", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms", "error rate", "statuses"], rows)
    window = (outage["t_stop"], outage["t_ready"])
    in_win = rec.by_endpoint(*window)
    orows = [[e, len(s), sum(1 for x in s if x.status is not None and x.status >= 500),
              " ".join(f"{k}:{v}" for k, v in summarize(s)["status_counts"].items())]
             for e, s in in_win.items()]
    orows.append(["readyz", sum(outage["readyz_during"].values()),
                  sum(v for k, v in outage["readyz_during"].items() if k.startswith("5")),
                  " ".join(f"{k}:{v}" for k, v in sorted(outage["readyz_during"].items()))])
    table(f"During the Redis outage ({window[1] - window[0]:.1f} s, stop to ready again)",
          ["endpoint", "requests", "5xx", "statuses"], orows)
    print(f"readyz before: {outage['readyz_before']}; ready again "
          f"{outage['ready_again_after_restart_s']} s after redis restarted")
    print(f"\n5xx: {row['5xx']}")
    return {"overall": row, "endpoints": per, "5xx": row["5xx"],
            "outage": {k: v for k, v in outage.items() if not k.startswith("t_")} | {
                "window_s": round(window[1] - window[0], 2),
                "by_endpoint": {e: summarize(s) for e, s in in_win.items()}}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start-rate", type=float, default=25.0, help="arrivals/s of the first step")
    parser.add_argument("--factor", type=float, default=1.5, help="each step's rate over the previous one's")
    parser.add_argument("--max-rate", type=float, default=5000.0, help="stop stepping above this")
    parser.add_argument("--step-seconds", type=float, default=20.0)
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between steps")
    parser.add_argument("--p99-ms", type=float, default=250.0, help="a step is held with p99 at most this")
    parser.add_argument("--max-in-flight", type=int, default=2000,
                        help="arrivals beyond this many unanswered requests are dropped (and fail the step)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="offline provider latency per call")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request client timeout (s)")
    parser.add_argument("--log-level", default="INFO", help="service and worker log level")
    parser.add_argument("--service-pool", type=int, help="the service's DB_POOL_SIZE (default: the setting)")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the service and worker logs here")
    parser.add_argument("--outage", action="store_true", help="one step at --rate with a Redis outage mid-run")
    parser.add_argument("--rate", type=float, default=50.0, help="--outage: the arrival rate")
    parser.add_argument("--seconds", type=float, default=30.0, help="--outage: the run's length")
    parser.add_argument("--outage-seconds", type=float, default=5.0)
    a = parser.parse_args()
    if a.start_rate <= 0 or a.factor <= 1 or a.step_seconds <= 0 or a.tenants < 1 or a.rate <= 0:
        parser.error("--start-rate, --step-seconds, --rate and --tenants must be positive, --factor above 1")
    sys.exit(asyncio.run(main(a)))
