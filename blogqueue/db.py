"""PostgreSQL access: the pool, named queries and migrations.

SQL lives in `queries.sql` (named with `-- name: x`) and in the numbered
migrations of `sql/`; Python only calls them by name.
"""

from __future__ import annotations

import json
import re
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


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _release_as_is(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (advisory unlock, CLOSE, UNLISTEN, RESET).

    That query is one more round trip and one more transaction on every release,
    which doubled the database work per job (benchmarks/engine.py). Pool
    connections never keep session state here: LISTEN and session advisory
    locks use `connect()`, transaction-scoped locks end with their transaction,
    and asyncpg still rolls back an open transaction before this runs.
    """


async def create_pool(settings: Settings, *, min_size: int = 1, max_size: int | None = None,
                      **connect_kwargs: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size or settings.db_pool_size,
        init=_init_connection,
        reset=_release_as_is,
        command_timeout=60,
        **connect_kwargs,
    )
    assert pool is not None
    return pool


async def connect(settings: Settings) -> asyncpg.Connection:
    """A dedicated connection (LISTEN, advisory locks), outside the pool."""
    conn = await asyncpg.connect(settings.database_url)
    await _init_connection(conn)
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
