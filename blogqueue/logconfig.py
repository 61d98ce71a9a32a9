"""Logging for the entry points (CLI, worker, service). Library modules only log."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from .settings import Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(), "level": record.levelname.lower(),
               "logger": record.name, "event": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # arq logs two lines per job; at hundreds of jobs/s the heartbeat line says more.
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("arq.worker").setLevel(logging.WARNING)
    # httpx logs every request line with its full URL, and a TMDb v3 key travels
    # as the api_key query parameter: those lines must never be written.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
