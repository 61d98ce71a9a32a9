"""`blogqueue token create|revoke|list`."""

from __future__ import annotations

import argparse
import json
import sys

from . import db, tokens
from .errors import BlogqueueError
from .settings import Settings


async def run(settings: Settings, args: argparse.Namespace) -> int:
    pool = await db.create_pool(settings, max_size=2)
    try:
        if args.token_command == "create":
            scope = "admin" if args.admin else "metrics" if args.metrics else "tenant"
            token, row = await tokens.create(pool, args.tenant, user_id=args.user, scope=scope)
            # The token alone on stdout, so `TOKEN=$(blogqueue token create ...)` works;
            # what it is goes to stderr.
            print(token)
            print(f"token {row['id']} for tenant {row['tenant_id']}"
                  f"{'' if scope == 'tenant' else f' ({scope})'}: shown once, store it now", file=sys.stderr)
        elif args.token_command == "revoke":
            print(json.dumps(await tokens.revoke(pool, args.token_id)))
        else:
            print(json.dumps(await tokens.list_tokens(pool, args.tenant), indent=2))
    except BlogqueueError as exc:
        print(json.dumps(exc.to_dict()), file=sys.stderr)
        return 1
    finally:
        await pool.close()
    return 0
