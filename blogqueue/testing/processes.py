"""Real worker processes, started and killed the way an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ..settings import Settings

BLOGQUEUE_WORKER = ("-m", "blogqueue.cli", "worker")
ARQ_WORKER = ("-m", "arq", "blogqueue.worker.WorkerSettings")


class WorkerProcess:
    """A worker as a child process with the given settings: `blogqueue worker` or arq's own command."""

    def __init__(self, settings: Settings, log_path: Path | None = None,
                 argv: tuple[str, ...] = BLOGQUEUE_WORKER) -> None:
        self.settings = settings
        self.log_path = log_path
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGQUEUE_")}
        env.update(self.settings.to_env())
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, *self.argv], env=env,
                                     stdout=out, stderr=subprocess.STDOUT)
        if self.log_path:
            out.close()  # type: ignore[union-attr]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, exactly like a crashed host."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM, then wait: the graceful path."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
