"""Credits: reservations at enqueue, grants and balances.

The ledger (sql/004_credits.sql) is append-only. Enqueue reserves each new
job's cost in its own transaction; the job's final status change settles the
reservation in the same statement through a trigger (charge when done,
release when failed or cancelled), so a crash can never leave a finished job
with its credits neither charged nor returned, and a job is charged at most
once (unique key per job, retry round and movement: a retried job reserves again,
`reserve_again`).

Spendable balance = grants - reserves + releases
                  = grants - charges - open reservations.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import asyncpg

from .db import Q
from .errors import InsufficientCredits, InvalidInput
from .settings import Settings

if TYPE_CHECKING:
    from .app import App

MAX_GRANT = 10**12


async def reserve(conn: asyncpg.Connection, settings: Settings, tenant_id: str,
                  jobs: list[tuple[uuid.UUID, str]], app: App, *, lanes: list[str] | None = None) -> int:
    """Reserves the cost of the new jobs `(id, kind)`, or raises InsufficientCredits.

    A kind's cost is BLOGQUEUE_CREDIT_COSTS' figure for it, else the `credit_cost`
    the app registered it with (`App.credit_cost`). A batch-lane job (`lanes`, one per job)
    costs BATCH_CREDIT_PERCENT of that, rounded up.

    Must run inside the enqueue's transaction, under its per-tenant lock, so
    the balance read here is still true when the reservation commits.
    """
    if not settings.credits_enabled or not jobs:
        return 0
    amounts = [app.credit_cost(kind, settings) for _, kind in jobs]
    if lanes is not None:
        amounts = [-(-a * settings.batch_credit_percent // 100) if lane == "batch" else a
                   for a, lane in zip(amounts, lanes, strict=True)]
    needed = sum(amounts)
    balance = await conn.fetchval(Q["credit_balance"], tenant_id)
    if needed > balance:
        raise InsufficientCredits(
            f"not enough credits: these jobs cost {needed}, the balance is {balance}",
            details={"required": needed, "balance": balance})
    await conn.execute(Q["credit_reserve"], tenant_id, [i for i, _ in jobs], amounts)
    return needed


async def reserve_again(conn: asyncpg.Connection, settings: Settings, tenant_id: str,
                        jobs: list[tuple[uuid.UUID, int, int]]) -> int:
    """A retry's new reservations `(job id, amount, round)` (the amount the job
    reserved before), or raises InsufficientCredits. Same transaction and lock rules as `reserve`."""
    if not settings.credits_enabled or not jobs:
        return 0
    needed = sum(amount for _, amount, _ in jobs)
    balance = await conn.fetchval(Q["credit_balance"], tenant_id)
    if needed > balance:
        raise InsufficientCredits(
            f"not enough credits: retrying these jobs costs {needed}, the balance is {balance}",
            details={"required": needed, "balance": balance})
    await conn.execute(Q["credit_reserve_round"], tenant_id, [j for j, _, _ in jobs], [a for _, a, _ in jobs],
                       [r for _, _, r in jobs])
    return needed


async def grant(pool: asyncpg.Pool, tenant_id: str, amount: int, note: str | None = None) -> int:
    """Adds credits to a tenant; returns the new balance."""
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_GRANT:
        raise InvalidInput(f"amount must be an integer from 1 to {MAX_GRANT}", details={"field": "amount"})
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q["credit_grant"], tenant_id, amount, note)
        return int(await conn.fetchval(Q["credit_balance"], tenant_id))


async def balance(pool: asyncpg.Pool, tenant_id: str) -> dict[str, Any]:
    """The spendable balance and the totals of each movement."""
    rows = {r["movement"]: r for r in await pool.fetch(Q["credit_summary"], tenant_id)}
    totals = {m: int(rows[m]["amount"]) if m in rows else 0 for m in ("grant", "reserve", "charge", "release")}
    return {"tenant_id": tenant_id, "balance": totals["grant"] - totals["reserve"] + totals["release"],
            "reserved": totals["reserve"] - totals["charge"] - totals["release"],
            "granted": totals["grant"], "charged": totals["charge"]}


async def violations(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every inconsistency of the ledger (tests and operators); empty when all is well."""
    return [dict(r) for r in await pool.fetch(Q["credit_violations"])]
