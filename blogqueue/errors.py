"""Errors, in two families.

`BlogqueueError` and its subclasses are refusals of a library call (bad input,
unknown id, full backlog...). Each carries the contract's error `code`, a
message for humans and optional `details` (`BacklogFull` also `retry_after`).
They know nothing of HTTP: the service maps codes to statuses in one table
(blogqueue/service/errors.py).

`JobError` and its subclasses are raised inside a job's stages and say how the
engine must treat the failure (DESIGN §4): retry it, wait without using an
attempt, or fail at once. Their messages end up in `last_error`, so they must
never contain a secret.
"""

from __future__ import annotations

from typing import Any


class BlogqueueError(Exception):
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class InvalidInput(BlogqueueError):
    code = "invalid_input"


class NotFound(BlogqueueError):
    code = "not_found"


class Conflict(BlogqueueError):
    code = "idempotency_conflict"


class InsufficientCredits(BlogqueueError):
    code = "insufficient_credits"


class BacklogFull(BlogqueueError):
    code = "backlog_full"

    def __init__(self, message: str, *, retry_after: int, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class Unavailable(BlogqueueError):
    code = "unavailable"


class JobError(Exception):
    """A stage failed; the subclass decides what happens to the job."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RetryableError(JobError):
    """Timeouts, connection errors, 5xx: try again after the retry schedule's delay."""

    code = "retryable"


class RateLimited(JobError):
    """A provider said 429: wait as long as asked; no attempt is used up."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(0.0, retry_after)


class FatalError(JobError):
    """Bad or missing key, content refusal, invalid input: fail now, retrying cannot help."""

    code = "fatal"
