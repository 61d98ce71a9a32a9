"""The Starlette app (issue: HTTP service). Placeholder entry so `blogqueue serve` fails clearly."""

from __future__ import annotations

from blogqueue.settings import Settings


def serve(settings: Settings, *, host: str, port: int) -> None:
    raise SystemExit("blogqueue serve: the HTTP service is not built yet")
