"""Faults: Valkey stopped mid-test, a database connection killed mid-transaction.

The invariants must hold through both: no two active bookings overlap, nothing acknowledged is
lost, nothing unacknowledged is half-written, and a retry after a failure books exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
import redis

from service import repository as repo
from service.db import Database
from service.errors import Unavailable
from service.infra import Endpoints, throwaway
from service.migrate import migrate
from service.server import ServerSecrets, running_server
from tests.integration.conftest import Api, Infra
from tests.integration.invariants import (
    active_bookings,
    assert_problem,
    lock_key,
    overlaps,
    post,
    row_counts,
    statuses,
    together,
)
from tests.integration.tenancy import make_tenant

MONDAY_10_NY = "2026-12-07T15:00:00Z"
TUESDAY_10_NY = "2026-12-08T15:00:00Z"
WEDNESDAY_10_NY = "2026-12-09T15:00:00Z"


# --- Valkey down ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def own_pair() -> Iterator[tuple[Endpoints, Api]]:
    """A PostgreSQL + Valkey pair and a server of this module's own: its Valkey gets stopped,
    which must not touch the session's shared servers."""
    with throwaway() as endpoints:
        migrate(endpoints.admin_url, app_url=endpoints.app_url)
        keys = ServerSecrets("test-admin-" + secrets.token_hex(16), secrets.token_hex(32))
        with running_server(endpoints, keys, workers=2) as base_url:
            yield endpoints, Api(base_url, keys.admin_key)


def stop_valkey(redis_url: str) -> None:
    """Stop the Valkey server behind `redis_url` for good (SHUTDOWN NOSAVE: the process exits;
    redis-py treats the dropped connection as the expected answer)."""
    with redis.Redis.from_url(redis_url, socket_timeout=2) as client:
        client.shutdown(nosave=True)
    with (
        redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1) as probe,
        pytest.raises(redis.ConnectionError),
    ):
        probe.ping()


def test_valkey_down_degrades_but_never_double_books(own_pair: tuple[Endpoints, Api]) -> None:
    endpoints, api = own_pair
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        hold_body = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
        # While Valkey is up, a hold is exclusive ...
        early = client.post("/v1/holds", json=hold_body, headers=tenant.headers)
        assert early.status_code == 201, early.text
        assert early.json()["degraded"] is False
        rival = client.post("/v1/holds", json=hold_body, headers=tenant.headers)
        assert_problem(rival, 409, "slot-conflict")

        stop_valkey(endpoints.redis_url)

        # ... once it is down, availability still answers, without holds.
        window = {"from": "2026-12-07T00:00:00Z", "to": "2026-12-08T00:00:00Z"}
        free = client.get(
            f"/v1/services/{tenant.service_id}/availability",
            params=window,
            headers=tenant.headers,
        )
        assert free.status_code == 200, free.text
        assert free.json()["holds_considered"] is False
        assert MONDAY_10_NY in {s["start"] for s in free.json()["slots"]}

    # Contenders race for the held Monday slot: the early (pre-outage) hold's confirmation
    # and direct bookings. Then hold + confirm races for Tuesday, holds now degraded.
    direct = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
    monday = [post("/v1/bookings", {"hold_id": early.json()["id"]}, tenant.headers)]
    monday += [post("/v1/bookings", direct, tenant.headers) for _ in range(19)]
    tuesday_hold = {"service_id": tenant.service_id, "start": TUESDAY_10_NY}
    holds = together(api.base_url, [post("/v1/holds", tuesday_hold, tenant.headers)] * 20)
    # Without Valkey a hold is granted while the slot is free, but degraded: not exclusive.
    assert statuses(holds) == {201: 20}, holds[0].text
    assert all(h.json()["degraded"] is True for h in holds)
    held = [h.json()["id"] for h in holds]
    tuesday = [post("/v1/bookings", {"hold_id": h}, tenant.headers) for h in held]

    answers = together(api.base_url, monday + tuesday)

    assert statuses(answers[: len(monday)]) == {201: 1, 409: len(monday) - 1}
    assert statuses(answers[len(monday) :]) == {201: 1, 409: len(tuesday) - 1}
    acknowledged = {r.json()["id"] for r in answers if r.status_code == 201}
    assert active_bookings(endpoints.admin_url, tenant.id) == acknowledged
    assert overlaps(endpoints.admin_url) == []

    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        # Still down: a fresh hold is granted degraded, and confirming it works.
        hold = client.post(
            "/v1/holds",
            json={"service_id": tenant.service_id, "start": WEDNESDAY_10_NY},
            headers=tenant.headers,
        )
        assert hold.status_code == 201, hold.text
        assert hold.json()["degraded"] is True
        booked = client.post(
            "/v1/bookings", json={"hold_id": hold.json()["id"]}, headers=tenant.headers
        )
        assert booked.status_code == 201, booked.text
        after = client.get(
            f"/v1/services/{tenant.service_id}/availability",
            params={"from": "2026-12-07T00:00:00Z", "to": "2026-12-10T00:00:00Z"},
            headers=tenant.headers,
        )
        assert after.status_code == 200
        assert after.json()["holds_considered"] is False
        starts = {s["start"] for s in after.json()["slots"]}
        assert not starts & {MONDAY_10_NY, TUESDAY_10_NY, WEDNESDAY_10_NY}
    assert overlaps(endpoints.admin_url) == []


# --- a connection killed mid-transaction ---------------------------------------------------------
def blocked_backend(admin: psycopg.Connection[tuple[object, ...]], wait_event: str) -> int:
    """The pid of the service's backend waiting on a lock of kind `wait_event`."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # pg_stat_activity is snapshotted once per transaction; drop it to see fresh waits.
        admin.execute("SELECT pg_stat_clear_snapshot()")
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'slotwise_app'"
            " AND datname = current_database() AND wait_event_type = 'Lock'"
            " AND wait_event = %s",
            (wait_event,),
        ).fetchone()
        if row is not None:
            return int(str(row[0]))
        time.sleep(0.02)
    raise AssertionError(f"no service backend blocked on a {wait_event} lock")


def locks_held(admin: psycopg.Connection[tuple[object, ...]], pid: int) -> set[tuple[str, str]]:
    rows = admin.execute(
        "SELECT relation::regclass::text, mode FROM pg_locks"
        " WHERE pid = %s AND granted AND locktype = 'relation'",
        (pid,),
    ).fetchall()
    return {(str(r[0]), str(r[1])) for r in rows}


def test_killed_while_waiting_for_the_resource_lock(api: Api, infra: Infra) -> None:
    """The backend dies at layer 2 (waiting for the advisory lock a test session holds)."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
    body = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
    with (
        psycopg.connect(infra.admin_url, autocommit=True) as admin,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        admin.execute("SELECT pg_advisory_lock(%s)", (lock_key(tenant.staff[0]),))
        pending = pool.submit(client.post, "/v1/bookings", json=body, headers=tenant.headers)
        pid = blocked_backend(admin, "advisory")
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        killed = pending.result(timeout=30)
        admin.execute("SELECT pg_advisory_unlock_all()")

        # A dropped connection fails closed: 503, never an acknowledgement.
        assert_problem(killed, 503, "unavailable")
        assert killed.headers["Retry-After"] == "1"
        assert row_counts(infra.admin_url, tenant.id)["bookings"] == 0

        # The pool recovers and the slot is still free: the next attempt books it.
        retry = client.post("/v1/bookings", json=body, headers=tenant.headers)
        assert retry.status_code == 201, retry.text
    assert active_bookings(infra.admin_url, tenant.id) == {retry.json()["id"]}
    assert overlaps(infra.admin_url) == []


def test_killed_after_writing_leaves_nothing_and_the_retry_books_once(
    api: Api, infra: Infra
) -> None:
    """The backend dies after inserting the booking, before commit: it is blocked on the audit
    append (the admin holds the audit table in EXCLUSIVE mode, which lets reads through but no
    insert). The booking rows vanish with the transaction; so does the Idempotency-Key claim,
    so the client's retry with the same key books exactly once."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
    body = {"service_id": tenant.service_id, "start": MONDAY_10_NY, "customer": "Grace"}
    headers = {**tenant.headers, "Idempotency-Key": "dropped-1"}
    with (
        psycopg.connect(infra.admin_url) as admin,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        admin.execute("LOCK TABLE audit_events IN EXCLUSIVE MODE")
        pending = pool.submit(client.post, "/v1/bookings", json=body, headers=headers)
        try:
            pid = blocked_backend(admin, "relation")
            # It has written: it holds the row locks of inserts into both booking tables.
            held = locks_held(admin, pid)
            assert ("bookings", "RowExclusiveLock") in held
            assert ("booking_resources", "RowExclusiveLock") in held
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            killed = pending.result(timeout=30)
        finally:
            admin.rollback()  # releases the audit table

        # A dropped connection fails closed: 503, never an acknowledgement.
        assert_problem(killed, 503, "unavailable")
        assert row_counts(infra.admin_url, tenant.id) == {
            "bookings": 0,
            "booking_resources": 0,
            "booking_series": 0,
            "idempotency_keys": 0,
        }

        first = client.post("/v1/bookings", json=body, headers=headers)
        again = client.post("/v1/bookings", json=body, headers=headers)
    assert first.status_code == again.status_code == 201, first.text
    assert first.json() == again.json()
    assert active_bookings(infra.admin_url, tenant.id) == {first.json()["id"]}
    assert overlaps(infra.admin_url) == []


def test_every_acknowledged_booking_is_in_the_database(api: Api, infra: Infra) -> None:
    """Many clients book many slots at once, two pinned pairs per start, each contended: every
    201 is a confirmed row, and the database holds no confirmed booking no client was told of."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=2, rooms=2)
    # Mon-Wed 09:00-15:00 New York (EST), one-hour slots that touch but do not overlap.
    starts = [f"2026-12-1{d}T{h}:00:00Z" for d in (4, 5, 6) for h in range(14, 21)]
    pairs = [[tenant.staff[0], tenant.rooms[0]], [tenant.staff[1], tenant.rooms[1]]]
    calls = [
        post(
            "/v1/bookings",
            {"service_id": tenant.service_id, "start": start, "resource_ids": pins},
            tenant.headers,
        )
        for start in starts
        for pins in pairs
        for _ in range(2)
    ]

    responses = together(api.base_url, calls)

    # The two pairs are disjoint: each wins exactly once per start, whatever the interleaving.
    assert statuses(responses) == {201: 2 * len(starts), 409: 2 * len(starts)}
    acknowledged = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(acknowledged) == 2 * len(starts)
    assert active_bookings(infra.admin_url, tenant.id) == acknowledged
    assert overlaps(infra.admin_url) == []


def test_a_transaction_left_open_is_ended_and_its_locks_freed(infra: Infra) -> None:
    """A worker stuck inside a transaction (hung, or its event loop blocked) must not keep its
    advisory locks, and with them every booking of those resources, for good: PostgreSQL
    ends the session after `transaction_timeout_s`, and the stuck request fails closed."""
    resource = "f0000000-0000-4000-8000-" + secrets.token_hex(6)  # a negative lock key
    with psycopg.connect(infra.admin_url) as admin:
        if admin.info.server_version < 170000:
            pytest.skip(
                "transaction_timeout needs PostgreSQL 17; DATABASE_URL points at version"
                f" {admin.info.server_version // 10000} (the embedded server, 18, runs this test)"
            )

    def lock_holders() -> int:
        with psycopg.connect(infra.admin_url) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND ((classid::bigint << 32) | objid::bigint) = %s",
                (lock_key(resource),),
            ).fetchone()
        return int(row[0]) if row else -1

    async def scenario() -> tuple[int, int]:
        db = await Database.open(infra.app_url, 1, 1, transaction_timeout_s=0.5)
        try:
            with pytest.raises(Unavailable):
                async with db.transaction(None) as conn:
                    await repo.lock_resources(conn, [resource])
                    await (await conn.execute("SELECT 1")).fetchone()  # the lock is taken
                    held = lock_holders()
                    await asyncio.sleep(1.5)  # stuck inside the transaction
                    after = lock_holders()
                    await conn.execute("SELECT 1")
            # Ended while a statement runs (waiting on a lock, say): still a 503, not a 500.
            with pytest.raises(Unavailable):
                async with db.transaction(None) as conn:
                    await (await conn.execute("SELECT pg_sleep(2)")).fetchone()
            # The pool replaces the ended sessions: the next transaction works.
            async with db.transaction(None) as conn:
                await (await conn.execute("SELECT 1")).fetchone()
            return held, after
        finally:
            await db.close()

    held, after = asyncio.run(scenario())
    assert (held, after) == (1, 0)


def test_a_rolled_back_transaction_keeps_the_connections_prepared_statements(
    infra: Infra,
) -> None:
    """A refusal inside a transaction rolls it back; the statements its connection prepared
    stay prepared (psycopg's own rollback would deallocate them all)."""
    query = "SELECT 1 WHERE %s"

    async def prepared_after_a_rollback() -> int:
        db = await Database.open(infra.app_url, 1, 1)
        try:
            async with db.transaction(None) as conn:
                await (await conn.execute(query, (True,))).fetchone()
            with pytest.raises(LookupError):
                async with db.transaction(None) as conn:
                    await (await conn.execute(query, (True,))).fetchone()
                    raise LookupError("refused")
            # A statement first sent behind a failed one was never prepared by the server
            # (it skips the rest of the pipeline): psycopg must not take it for prepared.
            with pytest.raises(psycopg.errors.DivisionByZero):
                async with db.transaction(None) as conn:
                    await conn.execute("SELECT 1 / 0")
                    await conn.execute("SELECT 2 WHERE %s", (True,))
            async with db.transaction(None) as conn:
                assert await (await conn.execute("SELECT 2 WHERE %s", (True,))).fetchone()
                cur = await conn.execute(
                    "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = %s",
                    (query.replace("%s", "$1"),),
                )
                row = await cur.fetchone()
            return int(row["n"]) if row else -1
        finally:
            await db.close()

    assert asyncio.run(prepared_after_a_rollback()) == 1
