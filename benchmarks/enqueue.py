"""Enqueue rate: bulk submissions through the library (the HTTP path: benchmarks/http_enqueue.py).

Each size is enqueued by one tenant in batches of MAX_BATCH_SIZE with
`Client.enqueue`, into an empty database, with no workers running; the
backlog limits are raised for the run so nothing is refused.

    python benchmarks/enqueue.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
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


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    async with bench_env() as bench:
        for n in sizes:
            rows.append(await library_path(bench, n))
    table("Bulk enqueue (one tenant, empty queue, no workers)",
          ["path", "jobs", "batches", "batch size", "wall s", "jobs/s"],
          [[r["path"], r["jobs"], r["batches"], r["batch_size"], r["wall_s"], r["jobs_per_s"]] for r in rows])
    write_result("enqueue", {"results": rows})


if __name__ == "__main__":
    asyncio.run(main())
