"""blogqueue: a fair, durable, rate-limited job system for AI content.

PostgreSQL is the system of record, arq on Redis executes. Import `Client` to
enqueue, read and stop jobs from another service.
"""

from .client import Client
from .errors import (
                     BacklogFull,
                     BlogqueueError,
                     Conflict,
                     FatalError,
                     InvalidInput,
                     JobError,
                     NotFound,
                     RateLimited,
                     RetryableError,
)
from .jobs import JobSpec
from .models import Batch, Enqueued, EnqueuedJob, Job, JobEvent, JobPage, StageRecord, Stopped
from .settings import Settings, SettingsError

__all__ = ["BacklogFull", "Batch", "BlogqueueError", "Client", "Conflict", "Enqueued", "EnqueuedJob", "FatalError",
           "InvalidInput", "Job", "JobError", "JobEvent", "JobPage", "JobSpec", "NotFound", "RateLimited",
           "RetryableError", "Settings", "SettingsError", "StageRecord", "Stopped"]
__version__ = "0.1.0"
