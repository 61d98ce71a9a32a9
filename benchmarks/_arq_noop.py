"""Raw arq, for comparison: a worker whose only function does nothing.

Run by `engine.py` as `python benchmarks/_arq_noop.py <redis_url> <queue> <health_key>`; the
settings are the ones DESIGN §9 quotes (max_jobs 100, poll_delay 0.05).
"""

from __future__ import annotations

import sys
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func, run_worker

MAX_JOBS = 100
POLL_DELAY = 0.05


async def noop(ctx: dict[str, Any], n: int) -> None:
    return None


def settings(redis_url: str, queue: str, health_key: str) -> dict[str, Any]:
    return {"functions": [func(noop, name="noop", max_tries=1, keep_result=0)], "queue_name": queue,
            "health_check_key": health_key,
            "redis_settings": RedisSettings.from_dsn(redis_url), "max_jobs": MAX_JOBS, "poll_delay": POLL_DELAY,
            "keep_result": 0, "max_tries": 1, "log_results": False, "health_check_interval": 60}


if __name__ == "__main__":
    run_worker(settings(sys.argv[1], sys.argv[2], sys.argv[3]))  # type: ignore[arg-type]
