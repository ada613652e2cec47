"""Real PostgreSQL and Valkey for the integration tier.

One throwaway pair per test session (under a second to start), migrated once. Set
`DATABASE_URL` (a superuser URL) and/or `REDIS_URL` to test against servers of your own instead.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg import sql

from service.infra import throwaway
from service.migrate import migrate
from service.settings import app_database_url, load_settings, with_database


@dataclass(frozen=True, slots=True)
class Infra:
    """Migrated servers for a test session; URLs hidden from repr (they carry passwords)."""

    admin_url: str = field(repr=False)
    app_url: str = field(repr=False)
    redis_url: str = field(repr=False)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    settings = load_settings()
    with contextlib.ExitStack() as stack:
        if settings.database_url is None or settings.redis_url is None:
            embedded = stack.enter_context(throwaway())
            admin_url, app_url, redis_url = embedded.admin_url, embedded.app_url, embedded.redis_url
        if settings.database_url is not None:
            admin_url = settings.database_url
            app_url = settings.app_database_url or app_database_url(
                admin_url, secrets.token_urlsafe(24)
            )
        if settings.redis_url is not None:
            redis_url = settings.redis_url
        migrate(admin_url, app_url=app_url)
        yield Infra(admin_url=admin_url, app_url=app_url, redis_url=redis_url)


@pytest.fixture
def scratch_db(infra: Infra) -> Iterator[str]:
    """Admin URL of a new, empty database on the same server, dropped after the test.

    For tests that migrate from scratch or add migrations of their own, which must not leak
    into the shared database.
    """
    name = f"scratch_{secrets.token_hex(6)}"
    with psycopg.connect(infra.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(infra.admin_url, name)
    finally:
        with psycopg.connect(infra.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass(frozen=True, slots=True)
class Api:
    """A live booking API (uvicorn child process, two workers) on the session's servers."""

    base_url: str
    admin_key: str = field(repr=False)

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


@pytest.fixture(scope="session")
def api(infra: Infra) -> Iterator[Api]:
    from service.infra import Endpoints
    from service.server import ServerSecrets, running_server

    keys = ServerSecrets("test-admin-" + secrets.token_hex(16), secrets.token_hex(32))
    endpoints = Endpoints(
        admin_url=infra.admin_url, app_url=infra.app_url, redis_url=infra.redis_url
    )
    with running_server(endpoints, keys, workers=2) as base_url:
        yield Api(base_url, keys.admin_key)
