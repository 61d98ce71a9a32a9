"""The HTTP API's request and response bodies as pydantic models: the one definition the
OpenAPI document (blogqueue/service/openapi.py) is generated from.

The library's results (`Enqueued`, `Job`, `JobPage`, `Batch`, `Stopped`) live in
blogqueue.models and are serialised by the service as they are; this module adds
the bodies only HTTP has (requests, errors, credits, AI settings, metrics,
health). What depends on the loaded app (the kinds, the source types and their
fields, the providers whose keys can be stored) is filled in by the generator
from the app's registry, not written here.

Validation of submitted jobs stays in the library (blogqueue.jobs), which names
the offending field in `details.field`; the schemathesis contract test
(tests/test_http_openapi.py) checks the two agree on what the server answers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from blogqueue.models import PublicStatus, Time


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors --------------------------------------------------------------------------


class ErrorBody(_Body):
    code: str = Field(description="stable, machine-readable: invalid_input, not_found, backlog_full, ...")
    message: str = Field(description="for humans; never holds a secret")
    details: Any = Field(default=None, description="e.g. {\"field\": \"jobs[3].source\"}; absent when empty")


class Error(_Body):
    """The contract's error format, for every refusal."""

    error: ErrorBody


# -- requests ------------------------------------------------------------------------


class JobInput(_Body):
    """One job object (DESIGN §6). `kind` and `source` are narrowed to the loaded app's kinds and
    source types when the document is generated."""

    kind: str = Field(default="blog_post", description="one of the app's job kinds")
    source: dict[str, Any] = Field(description="where the job's subject comes from; `type` picks the source")
    model: str | None = Field(default=None, description="provider:model, e.g. offline:template")
    priority: int = Field(default=0, ge=-1000, le=1000, description="higher runs sooner within the tenant")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200,
                                        description="the same key in the same tenant returns the existing job")
    image: bool = True
    publish: bool = True
    run_at: datetime | None = Field(default=None, description="not dispatched before this time (ISO 8601)")
    metadata: dict[str, Any] = Field(default_factory=dict, description="echoed back with the job")
    lane: Literal["now", "batch"] | None = Field(
        default=None, description="now: synchronous provider calls; batch: the providers' Batch APIs, about half "
        "the price, results within hours (docs/batch-lane.md). Default: the deployment's BLOGQUEUE_DEFAULT_LANE")


class JobBatchInput(_Body):
    jobs: list[JobInput] = Field(min_length=1, description="accepted all together or not at all")


class AISettingsInput(_Body):
    """Absent fields are left as they are; null clears the model or deletes a key. `keys` lists the
    app's providers that take a key when the document is generated."""

    model: str | None = Field(default=None, description="provider:model, e.g. openai:gpt-4o-mini")
    keys: dict[str, str | None] = Field(default_factory=dict, description="provider -> key (write-only)")


# -- responses -----------------------------------------------------------------------


class Credits(_Body):
    """`balance` is spendable; `reserved` is held by unfinished jobs."""

    tenant_id: str
    enabled: bool
    balance: int
    reserved: int
    granted: int
    charged: int


class StoredKey(_Body):
    masked: str = Field(description="e.g. sk-…abcd; never the key")
    updated_at: str


class AISettings(_Body):
    """`user_id` null: the tenant's own settings (a token without a user)."""

    tenant_id: str
    user_id: str | None
    model: str | None
    keys: dict[str, StoredKey]
    updated_at: Time | None


class TenantBacklog(_Body):
    tenant_id: str
    backlog: int = Field(ge=0)
    in_flight: int = Field(ge=0)


class Throughput(BaseModel):
    finished_1m: int = Field(ge=0)
    finished_5m: int = Field(ge=0)
    per_second_1m: float
    per_second_5m: float


class DispatcherState(BaseModel):
    lag_s: float = Field(ge=0, description="age of the oldest ready job not yet dispatched")
    ready: int = Field(ge=0)


class WorkerState(BaseModel):
    id: str
    hostname: str
    pid: int
    concurrency: int = Field(ge=0)
    in_flight: int = Field(ge=0)
    jobs_done: int = Field(ge=0)
    jobs_failed: int = Field(ge=0)
    is_leader: bool
    heartbeat_age_s: float = Field(ge=0)


class PoolState(BaseModel):
    size: int = Field(ge=0)
    idle: int = Field(ge=0)
    max: int = Field(ge=0)
    waiting: int | None = Field(ge=0)


class BucketLimit(_Body):
    """Per minute; `itpm`/`otpm` (input/output tokens, Anthropic) only where set."""

    rpm: int | None = Field(ge=0)
    tpm: int | None = Field(ge=0)
    itpm: int | None = Field(None, ge=0)
    otpm: int | None = Field(None, ge=0)


class BucketUse(_Body):
    requests: int = Field(ge=0)
    tokens: int
    input_tokens: int | None = None
    output_tokens: int | None = None


class Bucket(BaseModel):
    """One (provider, API key) bucket; the key appears only as a SHA-256 prefix."""

    provider: str
    key_hash: str = Field(pattern="^[0-9a-f]+$")
    limit: BucketLimit
    used: BucketUse = Field(description="in the last 60 s")
    utilisation: float | None = Field(ge=0, description="the largest used/limit over the limited dimensions; "
                                                        "null without limits")
    waiting: int = Field(ge=0)
    waits: int = Field(ge=0)
    granted: int = Field(ge=0)
    rate_limited_429: int = Field(ge=0)
    paused_until: float | None = Field(description="Unix time while a 429 pause lasts")
    last_pause_s: float | None = Field(ge=0)
    tokens_used_total: int


class TenantFigures(_Body):
    tenant_id: str
    backlog: int = Field(ge=0, description="unfinished jobs")
    in_flight: int = Field(ge=0, description="dispatched or running")
    done_5m: int = Field(ge=0)
    failed_5m: int = Field(ge=0)
    cancelled_5m: int = Field(ge=0)
    first_start_wait_s: float | None = Field(description="mean wait to first start of the jobs first "
                                                         "started in the last 5 minutes; null if none")
    oldest_waiting_s: float = Field(ge=0, description="wait so far of its oldest ready job never started")


class RecentFailure(_Body):
    job_id: str
    tenant_id: str
    batch_id: str
    kind: str
    stage: str | None
    attempt: int
    error_code: str | None
    last_error: str | None
    finished_at: str | None


class RecentBatch(_Body):
    batch_id: str
    tenant_id: str
    job_count: int = Field(ge=0)
    created_at: str
    counts: dict[PublicStatus, int]


class Leader(_Body):
    worker_id: str
    epoch: int
    lease_left_s: float = Field(ge=0)


class FinishedByOutcome(_Body):
    kind: str
    outcome: Literal["done", "failed", "cancelled"]
    n: int = Field(ge=0)
class BatchLaneState(_Body):
    parked_jobs: int = Field(ge=0, description="batch-lane jobs waiting for a provider batch")
    open_batches: int = Field(ge=0, description="provider batches recorded or submitted, not yet ended")
    requests: int = Field(ge=0, description="batch-lane requests answered")
    tokens: int = Field(ge=0, description="prompt + completion tokens of those answers")
    fallbacks_to_now_lane: int = Field(ge=0, description="requests an expired, failed or cancelled batch "
                                       "sent back to the now-lane")
    estimated_saving_tokens: int = Field(ge=0, description="tokens x (1 - BATCH_PRICE_RATIO): what the batch "
                                         "lane saved, in tokens at the synchronous price")


class Metrics(_Body):
    counts: dict[PublicStatus, int]
    tenants: list[TenantFigures] = Field(description="the tenants with the largest backlog, then the busiest "
                                                     "in the last 5 minutes (METRICS_TOP_TENANTS)")
    recent_failures: list[RecentFailure] = Field(description="the newest failed jobs")
    recent_batches: list[RecentBatch] = Field(description="the newest batches with their counts")
    leader: Leader | None = Field(description="the dispatcher leader's lease; null before any worker ran")
    finished_5m: list[FinishedByOutcome] = Field(description="jobs finished in the last 5 minutes")
    backlog_by_tenant: list[TenantBacklog]
    throughput: Throughput
    dispatcher: DispatcherState
    workers: list[WorkerState]
    database_pool: PoolState
    batch_lane: BatchLaneState
    buckets: list[Bucket] = Field(description="rate-limit buckets of this queue; empty while Redis is unreachable")
    redis_reachable: bool = Field(description="false: Redis did not answer, so buckets could not be read")


class Health(_Body):
    status: Literal["ok"]


class ReadyChecks(_Body):
    postgresql: Literal["ok"]
    redis: Literal["ok"]


class Ready(_Body):
    status: Literal["ready"]
    checks: ReadyChecks
