"""The OpenAPI 3.1 document at `GET /openapi.json`, generated, never written by hand.

Bodies come from the pydantic models (blogqueue.models for the library's results,
blogqueue.service.schemas for the rest); what the loaded app decides comes from its
registry (`registry_of`): the job kinds, the source types each accepts and their
fields, the providers whose keys can be stored. So a kind or source added to the
app is in the document of the server that runs it. The paths and their answers
are listed here once; tests compare them with the route table and run
schemathesis against a running service (tests/test_http_openapi.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse

from blogqueue import __version__
from blogqueue.aisettings import MAX_KEY_LENGTH
from blogqueue.app import App
from blogqueue.jobs import PUBLIC_STATUSES
from blogqueue.models import Batch, Enqueued, JobDetail, JobPage, Stopped

from . import console, routes_events, routes_wix, schemas

Mode = Literal["validation", "serialization"]


@dataclass(frozen=True)
class Registry:
    """What the document needs to know of the loaded app."""

    kinds: dict[str, tuple[str, ...]]          # kind -> the source types it accepts
    sources: dict[str, dict[str, Any]]         # source type -> JSON schema of the submitted object
    key_providers: tuple[str, ...]             # providers whose API keys users may store


def registry_of(app: App | None = None) -> Registry:
    """The registry the document is generated from: the one place that reads the app (the
    built-in `App()` when None)."""
    app = app if app is not None else App()
    return Registry(kinds={name: tuple(kind.sources) for name, kind in app.kinds.items()},
                    sources={name: source.json_schema() for name, source in app.sources.items()},
                    key_providers=tuple(app.key_providers))


MODELS: list[tuple[type[BaseModel], Mode]] = [
    (schemas.Error, "serialization"),
    (schemas.JobInput, "validation"), (schemas.JobBatchInput, "validation"),
    (schemas.AISettingsInput, "validation"),
    (Enqueued, "serialization"), (JobDetail, "serialization"), (JobPage, "serialization"),
    (Batch, "serialization"), (Stopped, "serialization"),
    (schemas.Credits, "serialization"), (schemas.AISettings, "serialization"),
    (schemas.Metrics, "serialization"), (schemas.Health, "serialization"), (schemas.Ready, "serialization"),
    *[(m, "serialization") for m in routes_events.MODELS],
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


AUTH_ERRORS = {"401": _err("missing, malformed or revoked token"),
               "403": _err("a metrics-only token: it reads GET /metrics and nothing else"),
               "503": _err("PostgreSQL unreachable")}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _op(summary: str, responses: dict[str, Any], *, params: list[Any] | None = None,
        body: dict[str, Any] | None = None, auth: bool = True) -> dict[str, Any]:
    common = {k: v for k, v in AUTH_ERRORS.items() if k not in responses} if auth else {}
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **common}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if not auth:
        op["security"] = []
    return op


def _paths() -> dict[str, Any]:
    ai_put = _op("Set the preferred model and store or delete provider keys (all or nothing)", {
        "200": _json(_ref("AISettings"), "the settings after the change"),
        "400": _err("malformed JSON"), "413": _err("body too large"),
        "422": _err("invalid or unknown field (details.field names it); the error never repeats a key"),
    }, body=_ref("AISettingsInput"))
    # Same status, a second cause: AUTH_ERRORS' 503 would otherwise hide it.
    ai_put["responses"]["503"] = _err("PostgreSQL unreachable, or code unavailable: the server has no "
                                      "SECRET_KEY to encrypt keys with")
    return {
        "/v1/jobs": {
            "post": _op("Enqueue one job, or many atomically", {
                "202": _json(_ref("Enqueued"), "accepted"),
                "400": _err("malformed JSON"), "402": _err("not enough credits (where credits are enabled)"),
                "409": _err("idempotency_key reused for a different job"),
                "413": _err("body too large"), "422": _err("invalid field (details.field names it)"),
                "429": {**_err("backlog full; see Retry-After"),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
            }, body={"oneOf": [_ref("JobInput"), _ref("JobBatchInput")]}),
            "get": _op("The caller's jobs, newest first, cursor-paginated", {
                "200": _json(_ref("JobPage"), "a page of jobs"),
                "404": _err("unknown, foreign or malformed cursor, or malformed batch_id"),
                "422": _err("invalid query parameter"),
            }, params=[
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(PUBLIC_STATUSES)}},
                {"name": "batch_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200,
                                                             "default": 50}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ]),
        },
        "/v1/jobs/{job_id}": {"get": _op("One job with its events and result", {
            "200": _json(_ref("JobDetail"), "the job"), "404": _err("unknown or another tenant's job"),
        }, params=[JOB_ID])},
        "/v1/jobs/{job_id}/stop": {"post": _op("Stop one job", {
            "200": _json(_ref("Stopped"), "stopped (a finished job is left as it is)"),
            "404": _err("unknown or another tenant's job"),
        }, params=[JOB_ID])},
        "/v1/batches/{batch_id}": {"get": _op("A batch's counts by status", {
            "200": _json(_ref("Batch"), "the batch"), "404": _err("unknown or another tenant's batch"),
        }, params=[BATCH_ID])},
        "/v1/batches/{batch_id}/stop": {"post": _op("Stop a batch", {
            "200": _json(_ref("Stopped"), "stopped"), "404": _err("unknown or another tenant's batch"),
        }, params=[BATCH_ID])},
        "/v1/stop": {"post": _op("Stop all of the caller's tenant's queued and running jobs (an admin token: "
                                 "those of the tenant named by ?tenant=)", {
            "200": _json(_ref("Stopped"), "stopped"),
            "403": _err("?tenant= names another tenant and the token is not an admin's"),
            "422": _err("unknown query parameter, or an empty or over-long tenant"),
        }, params=[{"name": "tenant", "in": "query", "schema": {"type": "string", "minLength": 1, "maxLength": 200}}])},
        "/v1/credits": {"get": _op("The caller's tenant's credit balance", {
            "200": _json(_ref("Credits"), "the balance"),
        })},
        "/v1/ai-settings": {
            "get": _op("The caller's preferred model and stored provider keys (masked)", {
                "200": _json(_ref("AISettings"), "the settings"),
            }),
            "put": ai_put,
        },
        "/v1/metrics": {"get": _op("Operational metrics (admin)", {
            "200": _json(_ref("Metrics"), "metrics"), "403": _err("not an admin token"),
        })},
        "/metrics": {"get": _op("The metrics in Prometheus text format, with HTTP latency histograms "
                                "(an admin or a metrics-only token)", {
            "200": {"description": "Prometheus text exposition",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            "403": _err("neither an admin nor a metrics token"),
        })},
        "/healthz": {"get": _op("The process is alive", {"200": _json(_ref("Health"), "alive")}, auth=False)},
        "/readyz": {"get": _op("PostgreSQL and Redis reachable", {
            "200": _json(_ref("Ready"), "ready"),
            "503": _err("details.failing names the unreachable dependencies"),
        }, auth=False)},
        "/openapi.json": {"get": _op("This document", {
            "200": {"description": "OpenAPI document",
                    "content": {"application/json": {"schema": {"type": "object"}}}},
        }, auth=False)},
    }


def _source_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) + "Source"


def _hoisted(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A standalone JSON schema as a component: its `$defs` move to the components, refs follow."""
    text = json.dumps(schema).replace('"#/$defs/', '"#/components/schemas/')
    out: dict[str, Any] = json.loads(text)
    for name, sub in out.pop("$defs", {}).items():
        components.setdefault(name, sub)
    return out


def _apply_registry(components: dict[str, Any], reg: Registry) -> None:
    """Narrows the app-dependent parts of the models' schemas to the loaded app."""
    for name, schema in reg.sources.items():
        components[_source_name(name)] = _hoisted(schema, components)
    components["Source"] = {
        "description": "Where the job's subject comes from; `type` picks the source. Which types a kind "
                       "accepts: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in reg.kinds.items()) + ".",
        "oneOf": [_ref(_source_name(name)) for name in reg.sources],
    }
    job = components["JobInput"]["properties"]
    job["kind"] = {**job["kind"], "enum": list(reg.kinds)}
    job["source"] = {**_ref("Source"), "description": job["source"].get("description", "")}
    keys = components["AISettingsInput"]["properties"]["keys"]
    key = {"anyOf": [{"type": "string", "minLength": 8, "maxLength": MAX_KEY_LENGTH}, {"type": "null"}],
           "writeOnly": True}
    keys.pop("additionalProperties", None)
    components["AISettingsInput"]["properties"]["keys"] = {
        **keys, "type": "object", "additionalProperties": False,
        "properties": {p: key for p in reg.key_providers}}
    stored = components["AISettings"]["properties"]["keys"]
    components["AISettings"]["properties"]["keys"] = {**stored, "propertyNames": {"enum": list(reg.key_providers)}}


def build(reg: Registry) -> dict[str, Any]:
    _, defs = models_json_schema(MODELS, ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = defs["$defs"]
    _apply_registry(components, reg)
    components.update(routes_wix.SCHEMAS)
    return {
        "openapi": "3.1.0",
        "info": {"title": "blogqueue", "version": __version__,
                 "description": "AI content job system. See docs/http.md."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {**_paths(), **routes_wix.openapi_paths(_op, _json, _err, _ref),
                  **routes_events.openapi_paths(_op, _json, _err, _ref), **console.openapi_paths(_op, _err)},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from `blogqueue token create`"}},
        },
    }


def document(app: App | None = None) -> dict[str, Any]:
    """The document for `app` (the built-in registry when None)."""
    return build(registry_of(app))


async def openapi_json(request: Request) -> JSONResponse:
    state = request.app.state
    if getattr(state, "openapi", None) is None:
        # Built once per process: the app's registry does not change while it serves.
        state.openapi = document(getattr(state, "bq_app", None))
    return JSONResponse(state.openapi)
