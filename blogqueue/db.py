"""PostgreSQL access: the pool, named queries and migrations.

SQL lives in `queries.sql` (named with `-- name: x`) and in the numbered
migrations of `sql/`; Python only calls them by name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import socket
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

from .settings import Settings

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load_queries() -> dict[str, str]:
    text = resources.files("blogqueue").joinpath("queries.sql").read_text()
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


Q: dict[str, str] = _load_queries()


# -- dead peers ----------------------------------------------------------------------
#
# A peer that vanishes without closing its socket (a host cut off by the network, a VM
# that froze) leaves both ends of a TCP connection waiting: with the kernel's defaults
# a connection with nothing to send is probed after two hours, and data that is never
# acknowledged is retransmitted for about fifteen minutes. Both ends therefore set
# their own bounds, scaled to LEASE_SECONDS: by the time a lease in PostgreSQL has
# lapsed, the connections of whoever held it are gone too.
#
# - Server side (`server_settings`, per session): PostgreSQL probes an idle client
#   after `tcp_keepalives_idle` and drops it after `count` unanswered probes, and drops a
#   client that leaves sent data unacknowledged for `tcp_user_timeout`. The backend of
#   a vanished worker (and any row lock it held mid-statement) is gone within about a
#   lease instead of hours.
# - Client side (socket options on every connection): the same bounds the other way,
#   so a LISTEN connection or a pooled connection to a PostgreSQL that vanished fails
#   (and is replaced) instead of waiting forever for a notification or an answer.
#
# Neither detects a *frozen* process: its kernel still answers keepalives and
# acknowledges data. That case is the leases' business (dispatcher.py, worker.py).

CONNECT_TIMEOUT_S = 10.0  # a connect to an unreachable host fails in this, not after 60 s (asyncpg's default)


def keepalive_bounds(settings: Settings) -> tuple[int, int, int, int]:
    """(idle s, interval s, count, user timeout ms): a dead peer is noticed in about LEASE_SECONDS."""
    lease = settings.lease_seconds
    idle = max(1, int(lease / 2))
    interval = max(1, int(lease / 6))
    return idle, interval, 3, max(1000, int(lease * 1000))


def server_settings(settings: Settings, application_name: str = "blogqueue") -> dict[str, str]:
    idle, interval, count, user_timeout_ms = keepalive_bounds(settings)
    return {"application_name": application_name[:63], "tcp_keepalives_idle": str(idle),
            "tcp_keepalives_interval": str(interval), "tcp_keepalives_count": str(count),
            "tcp_user_timeout": str(user_timeout_ms)}


def _client_keepalive(conn: asyncpg.Connection, settings: Settings) -> None:
    """Socket options on the client's end; asyncpg has no parameter for them, so they are set
    on the connection's socket (a Unix socket has none, and is left alone)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle, interval, count, user_timeout_ms = keepalive_bounds(settings)
    with contextlib.suppress(OSError, AttributeError):  # platforms without these options
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)


async def _init_connection(conn: asyncpg.Connection, settings: Settings | None = None) -> None:
    if settings is not None:
        _client_keepalive(conn, settings)
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _release_as_is(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (advisory unlock, CLOSE, UNLISTEN, RESET).

    That query is one more round trip and one more transaction on every release,
    which doubled the database work per job (benchmarks/engine.py). Pool
    connections never keep session state here: LISTEN and the dispatcher's lease
    connection use `connect()`, transaction-scoped locks end with their transaction,
    and asyncpg still rolls back an open transaction before this runs.
    """


async def create_pool(settings: Settings, *, min_size: int = 1, max_size: int | None = None,
                      **connect_kwargs: Any) -> asyncpg.Pool:
    connect_kwargs.setdefault("timeout", CONNECT_TIMEOUT_S)
    connect_kwargs.setdefault("server_settings", server_settings(settings))
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size or settings.db_pool_size,
        init=functools.partial(_init_connection, settings=settings),
        reset=_release_as_is,
        # No statement of ours runs for a minute; one that does is waiting on a dead peer.
        command_timeout=60,
        **connect_kwargs,
    )
    assert pool is not None
    return pool


async def connect(settings: Settings, application_name: str = "blogqueue",
                  command_timeout: float | None = 30) -> asyncpg.Connection:
    """A dedicated connection (LISTEN, the dispatcher's lease), outside the pool.

    Bounded like the pool's: a connect gives up after CONNECT_TIMEOUT_S, a statement after
    `command_timeout`, and a dead peer is noticed in about LEASE_SECONDS (see above).
    """
    conn = await asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT_S, command_timeout=command_timeout,
                                 server_settings=server_settings(settings, application_name))
    await _init_connection(conn, settings)
    return conn


def migrations_dir() -> Path:
    """The SQL migrations: inside the wheel as blogqueue/sql, else the checkout's sql/."""
    packaged = Path(str(resources.files("blogqueue"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def migration_files() -> list[tuple[int, str, str]]:
    found = []
    for path in sorted(migrations_dir().glob("*.sql")):
        m = re.match(r"^(\d+)_([\w-]+)\.sql$", path.name)
        if not m:
            raise RuntimeError(f"migration file name must look like 001_name.sql: {path.name}")
        found.append((int(m.group(1)), m.group(2), path.read_text()))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("two migrations share a version number")
    return found


async def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the applied names.

    Safe to run from several processes at once: a session advisory lock
    serialises them and each re-reads what is already applied.
    """
    conn = await asyncpg.connect(settings.database_url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext('blogqueue.migrate'))")
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS bq_schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM bq_schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO bq_schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(f"{version:03d}_{name}")
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock(hashtext('blogqueue.migrate'))")
        finally:
            await conn.close()
    return applied


def record(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None
