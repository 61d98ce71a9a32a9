import asyncio

import asyncpg

from blogqueue import db
from testkit.databases import fresh_database

from .conftest import BASE


async def test_migrate_is_idempotent(database_url):
    assert await db.migrate(BASE.replace(database_url=database_url)) == []


async def test_concurrent_migrations_apply_once():
    async with fresh_database(BASE, "bq_test_migrate_race", migrate=False) as url:
        s = BASE.replace(database_url=url)
        results = await asyncio.gather(*(db.migrate(s) for _ in range(4)))
        applied = [r for r in results if r]
        assert len(applied) == 1, results
        assert applied[0] == [f"{v:03d}_{n}" for v, n, _ in db.migration_files()]
        conn = await asyncpg.connect(s.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM bq_schema_migrations") == len(db.migration_files())
        finally:
            await conn.close()
