"""Logging for the entry points (CLI, worker, service). Library modules only log.

Both stdlib `logging` records and `structlog` events go through one handler:
JSON lines when LOG_FORMAT=json (production), a readable console line otherwise.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from .settings import Settings


def configure(settings: Settings) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if settings.log_format == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    structlog.configure(
        # filter_by_level first: a call below LOG_LEVEL (the service's access line at WARNING,
        # any debug line) returns before the processors stamp and bind it (py-spy on
        # `blogqueue serve` at WARNING: ~8 % of a job status request went to dropped lines).
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # arq logs two lines per job; at hundreds of jobs/s the heartbeat line says more.
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
    # httpx logs every request line with its full URL, and a TMDb v3 key travels
    # as the api_key query parameter: those lines must never be written.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The service writes its own access log line (method, path, status, duration, tenant).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
