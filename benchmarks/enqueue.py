"""Enqueue rate: bulk submissions through the library (and, once it exists, HTTP).

Each size is enqueued by one tenant in batches of MAX_BATCH_SIZE with
`Client.enqueue`, into an empty database, with no workers running; the
backlog limits are raised for the run so nothing is refused.

    python benchmarks/enqueue.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import time
from typing import Any

from _harness import Bench, bench_env, table, write_result


async def library_path(bench: Bench, n: int) -> dict[str, Any]:
    await bench.reset()
    batches = 0
    t0 = time.monotonic()
    size = bench.settings.max_batch_size
    for start in range(0, n, size):
        k = min(size, n - start)
        jobs = [{"source": {"type": "keyword", "keyword": f"topic {start + i}"}} for i in range(k)]
        await bench.client.enqueue("bulk-tenant", jobs)
        batches += 1
    wall = time.monotonic() - t0
    stored = await bench.pool.fetchval("SELECT count(*) FROM bq_jobs")
    assert stored == n, f"expected {n} jobs stored, found {stored}"
    return {"path": "library", "jobs": n, "batches": batches, "batch_size": size, "wall_s": wall,
            "jobs_per_s": n / wall}


# -- HTTP path: to be filled in once service/app.py has create_app(settings) ----------
async def http_path(bench: Bench, n: int) -> dict[str, Any] | None:
    """POST /v1/jobs with {"jobs": [...]} in batches of MAX_BATCH_SIZE against the real service.

    The service (issue: HTTP service) is not built yet; until `service.app.create_app`
    exists this prints a note and is skipped. When it lands: start `blogqueue serve` on a
    free port with `bench.settings.to_env()` (or run `create_app(settings)` under uvicorn
    in-process), create an admin-less tenant token with `blogqueue token create`, and time
    the POSTs with httpx exactly like `library_path` above.
    """
    try:
        app_module = importlib.import_module("service.app")
    except ImportError:
        app_module = None
    if app_module is None or not hasattr(app_module, "create_app"):
        print(f"note: HTTP enqueue of {n:,} jobs skipped: service.app.create_app does not exist yet")
        return None
    print(f"note: HTTP enqueue of {n:,} jobs not implemented yet in benchmarks/enqueue.py (http_path)")
    return None


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    async with bench_env() as bench:
        for n in sizes:
            rows.append(await library_path(bench, n))
            http = await http_path(bench, n)
            if http:
                rows.append(http)
    table("Bulk enqueue (one tenant, empty queue, no workers)",
          ["path", "jobs", "batches", "batch size", "wall s", "jobs/s"],
          [[r["path"], r["jobs"], r["batches"], r["batch_size"], r["wall_s"], r["jobs_per_s"]] for r in rows])
    write_result("enqueue", {"results": rows})


if __name__ == "__main__":
    asyncio.run(main())
