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
from .settings import Settings, SettingsError

__all__ = ["BacklogFull", "BlogqueueError", "Client", "Conflict", "FatalError", "InvalidInput", "JobError",
           "NotFound", "RateLimited", "RetryableError", "Settings", "SettingsError"]
__version__ = "0.1.0"
