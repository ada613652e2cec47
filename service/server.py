"""Running the API: uvicorn workers over `service.app:app_from_env`, configured by environment.

`serve()` is what `slotwise serve` runs in the foreground; `running_server()` starts the same
thing as a child process for tests and benchmarks, waits until it answers, and always stops it.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from service.infra import Endpoints, free_port
from service.settings import DEFAULT_AUTH_CACHE_SECONDS

# A worker that dies sooner than this after starting failed to start: restarting won't help.
WORKER_START_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1  # prctl(2)
POOL_SIZE = 16  # a worker's connections for requests; it opens one more for its audit writer


class ConnectionBudgetError(RuntimeError):
    """PostgreSQL would refuse some of the connections the workers open at start."""


def check_connection_budget(admin_url: str, workers: int, pool_size: int = POOL_SIZE) -> None:
    """Refuse to start more workers than PostgreSQL has connections for. Each worker opens its
    whole pool at start (see `app_from_env`); past `max_connections` the last ones would fail
    to start, or, with pools that grew on demand, fail requests in the first rush."""
    needed = workers * (pool_size + 1)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - coalesce(current_setting('reserved_connections', true)::int, 0)"  # PG 16+
            " - (SELECT count(*)::int FROM pg_stat_activity"
            "     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())"
        ).fetchone()
    assert row is not None
    max_connections, free = row
    if needed > free:
        raise ConnectionBudgetError(
            f"{workers} workers need {needed} PostgreSQL connections ({pool_size} for requests"
            f" and 1 for the audit writer each), and the server has {free} free"
            f" (max_connections = {max_connections}): start fewer --workers, or raise"
            " max_connections"
        )


@dataclass(frozen=True, slots=True)
class ServerSecrets:
    admin_key: str = field(repr=False)
    hold_secret: str = field(repr=False)  # hex


def load_secrets(data_dir: Path) -> ServerSecrets:
    """Secrets from SLOTWISE_ADMIN_KEY / SLOTWISE_HOLD_SECRET, else generated once and kept
    (mode 0600) in the data folder, so restarts keep the admin key and live hold ids valid."""

    def kept(name: str, make: str) -> str:
        value = os.environ.get(name)
        if value:
            return value
        path = data_dir / name.lower()
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(make)
        return path.read_text().strip()

    return ServerSecrets(
        kept("SLOTWISE_ADMIN_KEY", "swadmin_" + secrets.token_urlsafe(32)),
        kept("SLOTWISE_HOLD_SECRET", secrets.token_hex(32)),
    )


def worker_env(
    endpoints: Endpoints,
    keys: ServerSecrets,
    pool_size: int = POOL_SIZE,
    booking_strategy: str = "holds",
    auth_cache_seconds: float = DEFAULT_AUTH_CACHE_SECONDS,
) -> dict[str, str]:
    return {
        "SLOTWISE_APP_DATABASE_URL": endpoints.app_url,
        "SLOTWISE_REDIS_URL": endpoints.redis_url,
        "SLOTWISE_ADMIN_KEY": keys.admin_key,
        "SLOTWISE_HOLD_SECRET": keys.hold_secret,
        "SLOTWISE_POOL_SIZE": str(pool_size),
        "SLOTWISE_BOOKING_STRATEGY": booking_strategy,
        "SLOTWISE_AUTH_CACHE_SECONDS": repr(auth_cache_seconds),
    }


def serve(host: str, port: int, workers: int, backlog: int, env: dict[str, str]) -> None:
    """Run uvicorn in the foreground; with workers > 1, one process each under `_supervise`."""
    import uvicorn

    os.environ.update(env)
    config = uvicorn.Config(
        "service.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        backlog=backlog,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=120,
    )
    if workers == 1:
        uvicorn.Server(config).run()
    else:
        sys.exit(_supervise(config, workers))


def _listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def _worker(config: Any) -> None:
    """One worker process: its own SO_REUSEPORT socket on the shared port."""
    import uvicorn

    # Die with the supervisor, however it ends: an orphan would keep taking connections.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    supervisor = multiprocessing.parent_process()
    if supervisor is None or os.getppid() != supervisor.pid:
        return  # it ended while this process was starting: no signal will come for that
    config.configure_logging()
    sock = _listening_socket(config.host, config.port, config.backlog)
    uvicorn.Server(config).run(sockets=[sock])


def _supervise(config: Any, workers: int) -> int:
    """Start `workers` processes, restart one that dies, stop them all on SIGTERM/SIGINT.

    Why not uvicorn's own workers: they share one listening socket, and whichever worker wakes
    first accepts every pending connection — with keep-alive clients one worker served all
    the traffic while the other idled. Each worker here listens on its own SO_REUSEPORT
    socket, so the kernel spreads connections over them evenly.
    Returns the exit status: 0 after a signal, 3 when a worker fails during start-up.
    """
    from uvicorn.config import STARTUP_FAILURE

    # Is the port free? Probed without SO_REUSEPORT, which would join a server already there.
    with socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((config.host, config.port))
    spawn = multiprocessing.get_context("spawn")
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))

    def start() -> tuple[multiprocessing.process.BaseProcess, float]:
        process = spawn.Process(target=_worker, args=(config,), daemon=True)
        process.start()
        return process, time.monotonic()

    processes = [start() for _ in range(workers)]
    status = 0
    while not stopping and status == 0:
        time.sleep(0.2)
        for index, (process, started) in enumerate(processes):
            if process.is_alive():
                continue
            # Failed to start: it would fail the same way on every restart (a bad app or
            # socket soon; a database that refuses its pool only at the pool's timeout, but
            # then with uvicorn's exit status for a failed start).
            if (
                time.monotonic() - started < WORKER_START_GRACE_S
                or process.exitcode == STARTUP_FAILURE
            ):
                status = STARTUP_FAILURE
                break
            processes[index] = start()
    for process, _ in processes:
        process.terminate()
    for process, _ in processes:
        process.join(timeout=15)
        if process.is_alive():
            process.kill()
            process.join()
    return status


@contextlib.contextmanager
def running_server(
    endpoints: Endpoints,
    keys: ServerSecrets,
    *,
    workers: int = 1,
    backlog: int = 4096,
    pool_size: int = POOL_SIZE,
    booking_strategy: str = "holds",
    auth_cache_seconds: float = DEFAULT_AUTH_CACHE_SECONDS,
    startup_timeout: float = 60.0,
) -> Iterator[str]:
    """A live server on a free port as a child process; yields its base URL.

    `booking_strategy` other than "holds" is for the contention study (`service.booking`)."""
    port = free_port()
    env = {
        **os.environ,
        **worker_env(endpoints, keys, pool_size, booking_strategy, auth_cache_seconds),
    }
    argv = [sys.executable, "-m", "service.server", str(port), str(workers), str(backlog)]
    process = subprocess.Popen(argv, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /healthz in time")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":  # python -m service.server PORT WORKERS BACKLOG (env set by caller)
    serve("127.0.0.1", int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), {})
