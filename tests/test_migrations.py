import asyncio

import asyncpg

from blogqueue import db

from .conftest import BASE, _with_db


async def test_migrate_is_idempotent(database_url):
    assert await db.migrate(BASE.replace(database_url=database_url)) == []


async def test_concurrent_migrations_apply_once():
    name = "bq_test_migrate_race"
    admin = await asyncpg.connect(_with_db(BASE.database_url, "postgres"))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        s = BASE.replace(database_url=_with_db(BASE.database_url, name))
        results = await asyncio.gather(*(db.migrate(s) for _ in range(4)))
        applied = [r for r in results if r]
        assert len(applied) == 1, results
        assert applied[0] == [f"{v:03d}_{n}" for v, n, _ in db.migration_files()]
        conn = await asyncpg.connect(s.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM bq_schema_migrations") == len(db.migration_files())
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
