"""Redis clients with bounds on a dead peer: the arq queue's and the rate limiter's.

redis-py waits forever by default: no `socket_timeout`, no keepalive. A Redis host
that vanishes without closing the socket (a partition, a frozen VM) would hang arq's
poll loop, the dispatcher's push and every limiter call for as long as TCP keeps the
connection (hours). The options here turn that into an error within seconds, which
the callers already handle: `blogqueue worker` restarts its arq loop with backoff,
the dispatcher drops leadership and campaigns again, a stage's limiter call fails as
a retryable error.
"""

from __future__ import annotations

import socket
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from .settings import Settings

# A connect to an unreachable host fails in this instead of the OS's ~2 minutes.
CONNECT_TIMEOUT_S = 5.0
# redis-py PINGs a pooled connection idle for longer than this before using it, so a
# connection that died quietly while idle is replaced before a command is lost on it.
HEALTH_CHECK_INTERVAL_S = 15


def socket_timeout(settings: Settings) -> float:
    """No command of ours blocks in Redis (no BLPOP; Lua scripts take microseconds), so an
    answer that takes longer than this is a dead peer. Half a lease, at least 5 s: a
    worker cut off from Redis notices before its attempts' leases lapse."""
    return max(5.0, settings.lease_seconds / 2)


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `redis.asyncio.Redis` (and `from_url`) for our connections."""
    opts: dict[str, Any] = {
        "socket_timeout": socket_timeout(settings),
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if not settings.redis_url.startswith("unix://"):
        # Keepalive probes find a vanished Redis host on an idle connection (the limiter's
        # between calls) in about idle + count * interval seconds.
        opts["socket_keepalive"] = True
        opts["socket_keepalive_options"] = {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3}
    return opts


def arq_redis(settings: Settings) -> ArqRedis:
    """The arq pool a worker polls and its dispatcher pushes to (arq's RedisSettings has no
    socket timeout, so the worker hands arq this pool instead of settings)."""
    pool = ConnectionPool.from_url(settings.redis_url, **redis_options(settings))
    return ArqRedis(pool, default_queue_name=settings.queue_name)
