"""PostgreSQL access: one pool, one transaction per request, the tenant set per transaction.

Row Level Security does the tenant filtering: each transaction runs
`set_config('app.tenant_id', …, true)` (SET LOCAL), so a pooled connection never carries one
tenant's identity into another's request, and a query that forgets `WHERE tenant_id` still
sees one tenant only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service.auth import Caller
from service.errors import IdempotencyInFlight, IdempotencyMismatch, Unavailable

Conn = AsyncConnection[DictRow]


class Database:
    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, app_url: str, min_size: int = 4, max_size: int = 20) -> Database:
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            app_url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": False},
            connection_class=AsyncConnection[DictRow],
            timeout=10,
            open=False,
        )
        await pool.open(wait=True, timeout=30)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self, tenant_id: str | None) -> AsyncIterator[Conn]:
        """A transaction scoped to ``tenant_id`` (None: no tenant — RLS then shows nothing).

        PostgreSQL being down fails closed: a 503, never a guess. The transaction runs in
        pipeline mode: statements whose results nobody reads (BEGIN, set_config, locks, audit
        rows, COMMIT) travel with the next query instead of costing a round trip each; errors
        surface at the next sync point (a fetch, or a nested `conn.pipeline()` block's end).
        """
        try:
            async with self.pool.connection() as conn, conn.pipeline(), conn.transaction():
                if tenant_id is not None:
                    await conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise Unavailable("the database is unavailable; nothing was changed") from exc


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An Idempotency-Key with a fingerprint of the request it was first used for."""

    key: str
    fingerprint: bytes

    @classmethod
    def of(cls, key: str | None, method: str, path: str, body: Any) -> Idempotency | None:
        if key is None:
            return None
        canonical = json.dumps([method, path, body], sort_keys=True, default=str)
        return cls(key, hashlib.sha256(canonical.encode()).digest())


async def claim(conn: Conn, tenant_id: str, idem: Idempotency | None) -> tuple[int, Any] | None:
    """Claim ``idem`` inside the current transaction, or return the stored first answer.

    A concurrent request with the same key blocks on the primary key until the first one
    commits (then it replays) or rolls back (then it runs itself).
    """
    if idem is None:
        return None
    claimed = await conn.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, response)"
        " VALUES (%s, %s, %s, 0, 'null') ON CONFLICT DO NOTHING RETURNING 1",
        (tenant_id, idem.key, idem.fingerprint),
    )
    if await claimed.fetchone():
        return None
    cur = await conn.execute(
        "SELECT request_hash, status, response FROM idempotency_keys"
        " WHERE tenant_id = %s AND key = %s",
        (tenant_id, idem.key),
    )
    row = await cur.fetchone()
    if row is None:  # the other request rolled back between our two statements
        raise IdempotencyInFlight("retry: a request with this Idempotency-Key just failed")
    if bytes(row["request_hash"]) != idem.fingerprint:
        raise IdempotencyMismatch(
            "this Idempotency-Key was used for a different request", key=idem.key
        )
    return int(row["status"]), row["response"]


async def remember(
    conn: Conn, tenant_id: str, idem: Idempotency | None, status: int, body: Any
) -> None:
    if idem is not None:
        await conn.execute(
            "UPDATE idempotency_keys SET status = %s, response = %s"
            " WHERE tenant_id = %s AND key = %s",
            (status, json.dumps(body, default=str), tenant_id, idem.key),
        )


async def audit(
    conn: Conn,
    caller: Caller,
    action: str,
    entity: str,
    entity_id: str | None = None,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
    tenant_id: str | None = None,
) -> None:
    """Append one audit event in the current transaction (it commits or vanishes with it)."""
    await conn.execute(
        "INSERT INTO audit_events (tenant_id, actor, action, entity, entity_id, request_id, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            tenant_id or caller.tenant,
            caller.key_id,
            action,
            entity,
            entity_id,
            request_id,
            json.dumps(detail or {}, default=str),
        ),
    )
