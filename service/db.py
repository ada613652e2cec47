"""PostgreSQL access: one pool, one transaction per request, the tenant set per transaction.

Row Level Security does the tenant filtering: each transaction runs
`set_config('app.tenant_id', …, true)` (SET LOCAL), so a pooled connection never carries one
tenant's identity into another's request, and a query that forgets `WHERE tenant_id` still
sees one tenant only. A request that needs only one statement, which sets the tenant the same
way for its own transaction (`calendar_window`, `append_audit`: migration 0009; `book_window`:
0010), runs it on a `connection()` outside any transaction instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service.auth import Caller
from service.errors import IdempotencyInFlight, IdempotencyMismatch, Unavailable

Conn = AsyncConnection[DictRow]

_ENCODER = msgspec.json.Encoder()


def to_json(value: Any) -> str:
    """``value`` as JSON text for a jsonb parameter. msgspec writes datetimes (RFC 3339, 'Z'
    for UTC), dates and UUIDs itself: json.dumps with ``default=str`` called back into Python
    for each, which made a confirmation's window document 20 times dearer to encode."""
    return _ENCODER.encode(value).decode()


# Far above any transaction of ours: a Valkey call inside one waits at most 0.25 s, and in a
# 10,000-request burst lock waits and a busy event loop stretch one to a few seconds at most.
TRANSACTION_TIMEOUT_S = 30.0
# PostgreSQL ending a session for a timeout is reported by the statement it interrupts as one
# of these (not an OperationalError): the request fails closed, as for a dropped connection.
_SESSION_ENDED = (
    psycopg.errors.TransactionTimeout,
    psycopg.errors.IdleInTransactionSessionTimeout,
)


class Database:
    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool

    @classmethod
    async def open(
        cls,
        app_url: str,
        min_size: int = 4,
        max_size: int = 20,
        transaction_timeout_s: float = TRANSACTION_TIMEOUT_S,
    ) -> Database:
        """A pool whose sessions PostgreSQL ends when a transaction of theirs has lasted
        ``transaction_timeout_s``: a worker stuck mid-transaction (hung, or its loop blocked)
        would otherwise keep its advisory locks, and so every booking of those resources, and
        hold back the audit feeds, which wait for every older transaction to end. The guard
        is PostgreSQL 17's `transaction_timeout`; an older server has none that fits: its
        `idle_in_transaction_session_timeout` never fires for a pipelined transaction, which
        waits between statements without the Sync that would make it "idle"."""
        timeout_ms = int(transaction_timeout_s * 1000)

        async def limit_transactions(conn: Conn) -> None:
            if conn.info.server_version >= 170000:
                await conn.execute(f"SET transaction_timeout = {timeout_ms}")

        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            app_url,
            min_size=min_size,
            max_size=max_size,
            # autocommit: `transaction()` sends BEGIN and COMMIT itself. prepare_threshold 0:
            # a statement is prepared the first time a connection runs it, not the sixth, so
            # a rush on fresh connections does not parse each query five times over on each
            # of them. (Our SQL texts are constants: they never flood the per-connection
            # cache of prepared statements.)
            kwargs={"row_factory": dict_row, "autocommit": True, "prepare_threshold": 0},
            configure=limit_transactions,
            connection_class=AsyncConnection[DictRow],
            timeout=10,
            open=False,
        )
        await pool.open(wait=True, timeout=30)
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A connection outside any transaction (autocommit: each statement is one), for a
        statement that sets the tenant itself, for itself (`calendar_window`, `append_audit`,
        `book_window`);
        any other statement on it sees nothing under Row Level Security, so a read needing two
        statements belongs in a `transaction`. PostgreSQL down fails closed, as there."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout, *_SESSION_ENDED) as exc:
            raise Unavailable("the database is unavailable; nothing was changed") from exc

    @asynccontextmanager
    async def transaction(self, tenant_id: str | None) -> AsyncIterator[Conn]:
        """A transaction scoped to ``tenant_id`` (None: no tenant — RLS then shows nothing).

        PostgreSQL being down fails closed: a 503, never a guess. The transaction runs in
        pipeline mode: statements whose results nobody reads (BEGIN, set_config, locks, audit
        rows, COMMIT) travel with the next query instead of costing a round trip each; errors
        surface at the next sync point (a fetch, or a nested `conn.pipeline()` block's end).
        """
        async with self.connection() as conn:
            try:
                # BEGIN and COMMIT are ours, not `conn.transaction()`'s: that one nests
                # pipelines around its block, and each nested exit is a Sync — a round
                # trip — so a transaction cost two more round trips than it needs.
                async with conn.pipeline():
                    await conn.execute("BEGIN")
                    if tenant_id is not None:
                        await conn.execute(
                            "SELECT set_config('app.tenant_id', %s, true)", (tenant_id,)
                        )
                    yield conn
                    # A statement that failed unread is raised by this block's Sync, and
                    # the COMMIT queued behind it is then never run.
                    await conn.execute("COMMIT")
            except BaseException:
                if conn.info.transaction_status != TransactionStatus.IDLE and not conn.closed:
                    with contextlib.suppress(psycopg.Error):  # a broken link: the pool drops it
                        await _rollback(conn)
                raise


async def _rollback(conn: Conn) -> None:
    """ROLLBACK, keeping the connection's prepared statements. psycopg forgets them all at a
    rollback it sees (and sends DEALLOCATE ALL) in case the transaction dropped or altered
    what they use; ours never change the schema. Every refusal inside a transaction (a 409
    under the lock, say) would otherwise cost a round trip and a new Parse of every statement
    the connection runs next: the contention study's pessimistic strategy, whose losers all
    roll back, took 12% longer. With prepared statements off for this one statement, the
    statement cache does not see it at all."""
    threshold = conn.prepare_threshold
    conn.prepare_threshold = None
    try:
        await conn.execute("ROLLBACK")
    finally:
        conn.prepare_threshold = threshold


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
    return await (await begin_claim(conn, tenant_id, idem)).replay()


@dataclass(slots=True)
class PendingClaim:
    """A claim sent but not yet read: other statements can join its pipeline round trip."""

    conn: Conn
    tenant_id: str
    idem: Idempotency | None
    cursor: psycopg.AsyncCursor[DictRow] | None

    async def replay(self) -> tuple[int, Any] | None:
        """None if this request holds the key now; else the first request's stored answer."""
        if self.idem is None or self.cursor is None:
            return None
        if await self.cursor.fetchone():
            return None
        cur = await self.conn.execute(
            "SELECT request_hash, status, response FROM idempotency_keys"
            " WHERE tenant_id = %s AND key = %s",
            (self.tenant_id, self.idem.key),
        )
        return stored_answer(self.idem, await cur.fetchone())


def stored_answer(idem: Idempotency, row: Mapping[str, Any] | None) -> tuple[int, Any]:
    """The first answer to ``idem``'s key, from its row (`request_hash`, `status`, `response`)
    read after a claim of the key failed: that request's, if it was this same request."""
    if row is None:  # the other request rolled back after our claim failed
        raise IdempotencyInFlight("retry: a request with this Idempotency-Key just failed")
    if bytes(row["request_hash"]) != idem.fingerprint:
        raise IdempotencyMismatch(
            "this Idempotency-Key was used for a different request", key=idem.key
        )
    return int(row["status"]), row["response"]


async def begin_claim(conn: Conn, tenant_id: str, idem: Idempotency | None) -> PendingClaim:
    """Send the claim of ``idem`` without waiting for it (see `claim`)."""
    cursor = None
    if idem is not None:
        cursor = await conn.execute(
            "INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, response)"
            " VALUES (%s, %s, %s, 0, 'null') ON CONFLICT DO NOTHING RETURNING 1",
            (tenant_id, idem.key, idem.fingerprint),
        )
    return PendingClaim(conn, tenant_id, idem, cursor)


async def remember(
    conn: Conn, tenant_id: str, idem: Idempotency | None, status: int, body: Any
) -> None:
    if idem is not None:
        await conn.execute(_REMEMBER, (status, to_json(body), tenant_id, idem.key))


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
        _AUDIT, _audit_row(caller, action, entity, entity_id, request_id, detail, tenant_id)
    )


async def acknowledge(
    conn: Conn,
    caller: Caller,
    idem: Idempotency | None,
    answer: tuple[int, Any],
    action: str,
    entity: str,
    entity_id: str | None = None,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """A write's last two steps, `remember` its answer and `audit` it, as one statement:
    each statement saved is about 0.1 ms of PostgreSQL's CPU per booking, and as much of ours."""
    if idem is None:
        await audit(conn, caller, action, entity, entity_id, request_id, detail)
        return
    status, body = answer
    await conn.execute(
        f"WITH remembered AS ({_REMEMBER}) {_AUDIT}",
        (
            status,
            to_json(body),
            caller.tenant,
            idem.key,
            *_audit_row(caller, action, entity, entity_id, request_id, detail, None),
        ),
    )


_REMEMBER = (
    "UPDATE idempotency_keys SET status = %s, response = %s WHERE tenant_id = %s AND key = %s"
)
_AUDIT = (
    "INSERT INTO audit_events (tenant_id, actor, action, entity, entity_id, request_id, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def audit_event(
    caller: Caller,
    action: str,
    entity: str,
    entity_id: str | None,
    request_id: str | None,
    detail: dict[str, Any],
) -> dict[str, Any]:
    """One audit event as `append_audit` (migration 0009) takes it, in a JSON array."""
    return {
        "actor": caller.key_id,
        "action": action,
        "entity": entity,
        "entity_id": entity_id,
        "request_id": request_id,
        "detail": detail,
    }


def _audit_row(
    caller: Caller,
    action: str,
    entity: str,
    entity_id: str | None,
    request_id: str | None,
    detail: dict[str, Any] | None,
    tenant_id: str | None,
) -> tuple[Any, ...]:
    return (
        tenant_id or caller.tenant,
        caller.key_id,
        action,
        entity,
        entity_id,
        request_id,
        to_json(detail or {}),
    )
