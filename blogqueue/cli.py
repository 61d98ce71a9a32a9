"""The `blogqueue` command: migrate, worker, serve, token, enqueue, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blogqueue", description="AI content job system")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the SQL migrations (idempotent)")
    sub.add_parser("worker", help="run an arq worker (same as: arq blogqueue.worker.WorkerSettings)")
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    enqueue = sub.add_parser("enqueue", help="enqueue jobs from a JSON file ('-' for stdin)")
    enqueue.add_argument("--tenant", required=True)
    enqueue.add_argument("file")
    status = sub.add_parser("status", help="print one job as JSON")
    status.add_argument("job_id")
    keys = sub.add_parser("keys", help="stored provider keys")
    keys.add_argument("action", choices=["rotate"],
                      help="re-encrypt every stored key under SECRET_KEY (reads SECRET_KEY_PREVIOUS)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"blogqueue: invalid settings: {exc}", file=sys.stderr)
        return 2
    from .logconfig import configure

    configure(settings)

    if args.command == "migrate":
        from .db import migrate

        applied = asyncio.run(migrate(settings))
        print("applied: " + ", ".join(applied) if applied else "up to date")
        return 0
    if args.command == "worker":
        from .worker import run

        run(settings)
        return 0
    if args.command == "serve":
        from service.app import serve as run_service

        run_service(settings, host=args.host, port=args.port)
        return 0
    if args.command == "keys":
        return asyncio.run(_rotate_keys(settings))
    if args.command in ("enqueue", "status"):
        if args.command == "enqueue":
            args.body = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        return asyncio.run(_client_command(settings, args))
    return 2


async def _rotate_keys(settings: Settings) -> int:
    from . import aisettings, db

    if not settings.secret_key:
        print("blogqueue: BLOGQUEUE_SECRET_KEY must be set to rotate keys", file=sys.stderr)
        return 2
    pool = await db.create_pool(settings)
    try:
        counts = await aisettings.rotate(pool, settings)
    finally:
        await pool.close()
    print(json.dumps(counts))
    return 1 if counts["unreadable"] else 0


async def _client_command(settings: Settings, args: argparse.Namespace) -> int:
    from .client import Client
    from .errors import BlogqueueError

    async with await Client.connect(settings) as client:
        try:
            if args.command == "enqueue":
                body = json.loads(args.body)
                jobs = body["jobs"] if isinstance(body, dict) and "jobs" in body else body
                out = await client.enqueue(args.tenant, jobs)
            else:
                out = await client.get_job(args.job_id)
        except BlogqueueError as exc:
            print(json.dumps(exc.to_dict()), file=sys.stderr)
            return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
