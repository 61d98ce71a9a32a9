"""The `blogqueue` command: migrate, worker, serve, token, enqueue, status, retry, credits."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blogqueue", description="AI content job system")
    parser.add_argument("--version", action="version", version=f"blogqueue {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the SQL migrations (idempotent)")
    worker = sub.add_parser("worker", help="run an arq worker (same as: arq blogqueue.worker.WorkerSettings)")
    serve = sub.add_parser("serve", help="run the HTTP service")
    for p in (worker, serve):
        p.add_argument("--app", metavar="MODULE:ATTR",
                       help="the blogqueue.App with your kinds, sources, publishers, providers (or BLOGQUEUE_APP)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="service processes sharing the port (each with its own database pool)")
    enqueue = sub.add_parser("enqueue", help="enqueue jobs from a JSON file ('-' for stdin)")
    enqueue.add_argument("--tenant", required=True)
    enqueue.add_argument("file")
    status = sub.add_parser("status", help="print one job as JSON")
    status.add_argument("job_id")
    retry = sub.add_parser("retry", help="queue a batch's failed jobs again, from their first unsaved stage")
    retry.add_argument("batch_id")
    retry.add_argument("--tenant", help="the batch's tenant (refused if it is another's); default: any tenant")
    creds = sub.add_parser("credits", help="grant credits or show a tenant's balance")
    creds_sub = creds.add_subparsers(dest="credits_command", required=True)
    grant = creds_sub.add_parser("grant", help="add credits to a tenant")
    grant.add_argument("--tenant", required=True)
    grant.add_argument("--amount", type=int, required=True)
    grant.add_argument("--note")
    bal = creds_sub.add_parser("balance", help="print a tenant's balance as JSON")
    bal.add_argument("--tenant", required=True)
    token = sub.add_parser("token", help="API tokens: create, revoke, list")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    t_create = token_sub.add_parser("create", help="print a new token once (only its hash is stored)")
    t_create.add_argument("--tenant", required=True)
    t_create.add_argument("--user")
    t_scope = t_create.add_mutually_exclusive_group()
    t_scope.add_argument("--admin", action="store_true", help="sees every tenant and the metrics")
    t_scope.add_argument("--metrics", action="store_true",
                         help="reads GET /metrics and nothing else (for a Prometheus scraper)")
    t_revoke = token_sub.add_parser("revoke", help="revoke a token by its id (or an unambiguous prefix)")
    t_revoke.add_argument("token_id")
    t_list = token_sub.add_parser("list", help="a tenant's tokens, without secrets")
    t_list.add_argument("--tenant", required=True)
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
    if args.command in ("worker", "serve"):
        from .app import load

        try:
            app = load(args.app or settings.app, where="--app" if args.app else "BLOGQUEUE_APP")
            app.check(settings)
        except SettingsError as exc:
            print(f"blogqueue {args.command}: {exc}", file=sys.stderr)
            return 2
    if args.command == "worker":
        from .worker import run

        run(settings, app)
        return 0
    if args.command == "serve":
        from .service.app import serve as run_service

        if args.workers < 1:
            print("blogqueue serve: --workers must be at least 1", file=sys.stderr)
            return 2
        run_service(settings, host=args.host, port=args.port, bq_app=app, workers=args.workers)
        return 0
    if args.command == "token":
        from .tokens_cli import run as run_tokens

        return asyncio.run(run_tokens(settings, args))
    if args.command == "keys":
        return asyncio.run(_rotate_keys(settings))
    if args.command in ("enqueue", "status", "retry", "credits"):
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
    from .app import load
    from .client import Client
    from .errors import BlogqueueError

    try:
        app = load(settings.app)  # jobs are validated against the deployment's app
    except SettingsError as exc:
        print(f"blogqueue {args.command}: {exc}", file=sys.stderr)
        return 2
    out: Any
    async with Client.open(settings, app) as client:
        try:
            if args.command == "enqueue":
                body = json.loads(args.body)
                jobs = body["jobs"] if isinstance(body, dict) and "jobs" in body else body
                out = (await client.enqueue(args.tenant, jobs)).model_dump(mode="json")
            elif args.command == "retry":
                out = (await client.retry_batch(args.batch_id, args.tenant)).model_dump(mode="json")
            elif args.command == "credits" and args.credits_command == "grant":
                out = await client.grant_credits(args.tenant, args.amount, args.note)
            elif args.command == "credits":
                out = await client.credit_balance(args.tenant)
            else:
                out = (await client.get_job(args.job_id)).model_dump(mode="json")
        except BlogqueueError as exc:
            print(json.dumps(exc.to_dict()), file=sys.stderr)
            return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
