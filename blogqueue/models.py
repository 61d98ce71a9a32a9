"""What the library's read and write calls return: typed, immutable objects.

`Client.enqueue` returns `Enqueued`, `get_job` a `JobDetail` (a `Job` with
`wait_reason`, `events` and `stages`), `list_jobs` a `JobPage` of `Job`s, `get_batch` a
`Batch`, the stop calls `Stopped`. They are pydantic models, so the HTTP
service answers with `obj.model_dump_json()` and the OpenAPI document takes
their JSON schemas from the same classes: one definition for the library, the
wire and the document. Times are `datetime` in Python and ISO 8601 strings
(`datetime.isoformat()`, e.g. `2026-01-31T09:00:00.123456+00:00`) in JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

PublicStatus = Literal["queued", "running", "retrying", "done", "failed", "cancelled"]


def _iso(value: datetime) -> str:
    return value.isoformat()


# isoformat() rather than pydantic's own rendering ("Z" for UTC), so the JSON is what it was
# before the models existed and what the contract's examples show.
Time = Annotated[datetime, PlainSerializer(_iso, return_type=str, when_used="json"),
                 WithJsonSchema({"type": "string", "format": "date-time"})]


def _absent_if_none(value: Any) -> bool:
    return value is None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# A plain dataclass, not a model: a bulk enqueue returns 10,000 of them, and building as many
# pydantic models took ~80 ms against ~15 ms for these (10,000 jobs, this 2-core VM, under load).
@dataclass(frozen=True, slots=True)
class EnqueuedJob:
    """One accepted job."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    id: Annotated[str, Field(description="the job's id (a UUID)")]
    status: PublicStatus
    replayed: Annotated[bool, Field(description="true when an idempotency_key matched an existing job")]


class Enqueued(_Model):
    """The answer to an enqueue: all the jobs were accepted, in the order given."""

    batch_id: str
    jobs: list[EnqueuedJob]
    estimated_wait_s: float | None = Field(
        ge=0, description="seconds until the last of these jobs should start at recent throughput; "
        "null while nothing finished in the last five minutes")


class JobEvent(_Model):
    at: Time
    attempt: int = Field(ge=0)
    event: str
    detail: Any = Field(default=None, exclude_if=_absent_if_none)


class StageRecord(_Model):
    attempt: int = Field(ge=0, description="the attempt that saved the stage's output")
    at: Time


class Job(_Model):
    """A job as users see it (DESIGN §4 statuses)."""

    id: str
    tenant_id: str
    batch_id: str
    kind: str
    status: PublicStatus
    stage: str | None = Field(description="the stage running now (status running)")
    model: str | None
    priority: int
    idempotency_key: str | None
    attempts: int = Field(ge=0)
    failures: int = Field(ge=0)
    last_error: str | None
    error_code: str | None
    run_at: Time | None = Field(description="when a scheduled job (status queued) may start")
    next_attempt_at: Time | None = Field(description="when a retrying job runs again")
    created_at: Time | None
    updated_at: Time | None
    started_at: Time | None
    finished_at: Time | None
    metadata: dict[str, Any]
    lane: Literal["now", "batch"] = Field(default="now", description="now: synchronous provider calls; batch: "
                                          "the providers' Batch APIs (docs/batch-lane.md)")
    result: dict[str, Any] | None


class JobDetail(Job):
    """One job read on its own (`get_job`): with why it waits, its progress log and saved stages."""

    wait_reason: str | None = Field(description="why a queued job is not dispatched (no live worker knows "
                                                "its kind); null otherwise")
    events: list[JobEvent] = Field(description="the progress log, oldest first")
    stages: dict[str, StageRecord] = Field(description="the stages whose output is saved, by name")


class JobPage(_Model):
    jobs: list[Job]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last")


class Batch(_Model):
    id: str
    tenant_id: str
    created_at: Time
    total: int = Field(ge=0)
    counts: dict[PublicStatus, int]
    finished: bool


class Stopped(_Model):
    cancelled: int = Field(ge=0, description="waiting jobs cancelled now")
    stopping: int = Field(ge=0, description="running jobs told to stop at their next boundary")
    job: JobDetail | None = Field(default=None, exclude_if=_absent_if_none,
                                  description="the job after the stop (stopping one job only)")


class StreamEvent(_Model):
    """One event of the event stream (`Client.events`, `GET /v1/events`): a change of one job.

    `event_id` orders the stream and is what a reader resumes after (`Last-Event-ID`); `event`
    is the raw name in the job's progress log (`enqueued`, `started`, `stage_done`,
    `retry_scheduled`, `rate_limited`, `released`, `lease_expired`, `stop_requested`, `retried`,
    `done`, `failed`, `cancelled`, or an application's own); `status` the job's status after it.
    """

    event_id: int = Field(ge=1)
    job_id: str
    tenant_id: str
    batch_id: str | None
    kind: str
    event: str
    status: PublicStatus
    stage: str | None = Field(description="the stage the event is about: the one saved, failed, started "
                                          "or next to run; null when the job is done")
    attempt: int = Field(ge=0)
    at: Time
    detail: dict[str, Any] | None


class Retried(_Model):
    """The answer to a batch retry: which failed jobs were queued again."""

    batch_id: str
    retried: int = Field(ge=0)
    job_ids: list[str]
