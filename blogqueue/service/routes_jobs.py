"""The job endpoints of DESIGN §6: parse, authenticate, call the library, answer.

A tenant token passes its tenant to every library call, so another tenant's
job, batch or cursor is simply not found (404) and nothing about it leaks.
An admin token reads and stops across tenants (scope None), and enqueues into
its own tenant.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from blogqueue.client import Client
from blogqueue.errors import InvalidInput

from .auth import authenticate
from .bodies import read_json
from .errors import Forbidden

ENVELOPE_FIELDS = {"jobs"}
LIST_PARAMS = {"status", "batch_id", "limit", "cursor"}


def _client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


def _answer(model: BaseModel, status_code: int = 200) -> Response:
    """A library result as the JSON body (the models' JSON is the contract's)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


async def create_jobs(request: Request) -> Response:
    principal = await authenticate(request)
    client = _client(request)
    body = await read_json(request, client.settings)
    jobs: Any = body
    if isinstance(body, dict) and "jobs" in body:
        unknown = sorted(set(body) - ENVELOPE_FIELDS)
        if unknown:
            raise InvalidInput(f"{unknown[0]} is not a known field of the envelope {{\"jobs\": [...]}}",
                               details={"field": unknown[0]})
        jobs = body["jobs"]
        if not isinstance(jobs, list):
            raise InvalidInput("jobs must be a list of job objects", details={"field": "jobs"})
    elif not isinstance(body, dict):
        raise InvalidInput("the body must be a job object or {\"jobs\": [...]}", details={"field": "body"})
    out = await client.enqueue(principal.tenant_id, jobs, user_id=principal.user_id)
    return _answer(out, 202)


async def list_jobs(request: Request) -> Response:
    principal = await authenticate(request)
    params = request.query_params
    unknown = sorted(set(params) - LIST_PARAMS)
    if unknown:
        raise InvalidInput(f"{unknown[0]} is not a known query parameter", details={"field": unknown[0]})
    limit_raw = params.get("limit", "50")
    try:
        limit = int(limit_raw)
    except ValueError:
        raise InvalidInput("limit must be an integer", details={"field": "limit"}) from None
    out = await _client(request).list_jobs(
        principal.scope, status=params.get("status") or None, batch_id=params.get("batch_id") or None,
        limit=limit, cursor=params.get("cursor") or None)
    return _answer(out)


async def get_job(request: Request) -> Response:
    principal = await authenticate(request)
    # The encoded view, from the process's job view cache when fresh (blogqueue.jobviews).
    body = await _client(request).get_job_json(request.path_params["job_id"], principal.scope)
    return Response(body, media_type="application/json")


async def stop_job(request: Request) -> Response:
    principal = await authenticate(request)
    return _answer(await _client(request).stop_job(request.path_params["job_id"], principal.scope))


async def get_batch(request: Request) -> Response:
    principal = await authenticate(request)
    return _answer(await _client(request).get_batch(request.path_params["batch_id"], principal.scope))


async def stop_batch(request: Request) -> Response:
    principal = await authenticate(request)
    return _answer(await _client(request).stop_batch(request.path_params["batch_id"], principal.scope))


async def stop_tenant(request: Request) -> Response:
    """Stops the caller's own tenant; an admin names another with `?tenant=T` (the console's
    "stop tenant"). Stopping every tenant at once is not an HTTP call."""
    principal = await authenticate(request)
    unknown = sorted(set(request.query_params) - {"tenant"})
    if unknown:
        raise InvalidInput(f"{unknown[0]} is not a known query parameter", details={"field": unknown[0]})
    tenant = request.query_params.get("tenant", principal.tenant_id)
    if not 0 < len(tenant) <= 200:
        raise InvalidInput("tenant must be a string of 1 to 200 characters", details={"field": "tenant"})
    if tenant != principal.tenant_id and not principal.is_admin:
        raise Forbidden("only an admin token may stop another tenant")
    return _answer(await _client(request).stop_tenant(tenant))


async def credits(request: Request) -> JSONResponse:
    principal = await authenticate(request)
    client = _client(request)
    out = await client.credit_balance(principal.tenant_id)
    return JSONResponse({**out, "enabled": client.settings.credits_enabled})
