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
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from service.infra import Endpoints
from service.server import ServerSecrets, running_server
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
