"""`slotwise serve` with several workers: each has a listening socket of its own, so the kernel
spreads connections over them (with one shared socket, one worker took every keep-alive
connection); and a port already taken is refused at start."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from service.infra import Endpoints, free_port
from service.server import (
    ConnectionBudgetError,
    ServerSecrets,
    check_connection_budget,
    running_server,
    worker_env,
)
from tests.integration.conftest import Infra


def established_owners(port: int) -> set[int]:
    """Pids of the processes holding the server side of established connections on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                    inodes.add(fields[9])
    owners = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    owners.add(int(pid))
    return owners


def test_both_workers_take_keep_alive_connections(infra: Infra) -> None:
    keys = ServerSecrets("test-admin-" + secrets.token_hex(16), secrets.token_hex(32))
    endpoints = Endpoints(infra.admin_url, infra.app_url, infra.redis_url)
    with running_server(endpoints, keys, workers=2) as base_url, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(base_url=base_url)) for _ in range(32)]
        for client in clients:  # each opens its connection and keeps it
            assert client.get("/healthz").status_code == 200
        port = urlsplit(base_url).port
        assert port is not None
        owners = established_owners(port) - {os.getpid()}
    # 32 connections hashed over two sockets all land on one with odds of 2 in 4 billion.
    assert len(owners) == 2


def test_a_port_in_use_is_refused_at_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = f"from service.server import serve\nserve('127.0.0.1', {port}, 2, 64, {{}})\n"
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=60, cwd=tmp_path
        )
    assert done.returncode != 0
    assert b"Address already in use" in done.stderr


def test_serve_refuses_more_workers_than_postgres_has_connections_for(
    infra: Infra, tmp_path: Path
) -> None:
    check_connection_budget(infra.admin_url, workers=2)  # 34 of the test server's 200 fit
    # 11 workers need 187: within max_connections, not within what others leave free.
    with contextlib.ExitStack() as others:
        for _ in range(12):
            others.enter_context(psycopg.connect(infra.admin_url))
        with pytest.raises(ConnectionBudgetError, match="11 workers need 187"):
            check_connection_budget(infra.admin_url, workers=11)
    env = {
        **os.environ,
        "DATABASE_URL": infra.admin_url,
        "APP_DATABASE_URL": infra.app_url,
        "REDIS_URL": infra.redis_url,
        "SLOTWISE_DATA_DIR": str(tmp_path),
    }
    argv = ["serve", "--workers", "12", "--port", str(free_port())]
    code = f"from simulation.cli import app\napp({argv!r})\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, env=env, text=True
    )
    assert done.returncode == 1, done.stderr
    assert "12 workers need 204 PostgreSQL connections" in done.stderr
    assert "max_connections = 200" in done.stderr


# Starts one worker the way `_supervise` does, then ends at once, before the worker (still
# importing) has asked to die with it: the signal it asks for would never come.
_ORPHANED_WORKER = """
import multiprocessing, os, sys, uvicorn
from service.server import _worker
config = uvicorn.Config("service.app:app_from_env", factory=True, port=int(sys.argv[1]))
worker = multiprocessing.get_context("spawn").Process(target=_worker, args=(config,))
worker.start()
with open(sys.argv[2], "w") as pid_file:
    pid_file.write(str(worker.pid))
os._exit(0)
"""


def test_a_worker_whose_supervisor_ended_while_it_started_does_not_serve(
    infra: Infra, tmp_path: Path
) -> None:
    keys = ServerSecrets("test-admin-" + secrets.token_hex(16), secrets.token_hex(32))
    endpoints = Endpoints(infra.admin_url, infra.app_url, infra.redis_url)
    env = {**os.environ, **worker_env(endpoints, keys, pool_size=1)}
    port = free_port()
    pid_file = tmp_path / "worker.pid"
    # No pipes: the worker inherits the standard streams and would hold them open.
    subprocess.run(
        [sys.executable, "-c", _ORPHANED_WORKER, str(port), str(pid_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
        env=env,
        check=True,
    )
    worker = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 30  # far more than its imports and a start would take
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(worker), "the orphaned worker kept running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, 9)


def running(pid: int) -> bool:
    """Whether ``pid`` is alive (an exited process nobody reaped yet is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_worker_that_cannot_open_its_database_pool_fails_the_start(
    infra: Infra, tmp_path: Path
) -> None:
    """No PostgreSQL where the workers look: each fails its start after the pool's 30 s, and
    `serve` exits with the failed-start status instead of restarting them for ever."""
    keys = ServerSecrets("test-admin-" + secrets.token_hex(16), secrets.token_hex(32))
    nowhere = f"postgresql://slotwise_app:x@127.0.0.1:{free_port()}/slotwise"
    endpoints = Endpoints(infra.admin_url, nowhere, infra.redis_url)
    env = {**os.environ, **worker_env(endpoints, keys, pool_size=1)}
    code = f"from service.server import serve\nserve('127.0.0.1', {free_port()}, 2, 64, {{}})\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=120, env=env, cwd=tmp_path
    )
    assert done.returncode == 3, done.stderr[-2000:]
