"""The OpenAPI 3.1 document of the whole API, served at `GET /openapi.json`.

Written by hand and kept true by tests: tests/test_http_openapi.py compares its
paths and methods with the app's routes, validates real responses against these
schemas, and fuzzes every operation from it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from blogqueue.aisettings import KEY_PROVIDERS, MAX_KEY_LENGTH
from blogqueue.jobs import PUBLIC_STATUSES


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


NULL_STR = {"type": ["string", "null"]}
TIME = {"type": ["string", "null"], "format": "date-time"}
COUNT = {"type": "integer", "minimum": 0}
AUTH_ERRORS = {"401": _err("missing, malformed or revoked token"),
               "503": _err("PostgreSQL unreachable")}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}}}},
    },
    "Source": {
        "description": "Where the job's subject comes from; more source types may be added.",
        "oneOf": [_ref("KeywordSource"), _ref("ProductSource")],
    },
    "KeywordSource": {
        "type": "object", "required": ["type", "keyword"], "additionalProperties": False,
        "properties": {"type": {"const": "keyword"}, "keyword": {"type": "string", "minLength": 1, "maxLength": 300},
                       "tone": {"type": "string", "maxLength": 50}, "language": {"type": "string", "maxLength": 50}},
    },
    "ProductSource": {
        "type": "object", "required": ["type", "name"], "additionalProperties": False,
        "properties": {
            "type": {"const": "product"}, "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": {"type": "string", "maxLength": 8000}, "brand": {"type": "string", "maxLength": 200},
            "category": {"type": "string", "maxLength": 200},
            "price": {"type": ["string", "number"], "maxLength": 50},
            "attributes": {"type": "object", "maxProperties": 50,
                           "additionalProperties": {"type": ["string", "number"]}},
        },
    },
    "JobInput": {
        "type": "object", "required": ["source"], "additionalProperties": False,
        "properties": {
            "kind": {"type": "string", "enum": ["blog_post", "product_optimization"], "default": "blog_post"},
            "source": _ref("Source"),
            "model": {"type": "string", "description": "provider:model, e.g. offline:template"},
            "priority": {"type": "integer", "minimum": -1000, "maximum": 1000, "default": 0},
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200},
            "image": {"type": "boolean", "default": True},
            "publish": {"type": "boolean", "default": True},
            "run_at": {"type": "string", "format": "date-time"},
            "metadata": {"type": "object"},
        },
    },
    "JobBatchInput": {
        "type": "object", "required": ["jobs"], "additionalProperties": False,
        "properties": {"jobs": {"type": "array", "minItems": 1, "items": _ref("JobInput")}},
    },
    "Enqueued": {
        "type": "object", "required": ["batch_id", "jobs", "estimated_wait_s"], "additionalProperties": False,
        "properties": {
            "batch_id": {"type": "string", "format": "uuid"},
            "jobs": {"type": "array", "items": {
                "type": "object", "required": ["id", "status", "replayed"], "additionalProperties": False,
                "properties": {"id": {"type": "string", "format": "uuid"},
                               "status": {"type": "string", "enum": list(PUBLIC_STATUSES)},
                               "replayed": {"type": "boolean"}}}},
            "estimated_wait_s": {"type": ["number", "null"], "minimum": 0},
        },
    },
    "Job": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "tenant_id", "batch_id", "kind", "status", "stage", "attempts", "last_error",
                     "next_attempt_at", "created_at", "updated_at", "result", "metadata"],
        "properties": {
            "id": {"type": "string", "format": "uuid"}, "tenant_id": {"type": "string"},
            "batch_id": {"type": "string", "format": "uuid"}, "kind": {"type": "string"},
            "status": {"type": "string", "enum": list(PUBLIC_STATUSES)}, "stage": NULL_STR,
            "model": NULL_STR, "priority": {"type": "integer"}, "idempotency_key": NULL_STR,
            "attempts": COUNT, "failures": COUNT, "last_error": NULL_STR, "error_code": NULL_STR,
            "run_at": TIME, "next_attempt_at": TIME, "created_at": TIME, "updated_at": TIME,
            "started_at": TIME, "finished_at": TIME, "metadata": {"type": "object"},
            "result": {"type": ["object", "null"]},
            "events": {"type": "array", "items": {
                "type": "object", "required": ["at", "attempt", "event"],
                "properties": {"at": {"type": "string"}, "attempt": COUNT, "event": {"type": "string"},
                               "detail": {}}}},
            "stages": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["attempt", "at"],
                "properties": {"attempt": COUNT, "at": {"type": "string"}}}},
        },
    },
    "JobList": {
        "type": "object", "required": ["jobs", "next_cursor"], "additionalProperties": False,
        "properties": {"jobs": {"type": "array", "items": _ref("Job")}, "next_cursor": NULL_STR},
    },
    "Batch": {
        "type": "object", "required": ["id", "tenant_id", "created_at", "total", "counts", "finished"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "format": "uuid"}, "tenant_id": {"type": "string"},
            "created_at": {"type": "string"}, "total": COUNT, "finished": {"type": "boolean"},
            "counts": {"type": "object", "required": list(PUBLIC_STATUSES), "additionalProperties": False,
                       "properties": {s: COUNT for s in PUBLIC_STATUSES}},
        },
    },
    "Credits": {
        "type": "object", "additionalProperties": False,
        "required": ["tenant_id", "enabled", "balance", "reserved", "granted", "charged"],
        "properties": {"tenant_id": {"type": "string"}, "enabled": {"type": "boolean"},
                       "balance": {"type": "integer"}, "reserved": {"type": "integer"},
                       "granted": {"type": "integer"}, "charged": {"type": "integer"}},
        "description": "balance is spendable; reserved is held by unfinished jobs",
    },
    "Stopped": {
        "type": "object", "required": ["cancelled", "stopping"],
        "properties": {"cancelled": COUNT, "stopping": COUNT, "job": _ref("Job")},
        "description": "cancelled: waiting jobs cancelled now; stopping: running jobs told to stop",
    },
    "Metrics": {
        "type": "object", "additionalProperties": False,
        "required": ["counts", "backlog_by_tenant", "throughput", "dispatcher", "workers", "database_pool",
                     "buckets", "redis_reachable"],
        "properties": {
            "counts": {"type": "object", "required": list(PUBLIC_STATUSES),
                     "properties": {s: COUNT for s in PUBLIC_STATUSES}},
            "backlog_by_tenant": {"type": "array", "items": {
                "type": "object", "required": ["tenant_id", "backlog", "in_flight"],
                "properties": {"tenant_id": {"type": "string"}, "backlog": COUNT, "in_flight": COUNT}}},
            "throughput": {"type": "object", "required": ["finished_1m", "finished_5m", "per_second_1m",
                                                           "per_second_5m"],
                           "properties": {"finished_1m": COUNT, "finished_5m": COUNT,
                                          "per_second_1m": {"type": "number"}, "per_second_5m": {"type": "number"},
                                          "done_5m": COUNT, "failed_5m": COUNT}},
            "dispatcher": {"type": "object", "required": ["lag_s", "ready"],
                           "properties": {"lag_s": {"type": "number", "minimum": 0}, "ready": COUNT}},
            "workers": {"type": "array", "items": {
                "type": "object", "required": ["id", "in_flight", "heartbeat_age_s", "is_leader"],
                "properties": {"id": {"type": "string"}, "hostname": {"type": "string"},
                               "pid": {"type": "integer"}, "concurrency": COUNT, "in_flight": COUNT,
                               "jobs_done": COUNT, "jobs_failed": COUNT, "is_leader": {"type": "boolean"},
                               "heartbeat_age_s": {"type": "number", "minimum": 0}}}},
            "database_pool": {"type": "object", "required": ["size", "idle", "max", "waiting"],
                              "properties": {"size": COUNT, "idle": COUNT, "max": COUNT,
                                             "waiting": {"type": ["integer", "null"], "minimum": 0}}},
            "buckets": {"type": "array", "items": _ref("Bucket"),
                        "description": "rate-limit buckets of this queue; empty while Redis is unreachable"},
            "redis_reachable": {"type": "boolean",
                                "description": "false: Redis did not answer, so buckets could not be read"},
        },
    },
    "Bucket": {
        "type": "object", "additionalProperties": False,
        "required": ["provider", "key_hash", "limit", "used", "utilisation", "waiting", "waits", "granted",
                     "rate_limited_429", "paused_until", "last_pause_s", "tokens_used_total"],
        "description": "one (provider, API key) bucket; the key appears only as a SHA-256 prefix",
        "properties": {
            "provider": {"type": "string"}, "key_hash": {"type": "string", "pattern": "^[0-9a-f]+$"},
            "limit": {"type": "object", "required": ["rpm", "tpm"], "additionalProperties": False,
                      "description": "per minute; itpm/otpm (input/output tokens) only where set",
                      "properties": {"rpm": {"type": ["integer", "null"], "minimum": 0},
                                     "tpm": {"type": ["integer", "null"], "minimum": 0},
                                     "itpm": {"type": "integer", "minimum": 0},
                                     "otpm": {"type": "integer", "minimum": 0}}},
            "used": {"type": "object", "required": ["requests", "tokens"], "additionalProperties": False,
                     "properties": {"requests": COUNT, "tokens": {"type": "integer"},
                                    "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}},
                     "description": "in the last 60 s"},
            "utilisation": {"type": ["number", "null"], "minimum": 0,
                            "description": "the largest used/limit over the limited dimensions; null without limits"},
            "waiting": COUNT, "waits": COUNT, "granted": COUNT, "rate_limited_429": COUNT,
            "paused_until": {"type": ["number", "null"], "description": "Unix time while a 429 pause lasts"},
            "last_pause_s": {"type": ["number", "null"], "minimum": 0}, "tokens_used_total": {"type": "integer"},
        },
    },
    "AISettingsInput": {
        "type": "object", "additionalProperties": False,
        "description": "absent fields are left as they are; null clears the model or deletes a key",
        "properties": {
            "model": {"type": ["string", "null"], "description": "provider:model, e.g. openai:gpt-4o-mini"},
            "keys": {"type": "object", "additionalProperties": False,
                     "properties": {p: {"type": ["string", "null"], "minLength": 8, "maxLength": MAX_KEY_LENGTH,
                                        "writeOnly": True} for p in KEY_PROVIDERS}},
        },
    },
    "AISettings": {
        "type": "object", "additionalProperties": False,
        "required": ["tenant_id", "user_id", "model", "keys", "updated_at"],
        "description": "user_id null: the tenant's own settings (a token without a user)",
        "properties": {
            "tenant_id": {"type": "string"}, "user_id": NULL_STR, "model": NULL_STR, "updated_at": TIME,
            "keys": {"type": "object", "propertyNames": {"enum": list(KEY_PROVIDERS)}, "additionalProperties": {
                "type": "object", "required": ["masked", "updated_at"], "additionalProperties": False,
                "properties": {"masked": {"type": "string", "description": "e.g. sk-…abcd; never the key"},
                               "updated_at": {"type": "string"}}}},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object", "required": ["status", "checks"],
        "properties": {"status": {"const": "ready"},
                       "checks": {"type": "object", "required": ["postgresql", "redis"],
                                  "properties": {"postgresql": {"const": "ok"}, "redis": {"const": "ok"}}}},
    },
}


def _op(summary: str, responses: dict[str, Any], *, params: list[Any] | None = None,
        body: dict[str, Any] | None = None, auth: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **(AUTH_ERRORS if auth else {})}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if not auth:
        op["security"] = []
    return op


def _ai_put() -> dict[str, Any]:
    op = _op("Set the preferred model and store or delete provider keys (all or nothing)", {
        "200": _json(_ref("AISettings"), "the settings after the change"),
        "400": _err("malformed JSON"), "413": _err("body too large"),
        "422": _err("invalid or unknown field (details.field names it); the error never repeats a key"),
    }, body=_ref("AISettingsInput"))
    # Same status, a second cause: AUTH_ERRORS' 503 would otherwise hide it.
    op["responses"]["503"] = _err("PostgreSQL unreachable, or code secret_key_missing: the server has no "
                                  "SECRET_KEY to encrypt keys with")
    return op


PATHS: dict[str, Any] = {
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
            "200": _json(_ref("JobList"), "a page of jobs"),
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
        "200": _json(_ref("Job"), "the job"), "404": _err("unknown or another tenant's job"),
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
    "/v1/stop": {"post": _op("Stop all of the caller's tenant's queued and running jobs", {
        "200": _json(_ref("Stopped"), "stopped"),
    })},
    "/v1/credits": {"get": _op("The caller's tenant's credit balance", {
        "200": _json(_ref("Credits"), "the balance"),
    })},
    "/v1/ai-settings": {
        "get": _op("The caller's preferred model and stored provider keys (masked)", {
            "200": _json(_ref("AISettings"), "the settings"),
        }),
        "put": _ai_put(),
    },
    "/v1/metrics": {"get": _op("Operational metrics (admin)", {
        "200": _json(_ref("Metrics"), "metrics"), "403": _err("not an admin token"),
    })},
    "/metrics": {"get": _op("The same metrics in Prometheus text format (admin)", {
        "200": {"description": "Prometheus text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}}},
        "403": _err("not an admin token"),
    })},
    "/healthz": {"get": _op("The process is alive", {"200": _json(_ref("Health"), "alive")}, auth=False)},
    "/readyz": {"get": _op("PostgreSQL and Redis reachable", {
        "200": _json(_ref("Ready"), "ready"),
        "503": _err("details.failing names the unreachable dependencies"),
    }, auth=False)},
    "/openapi.json": {"get": _op("This document", {
        "200": {"description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}},
    }, auth=False)},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "blogqueue", "version": "1", "description": "AI content job system. See docs/http.md."},
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "a token from `blogqueue token create`"}},
    },
}


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(DOCUMENT)
