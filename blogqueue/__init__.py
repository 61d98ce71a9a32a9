"""blogqueue: a fair, durable, rate-limited job system for AI content.

PostgreSQL is the system of record, arq on Redis executes. Import `Client` to
enqueue, read and stop jobs from another service; `App` to add job kinds,
stages, prompts, sources, publishers and providers (DESIGN §10; a stage gets a
`Run`).
"""

from .app import App
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
from .models import Batch, Enqueued, EnqueuedJob, Job, JobDetail, JobEvent, JobPage, StageRecord, Stopped
from .pipeline import Run
from .prompts import Prompt
from .settings import Settings, SettingsError
from .sources import SourceFields

__all__ = ["App", "BacklogFull", "Batch", "BlogqueueError", "Client", "Conflict", "Enqueued", "EnqueuedJob",
           "FatalError", "InvalidInput", "Job", "JobDetail", "JobError", "JobEvent", "JobPage", "JobSpec", "NotFound",
           "Prompt",
           "RateLimited", "RetryableError", "Run", "Settings", "SettingsError", "SourceFields", "StageRecord",
           "Stopped"]
__version__ = "0.1.0"
