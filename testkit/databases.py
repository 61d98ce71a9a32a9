"""Throwaway PostgreSQL databases on the configured server, for tests, benchmarks and the demo."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from blogqueue import db
from blogqueue.settings import Settings


def with_database(url: str, name: str) -> str:
    """The same server and credentials, another database."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(with_database(url, "postgres"))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def recreate_database(base: Settings, name: str, *, migrate: bool = True) -> str:
    """Drops `name` if it exists, creates it empty, migrates it unless told not to; returns its URL."""
    await _admin(base.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    url = with_database(base.database_url, name)
    if migrate:
        await db.migrate(base.replace(database_url=url))
    return url


async def drop_database(base: Settings, name: str) -> None:
    await _admin(base.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def fresh_database(base: Settings, name: str, *, migrate: bool = True) -> AsyncIterator[str]:
    """A new database for the duration of the block, dropped at the end."""
    url = await recreate_database(base, name, migrate=migrate)
    try:
        yield url
    finally:
        await drop_database(base, name)
