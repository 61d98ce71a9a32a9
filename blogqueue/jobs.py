"""The job object: validation of what callers submit, and what they read back.

`parse_job` turns one submitted job (a dict, as in DESIGN §6) into a `JobSpec`
or raises `InvalidInput` naming the offending field. Kinds, sources and models
are checked against the app (blogqueue.App): an unknown kind, or a source the
kind does not take, is refused. Nothing here touches the database, except
`wait_reason`, which says why a queued job is not dispatched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput
from .sources import SourceInvalid

if TYPE_CHECKING:
    from .app import App

FIELDS = {"kind", "source", "model", "priority", "idempotency_key", "image", "publish", "run_at", "metadata", "lane"}
LANES = ("now", "batch")
PUBLIC_STATUSES = ("queued", "running", "retrying", "done", "failed", "cancelled")
MAX_METADATA_BYTES = 16_384
MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class JobSpec:
    kind: str
    source: dict[str, Any]
    model: str | None = None
    priority: int = 0
    idempotency_key: str | None = None
    image: bool = True
    publish: bool = True
    run_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    lane: str | None = None  # None: the deployment's DEFAULT_LANE, decided at enqueue

    def stored(self, default_lane: str = "now") -> dict[str, Any]:
        """What is kept in the job's `spec` column (`lane` only for the batch lane: a spec without
        it is a now-lane job, as every job stored before the lane existed)."""
        out = {"source": self.source, "image": self.image, "publish": self.publish, "metadata": self.metadata}
        if (self.lane or default_lane) == "batch":
            out["lane"] = "batch"
        return out

    def request_hash(self) -> str:
        """Identifies the request, to tell a replay from a conflicting reuse of a key."""
        body = {"kind": self.kind, "model": self.model, "priority": self.priority,
                "run_at": self.run_at.isoformat() if self.run_at else None, **self.stored()}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def parse_job(raw: Any, app: App, where: str = "job") -> JobSpec:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object", details={"field": where})
    bad_text = _unstorable(raw, where)
    if bad_text:
        raise InvalidInput(f"{bad_text} contains a NUL character or a lone surrogate, which cannot be stored",
                           details={"field": bad_text})
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise InvalidInput(f"{where}.{unknown[0]} is not a known field",
                           details={"field": f"{where}.{unknown[0]}"})

    def bad(name: str, why: str) -> InvalidInput:
        return InvalidInput(f"{where}.{name} {why}", details={"field": f"{where}.{name}"})

    kind = raw.get("kind", "blog_post")
    if not isinstance(kind, str) or kind not in app.kinds:
        raise bad("kind", f"must be one of {', '.join(app.kinds)}")
    source = raw.get("source")
    if not isinstance(source, dict):
        raise bad("source", "must be an object with a \"type\"")
    try:
        source = app.validate_source(kind, source)
    except SourceInvalid as exc:
        # The message names the exact field; details keep the source object as the field.
        text = f"{where}.source.{exc.field} {exc.why}" if exc.field else f"{where}.source {exc.why}"
        raise InvalidInput(text, details={"field": f"{where}.source"}) from None

    model = raw.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise bad("model", "must be a string like \"provider:model\"")
        try:
            app.validate_model(model)
        except ValueError as exc:
            raise bad("model", str(exc)) from None

    priority = raw.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or not -1000 <= priority <= 1000:
        raise bad("priority", "must be an integer from -1000 to 1000")

    key = raw.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH):
        raise bad("idempotency_key", f"must be a string of 1 to {MAX_KEY_LENGTH} characters")

    flags = {}
    for name in ("image", "publish"):
        value = raw.get(name, True)
        if not isinstance(value, bool):
            raise bad(name, "must be true or false")
        flags[name] = value

    run_at = raw.get("run_at")
    if run_at is not None:
        run_at = _parse_time(run_at)
        if run_at is None:
            raise bad("run_at", "must be an ISO 8601 time, e.g. 2026-01-31T09:00:00Z")

    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise bad("metadata", "must be an object")
    if metadata and len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise bad("metadata", f"must encode to at most {MAX_METADATA_BYTES} bytes of JSON")

    lane = raw.get("lane")
    if lane is not None and lane not in LANES:
        raise bad("lane", "must be \"now\" or \"batch\"")

    return JobSpec(kind=kind, source=source, model=model, priority=priority, idempotency_key=key,
                   image=flags["image"], publish=flags["publish"], run_at=run_at, metadata=metadata, lane=lane)


def _unstorable(value: Any, where: str) -> str | None:
    """The path of the first string PostgreSQL cannot store (NUL, or not encodable as UTF-8)."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or (not item.isascii() and not _utf8(item)):
                return path
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and ("\x00" in k or (not k.isascii() and not _utf8(k))):
                    return path
                stack.append((v, f"{path}.{k}"))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # A time without an offset is taken as UTC, the only unambiguous reading.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def public_job(row: dict[str, Any]) -> dict[str, Any]:
    """The job as users see it (DESIGN §4 statuses)."""
    status = row["public_status"]
    waiting = row["status"] == "scheduled"
    return {
        "id": str(row["id"]),
        "tenant_id": row["tenant_id"],
        "batch_id": str(row["batch_id"]),
        "kind": row["kind"],
        "status": status,
        "stage": row["stage"] if status == "running" else None,
        "model": row["model"],
        "priority": row["priority"],
        "idempotency_key": row["idempotency_key"],
        "attempts": row["attempt"],
        "failures": row["failures"],
        "last_error": row["last_error"],
        "error_code": row["error_code"],
        "run_at": _iso(row["run_at"]) if waiting and status == "queued" else None,
        "next_attempt_at": _iso(row["run_at"]) if waiting and status == "retrying" else None,
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "metadata": row["spec"].get("metadata", {}),
        "lane": row["spec"].get("lane", "now"),
        "result": row["result"],
    }


def waiting_reason(job: dict[str, Any], kind_served: bool | None) -> str | None:
    """Why a queued job is not dispatched, when no live worker knows its kind; None otherwise.

    Workers record the kinds their app registers (bq_workers.kinds); the
    dispatcher hands out only kinds some live worker knows, so such a job waits
    in the queue (never failing) until one starts. `kind_served` is read with the
    job, in the same statement (queries.sql get_job_detail).
    """
    if job["status"] != "queued" or kind_served:
        return None
    return (f"no live worker knows the kind {job['kind']!r}: start workers with an app that registers it "
            f"(blogqueue worker --app MODULE:ATTR)")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
