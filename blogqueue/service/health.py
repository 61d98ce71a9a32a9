"""`GET /healthz` (the process answers) and `GET /readyz` (PostgreSQL and Redis answer).

Readiness opens a fresh Redis connection per check with short timeouts, so a
Redis that comes back is seen at the next probe with no state to reset.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import JSONResponse

from blogqueue.client import Client

from .errors import error_response


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    client = request.app.state.client
    timeout = client.settings.ready_timeout_seconds
    pg, rd = await asyncio.gather(_check_pg(client, timeout), _check_redis(client.settings.redis_url, timeout))
    checks = {"postgresql": pg, "redis": rd}
    failing = [name for name, result in checks.items() if result != "ok"]
    if failing:
        return error_response(503, "unavailable", f"not ready: {', '.join(failing)} unreachable",
                              {"failing": failing, "checks": checks}, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "checks": checks})


async def _check_pg(client: Client, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
        return "ok"
    except Exception as exc:  # any failure means not ready; the class name says which
        return f"error: {type(exc).__name__}"


async def _check_redis(url: str, timeout: float) -> str:
    conn = aioredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                   retry_on_timeout=False)
    try:
        async with asyncio.timeout(timeout * 2):
            await conn.ping()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    finally:
        await conn.aclose()
