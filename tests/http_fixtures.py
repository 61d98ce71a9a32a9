"""Fixtures for the HTTP tests: the real app (lifespan and all) over httpx's ASGI transport.

Test modules import these names; pytest finds fixtures imported into a module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest_asyncio
from starlette.applications import Starlette

from blogqueue import tokens
from blogqueue.service.app import create_app
from blogqueue.settings import Settings

TokenFactory = Callable[..., Awaitable[str]]


class Api:
    """Opens clients on running apps; every app's lifespan is closed at the end of the test."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stack: list[Any] = []

    async def client(self, token: str | None = None, *, settings: Settings | None = None,
                     raise_app_exceptions: bool = True) -> httpx.AsyncClient:
        app = await self.app(settings or self.settings)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.AsyncClient(transport=transport, base_url="http://bq.test", headers=headers)
        self._stack.append(c)
        return c

    async def app(self, settings: Settings) -> Starlette:
        app = create_app(settings)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        self._stack.append(ctx)
        return app

    async def close(self) -> None:
        for item in reversed(self._stack):
            if isinstance(item, httpx.AsyncClient):
                await item.aclose()
            else:
                await item.__aexit__(None, None, None)


@pytest_asyncio.fixture(loop_scope="session")
async def api(settings: Settings) -> AsyncIterator[Api]:
    a = Api(settings)
    yield a
    await a.close()


@pytest_asyncio.fixture(loop_scope="session")
async def make_token(pool: asyncpg.Pool) -> TokenFactory:
    async def make(tenant: str, *, admin: bool = False, user: str | None = None) -> str:
        token, _ = await tokens.create(pool, tenant, user_id=user, is_admin=admin)
        return token

    return make


def keyword(n: int = 1, **extra: Any) -> list[dict[str, Any]]:
    return [{"source": {"type": "keyword", "keyword": f"topic {i}"}, **extra} for i in range(n)]


def assert_error(resp: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if field is not None:
        assert body["error"]["details"]["field"] == field, body
    return body["error"]
